"""What the parser fuzzers found (tests/fuzz/parser_fuzz.py), each kept as a test.

Every case is outside data that used to end in a Python traceback; each must
now be one clean PyKvmError naming the file and what is wrong with it.
"""
from __future__ import annotations

import io
import json
import tarfile

import pytest

from pykvm.container.image.archive import load_archive
from pykvm.container.image import registry
from pykvm.container.image.build import BuildOptions, Builder
from pykvm.container.image.dockerfile import BuildFileError, DockerIgnore
from pykvm.container.image.schema import check_config, check_descriptor, check_index, check_manifest
from pykvm.container.image.store import ImageStore, resolve_for_run
from pykvm.container.runtime.bundle import load_bundle
from pykvm.errors import ConfigError, ContainerError

DIGEST = "sha256:" + "c" * 64


def store_with(tmp_path, manifest: dict, config: dict) -> ImageStore:
    """A store holding `manifest` (its config descriptor pointed at `config`'s blob), tagged x:1."""
    store = ImageStore(tmp_path / "store")
    config_digest = store.put_bytes(json.dumps(config).encode())
    if isinstance(manifest.get("config"), dict):
        manifest["config"]["digest"] = config_digest
    data = json.dumps(manifest).encode()
    store.tag("x:1", {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "digest": store.put_bytes(data), "size": len(data)})
    return store


def manifest(layers=None) -> dict:
    return {"schemaVersion": 2, "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                           "digest": DIGEST, "size": 2},
            "layers": [{"digest": DIGEST, "size": 1}] if layers is None else layers}


# --- Dockerfiles, .dockerignore and config.json

@pytest.mark.parametrize("file", ["Dockerfile", ".dockerignore"])
def test_a_build_file_that_is_not_utf8_is_one_error(tmp_path, file):
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / file).write_bytes(b"FROM scratch\nRUN echo \xff\n")
    with pytest.raises(ContainerError, match=rf"{file}: not UTF-8 text \(byte 0xff at offset 22\)"):
        Builder(ImageStore(tmp_path / "store"), BuildOptions(context=str(tmp_path)))


@pytest.mark.parametrize("pattern, problem", [
    ("[z-a]", "bad character range z-a"), ("[\\]", "unterminated character set"),
    ("[]", "unterminated character set")])
def test_a_dockerignore_pattern_that_is_no_pattern_is_one_error(pattern, problem):
    with pytest.raises(BuildFileError, match=rf".dockerignore:3: syntax error in pattern .*: {problem}"):
        DockerIgnore(f"*.md\n# comment\n{pattern}\n")


def test_a_config_json_that_is_not_utf8_is_one_error(tmp_path):
    (tmp_path / "config.json").write_bytes(b'{"ociVersion": "1.0.2\x9b"}')
    with pytest.raises(ConfigError, match="config.json is not valid JSON"):
        load_bundle(str(tmp_path))


# --- the image store's documents

def test_an_index_json_without_manifests_is_one_error(tmp_path):
    store = ImageStore(tmp_path / "store")
    (store.layout / "index.json").write_text('{"schemaVersion": 2}')
    with pytest.raises(ContainerError, match="index.json is malformed: manifests is missing"):
        store.images()


@pytest.mark.parametrize("bad, problem", [
    ({"config": "sha256:x"}, "config is a str, not an object"),
    ({"layers": {"digest": DIGEST}}, "layers is a dict, not a list"),
    ({"layers": [{"digest": "sha256:../../etc", "size": 1}]}, r"layers\[0\].digest"),
    ({"layers": [{"digest": DIGEST, "size": -1}]}, r"layers\[0\].size -1 is not a byte count"),
])
def test_a_malformed_manifest_is_one_error(tmp_path, bad, problem):
    store = store_with(tmp_path, {**manifest(), **bad}, {"rootfs": {"diff_ids": [DIGEST]}})
    with pytest.raises(ContainerError, match=f"x:1: image manifest is malformed: {problem}"):
        store.get("x:1")


@pytest.mark.parametrize("config, problem", [
    ({"config": {"Env": "PATH=/bin"}}, "config.Env is a str, not a list"),
    ({"config": {"Cmd": ["sh", 1]}}, "config.Cmd is not a list of strings"),
    ({"rootfs": {"diff_ids": "sha256:"}}, "rootfs.diff_ids is a str, not a list"),
    ({"rootfs": []}, "rootfs is a list, not an object"),
])
def test_a_malformed_image_config_is_one_error(tmp_path, config, problem):
    store = store_with(tmp_path, manifest(), config)
    with pytest.raises(ContainerError, match=f"x:1: image config is malformed: {problem}"):
        store.get("x:1")


def test_a_layer_missing_from_the_store_is_one_error(tmp_path):
    store = store_with(tmp_path, manifest(), {"rootfs": {"diff_ids": ["sha256:" + "a" * 64]}})
    with pytest.raises(ContainerError, match=f"layer {DIGEST} is missing from the store"):
        resolve_for_run("x:1", store)


def test_schema_accepts_what_pykvm_writes():
    good = manifest()
    assert check_manifest(good) is good
    assert check_index({"manifests": [{**good["config"], "platform": {"os": "linux"}}]})
    assert check_config({"config": None, "rootfs": {"diff_ids": [DIGEST]}})
    assert check_descriptor({"digest": DIGEST, "size": 0, "annotations": {"a": "b"}}, "x")


# --- archives and registry answers

def test_a_truncated_oci_archive_is_one_error(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("index.json", b'{"manifests": []}'), ("blobs/sha256/" + "a" * 64, b"x" * 4096)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = tmp_path / "image.tar"
    archive.write_bytes(buf.getvalue()[:2000])          # cut inside the second member
    with pytest.raises(ContainerError, match=f"cannot read archive {archive}"):
        load_archive(ImageStore(tmp_path / "store"), str(archive))


def test_an_archive_index_that_is_not_an_object_is_one_error(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("index.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"[]"))
    archive = tmp_path / "image.tar"
    archive.write_bytes(buf.getvalue())
    with pytest.raises(ContainerError, match="index.json is not an image index"):
        load_archive(ImageStore(tmp_path / "store"), str(archive))


def test_a_registry_config_with_a_number_for_diff_ids_is_one_error(tmp_path):
    path = tmp_path / "config"
    path.write_text('{"rootfs": {"diff_ids": 3}}')
    ref = registry.parse_remote("localhost:5000/x:1")
    with pytest.raises(ContainerError, match="image config is malformed: rootfs.diff_ids is a int"):
        registry._check_config(str(path), manifest(), ref)


# Answers from a registry bent by the registry fuzz target's fake (tests/fuzz/parser_fuzz.py):
# directive bytes (operation, argument, argument) per request; tag 2 = manifest, config, layer.
CUT_SHORT, STALLED = b"\x02\x80\x00", b"\x08\x00\x00"


@pytest.mark.parametrize("plan, request_cut", [
    (CUT_SHORT, "manifest"),
    (b"\x00\x00\x00" + CUT_SHORT, "config blob"),
    (b"\x00\x00\x00\x00\x00\x00" + CUT_SHORT, "layer blob"),
    (b"\x00\x00\x00" + STALLED, "config blob, past the socket timeout"),
])
def test_a_registry_answer_cut_short_is_one_error(tmp_path, plan, request_cut):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
    import parser_fuzz

    fake = parser_fuzz.fake_registry()
    fake.plan, fake.payload, fake.stalled = [plan[i:i + 3] for i in range(0, len(plan), 3)], b"", False
    store = ImageStore(tmp_path / "store")
    with pytest.raises(ContainerError, match="broke off its answer|failed verification|cannot reach"):
        registry.pull(store, f"{fake.host}/fuzz:2", credentials=registry.Credentials("", ""))
    assert not any(store.tmp.iterdir()), request_cut
    assert not list(store.blobs.iterdir()), request_cut
