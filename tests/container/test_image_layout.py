"""The image store: OCI layout files, digests, manifests, tags, garbage collection, layers for run."""
from __future__ import annotations

import hashlib
import json
import os

import pytest
from image_fixtures import make_tar, store  # noqa: F401  (fixture)

from pykvm.container.image.store import (MEDIA_OCI_LAYER_GZIP, MEDIA_OCI_MANIFEST, REF_NAME, ImageStore,
                                   normalize_name, resolve_for_run, split_reference)
from pykvm.errors import ConfigError, ContainerError


def add_layer(store: ImageStore, entries) -> tuple[dict, str]:
    """Store a gzip'd layer; return (descriptor, diff_id)."""
    plain = make_tar(entries)
    import gzip
    blob = gzip.compress(plain, mtime=0)
    digest = store.put_bytes(blob)
    return ({"mediaType": MEDIA_OCI_LAYER_GZIP, "digest": digest, "size": len(blob)},
            "sha256:" + hashlib.sha256(plain).hexdigest())


def simple_image(store: ImageStore, name: str = "demo:1", layers=None):
    layers = layers or [[("file", "hello.txt", b"hi\n")]]
    descs = [add_layer(store, entries) for entries in layers]
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Env": ["A=1"], "Cmd": ["/bin/true"], "WorkingDir": "/w", "User": "1000"},
              "rootfs": {"type": "layers", "diff_ids": [d for _, d in descs]}}
    return store.add_image(name, config, [d for d, _ in descs])


def test_layout_files_follow_image_layout_md(store):
    assert json.loads((store.layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((store.layout / "index.json").read_text())
    assert index["schemaVersion"] == 2 and index["manifests"] == []


def test_blobs_are_named_by_their_sha256(store):
    digest = store.put_bytes(b"hello")
    assert digest == "sha256:" + hashlib.sha256(b"hello").hexdigest()
    assert store.blob_path(digest).read_bytes() == b"hello"
    with pytest.raises(ContainerError, match="digest mismatch"):
        store.put_bytes(b"hello", expected="sha256:" + "0" * 64)


def test_bad_digests_never_become_paths(store):
    for bad in ("sha256:../../etc/passwd", "md5:abc", "sha256:" + "A" * 64, "sha256:" + "0" * 63):
        with pytest.raises(ContainerError, match="invalid or unsupported digest"):
            store.blob_path(bad)


def test_manifest_config_and_tag_in_index(store):
    image = simple_image(store, "demo:1")
    manifest = json.loads(store.read_blob(image.manifest_digest))
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == MEDIA_OCI_MANIFEST
    assert manifest["config"]["digest"] == image.config_digest
    assert manifest["config"]["size"] == len(store.read_blob(image.config_digest))
    layer = manifest["layers"][0]
    assert layer["size"] == store.blob_path(layer["digest"]).stat().st_size
    entry, = store.index()["manifests"]
    assert entry["annotations"][REF_NAME] == "demo:1"
    assert entry["digest"] == image.manifest_digest
    assert store.get("demo:1").config["config"]["Cmd"] == ["/bin/true"]
    assert store.get(image.id[7:19]).manifest_digest == image.manifest_digest, "lookup by short ID"


def test_corrupt_blob_on_disk_is_detected(store):
    image = simple_image(store)
    path = store.blob_path(image.config_digest)
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes().replace(b"/bin/true", b"/bin/evil"))
    with pytest.raises(ContainerError, match="corrupt"):
        store.get("demo:1")


def test_retag_untag_and_gc(store):
    first = simple_image(store, "demo:1", [[("file", "a", b"1")]])
    second = simple_image(store, "demo:2", [[("file", "a", b"2")]])
    store.tag("other", {"mediaType": MEDIA_OCI_MANIFEST, "digest": first.manifest_digest,
                        "size": store.blob_path(first.manifest_digest).stat().st_size})
    assert sorted(ref for ref, _ in store.tags()) == ["demo:1", "demo:2", "other:latest"]
    store.untag("demo:1")
    assert store.gc() == [], "other:latest still holds the first image"
    store.untag("other")
    removed = set(store.gc())
    assert removed == {first.manifest_digest, first.config_digest, first.layers[0]["digest"]}
    assert store.get("demo:2").manifest_digest == second.manifest_digest
    with pytest.raises(ContainerError, match="no such image: demo:1"):
        store.get("demo:1")


@pytest.mark.parametrize("text, parts", [
    ("hello", (None, "hello", None, None)),
    ("hello:v1", (None, "hello", "v1", None)),
    ("library/busybox", (None, "library/busybox", None, None)),
    ("127.0.0.1:5000/a/b:c", ("127.0.0.1:5000", "a/b", "c", None)),
    ("localhost/x", ("localhost", "x", None, None)),
    ("reg.example/x@sha256:" + "a" * 64, ("reg.example", "x", None, "sha256:" + "a" * 64)),
])
def test_references_split_like_docker(text, parts):
    assert split_reference(text) == parts


@pytest.mark.parametrize("bad", ["UPPER", "a:b:c", "../x", "x@sha256:short", "", "a//b"])
def test_bad_references_are_config_errors(bad):
    with pytest.raises(ConfigError, match="invalid image reference"):
        normalize_name(bad)


def test_store_location_follows_env_and_xdg(monkeypatch, tmp_path):
    from pykvm.container.image.store import store_root
    monkeypatch.setenv("PYKVM_STORE", str(tmp_path / "s"))
    assert store_root() == tmp_path / "s"
    monkeypatch.delenv("PYKVM_STORE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert store_root() == tmp_path / "xdg" / "pykvm"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert str(store_root()) == "/var/lib/pykvm"


@pytest.mark.root
def test_resolve_for_run_unpacks_layers_for_overlayfs(store):
    image = simple_image(store, "demo:1", [
        [("dir", "etc", None), ("file", "etc/a", b"a"), ("file", "etc/b", b"b")],
        [("file", "etc/.wh.a", b""), ("file", "etc/c", b"c")],
    ])
    run = resolve_for_run("demo:1", store)
    assert len(run.layers) == 2 and all(os.path.isdir(d) for d in run.layers)
    assert sorted(os.listdir(os.path.join(run.layers[0], "etc"))) == ["a", "b"]
    assert os.stat(os.path.join(run.layers[1], "etc", "a")).st_rdev == 0, "whiteout as a 0:0 char device"
    assert (run.cmd, run.env, run.working_dir, run.user) == (["/bin/true"], ["A=1"], "/w", "1000")
    assert resolve_for_run("demo:1", store).layers == run.layers, "unpacked once, reused"
    assert image.diff_ids[0].split(":")[1] == os.path.basename(run.layers[0])


@pytest.mark.root
def test_unpack_checks_the_diff_id(store):
    desc, _ = add_layer(store, [("file", "x", b"x")])
    with pytest.raises(ContainerError, match="diff_id"):
        store.unpacked_layer(desc, "sha256:" + "1" * 64)
    assert os.listdir(store.layers_dir) == [], "nothing kept from a layer that failed its check"


def test_layer_blob_round_trip_through_store(store, tmp_path):
    from pykvm.container.image.layer import apply_layer
    desc, _ = add_layer(store, [("file", "f", b"data")])
    out = tmp_path / "out"
    out.mkdir()
    with open(store.blob_path(desc["digest"]), "rb") as blob:
        apply_layer(blob, str(out))
    assert (out / "f").read_bytes() == b"data"
