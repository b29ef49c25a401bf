"""`load` of every archive a docker user has: our OCI archive, a `tar -C layout .` tarball and
docker save's format (made here by skopeo, the oracle); every blob verified before anything is
stored."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile

import pytest
from image_fixtures import run_pykvm, store  # noqa: F401  (fixture)

from pykvm.container.image.build import BuildOptions, build_image
from pykvm.container.image.store import ImageStore

SKOPEO = shutil.which("skopeo")
UMOCI = shutil.which("umoci")
pytestmark = pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed (apt-get install skopeo)")


def two_layer_image(store: ImageStore, tmp_path, tag="arc:1"):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a").write_bytes(b"first layer\n")
    (ctx / "b").write_bytes(os.urandom(3000))
    (ctx / "Dockerfile").write_text('FROM scratch\nCOPY a /a\nCOPY b /b\nENV K=v\nCMD ["/a"]\n')
    return build_image(store, BuildOptions(str(ctx), tag))


def skopeo(*args) -> None:
    run = subprocess.run([SKOPEO, "--insecure-policy", *args], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def forget(store: ImageStore, *names) -> None:
    store.remove(list(names), force=True)
    store.gc()
    assert list(store.blobs.iterdir()) == []


def rewrite(src, dst, change) -> None:
    """Copy tar `src` to `dst`, each member's bytes passed through change(name, data) (None drops it)."""
    with tarfile.open(src) as a, tarfile.open(dst, "w") as b:
        for m in a.getmembers():
            data = a.extractfile(m).read() if m.isfile() else None
            if data is not None:
                data = change(m.name, data)
                if data is None:
                    continue
                m.size = len(data)
            b.addfile(m, io.BytesIO(data) if data is not None else None)


def test_load_a_docker_archive(store, tmp_path):
    image = two_layer_image(store, tmp_path)
    archive = tmp_path / "docker.tar"
    skopeo("copy", f"oci:{store.layout}:arc:1", f"docker-archive:{archive}:docker.io/library/arc:1")
    with tarfile.open(archive) as t:
        assert {"manifest.json", "repositories"} <= set(t.getnames()), "skopeo wrote docker save's format"
    forget(store, "arc:1")
    status, out, err = run_pykvm("container", "load", input=archive.read_bytes())    # docker load < FILE
    assert (status, out) == (0, "Loaded image: arc:1\n"), err
    assert os.listdir(store.tmp) == []
    loaded = ImageStore(store.root).get("arc:1")
    assert loaded.id == image.id and loaded.diff_ids == image.diff_ids
    assert loaded.config["config"]["Cmd"] == ["/a"]
    # what we stored is an OCI image others read: skopeo copies it out again
    skopeo("copy", f"oci:{store.layout}:arc:1", f"oci:{tmp_path / 'again'}:x")


def test_load_a_tarball_of_an_image_layout(store, tmp_path):
    image = two_layer_image(store, tmp_path)
    layout = tmp_path / "layout"
    skopeo("copy", f"oci:{store.layout}:arc:1", f"oci:{layout}:arc:1")
    archive = tmp_path / "layout.tar"
    subprocess.run(["tar", "-C", str(layout), "-cf", str(archive), "."], check=True)
    with tarfile.open(archive) as t:
        assert "./index.json" in t.getnames()
    forget(store, "arc:1")
    status, out, err = run_pykvm("container", "load", "-i", str(archive))
    assert (status, out) == (0, "Loaded image: arc:1\n"), err
    assert ImageStore(store.root).get("arc:1").id == image.id


def test_an_archive_missing_a_blob_loads_nothing(store, tmp_path):
    image = two_layer_image(store, tmp_path)
    archive, broken = tmp_path / "ok.tar", tmp_path / "broken.tar"
    assert run_pykvm("container", "save", "-o", str(archive), "arc:1")[0] == 0
    layer = image.layers[1]["digest"][7:]
    rewrite(archive, broken, lambda name, data: None if name.endswith(layer) else data)
    forget(store, "arc:1")
    status, out, err = run_pykvm("container", "load", "-i", str(broken))
    assert status == 1 and err == (f"pykvm: error: {broken}: image arc:1: blob sha256:{layer} "
                                   "is missing from the archive: nothing loaded\n")
    assert list(store.blobs.iterdir()) == [] and os.listdir(store.tmp) == []
    status, _, err = run_pykvm("container", "load", input=broken.read_bytes())
    assert status == 1 and err.startswith("pykvm: error: standard input: image arc:1: blob"), err
    assert list(store.blobs.iterdir()) == [] and os.listdir(store.tmp) == []
    status, _, err = run_pykvm("container", "run", "arc:1", "/a")
    assert status != 0 and "Traceback" not in err and err.startswith("pykvm: error: no such image")


def test_a_docker_archive_with_a_corrupt_layer_loads_nothing(store, tmp_path):
    two_layer_image(store, tmp_path)
    archive, broken = tmp_path / "docker.tar", tmp_path / "broken.tar"
    skopeo("copy", f"oci:{store.layout}:arc:1", f"docker-archive:{archive}:arc:1")
    with tarfile.open(archive) as t:
        layers = json.load(t.extractfile("manifest.json"))[0]["Layers"]

    def flip(name, data):
        if name == layers[0]:
            return data[:600] + bytes([data[600] ^ 1]) + data[601:]
        return data
    rewrite(archive, broken, flip)
    forget(store, "arc:1")
    status, _, err = run_pykvm("container", "load", "-i", str(broken))
    assert status == 1 and err.count("\n") == 1, err
    assert f"layer {layers[0]} has diff_id" in err and err.endswith("nothing loaded\n")
    assert list(store.blobs.iterdir()) == [] and os.listdir(store.tmp) == []


def test_a_blob_whose_size_differs_from_its_descriptor_loads_nothing(store, tmp_path):
    image = two_layer_image(store, tmp_path)
    archive, broken = tmp_path / "ok.tar", tmp_path / "broken.tar"
    assert run_pykvm("container", "save", "-o", str(archive), "arc:1")[0] == 0
    manifest = json.loads(store.read_blob(image.manifest_digest))
    manifest["layers"][0]["size"] += 1
    body = json.dumps(manifest).encode()
    from pykvm.container.image.store import sha256_digest

    def swap(name, data):
        if name == "index.json":
            index = json.loads(data)
            index["manifests"][0].update(digest=sha256_digest(body), size=len(body))
            return json.dumps(index).encode()
        return data
    rewrite(archive, broken, swap)
    with tarfile.open(broken, "a") as t:
        info = tarfile.TarInfo("blobs/sha256/" + sha256_digest(body)[7:])
        info.size = len(body)
        t.addfile(info, io.BytesIO(body))
    forget(store, "arc:1")
    status, _, err = run_pykvm("container", "load", "-i", str(broken))
    assert status == 1 and "its descriptor says" in err and err.endswith("nothing loaded\n"), err
    assert list(store.blobs.iterdir()) == []
