"""`pykvm container system check`, the image store's half: what a crash can leave in the store.

A store is consistent when (image-layout.md, and the store's own rules in store.py):

    blobs/sha256/<hex>   every file's content has the digest its name says
    index.json           every entry (a tag, or `<none>`) leads to a complete image:
                         its manifest (or index and this machine's manifest), its config
                         and every layer are blobs of the store
    layers/<hex>/        only directories named by a diff_id (unpacking happens in tmp/)
    tmp/                 empty while no pykvm process has the store open: downloads,
                         half-unpacked layers and build scratch of a process that died
    build-cache.json, layer-sizes.json    JSON (caches: a broken one is dropped)

A pull, a build or a load writes into tmp/ and renames into place, so a process killed at
any moment leaves at most files in tmp/; the other rules catch a disk that lost or
changed a file.  With `repair`, each problem found is mended the way containerd's gc and
`podman system check --repair` do: a corrupt blob is deleted, a tag of an incomplete image
is removed (pull the image again), leftovers go.  tmp/ is cleaned only when no other pykvm
process holds the store (its shared flock on `in-use`, store.py): a pull in progress keeps
its downloads.
"""
from __future__ import annotations

import json
import os
import shutil

from pykvm.container.runtime.check import Finding
from pykvm.container.image.schema import check_config, check_index, check_manifest
from pykvm.container.image.store import (INDEX_TYPES, NONE, SIZES_FILE, ImageStore, file_digest,
                                         pick_platform, host_platform)
from pykvm.errors import ContainerError

__all__ = ["check_store"]

HEX_DIGITS = set("0123456789abcdef")
CACHE_FILES = ("build-cache.json", SIZES_FILE)


def check_store(store: ImageStore, repair: bool = False) -> list[Finding]:
    """Every rule of the module docstring, in order: blobs, tags, layers, caches, tmp/."""
    findings = _check_blobs(store, repair)
    corrupt = {f"sha256:{f.where.split()[1]}" for f in findings}
    findings += _check_tags(store, repair, corrupt)
    findings += _check_layers(store, repair)
    findings += _check_caches(store, repair)
    findings += _check_tmp(store, repair)
    return findings


def _is_hex_name(name: str) -> bool:
    return len(name) == 64 and set(name) <= HEX_DIGITS


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        os.unlink(path)


def _check_blobs(store: ImageStore, repair: bool) -> list[Finding]:
    """Hash every blob: its name is its digest, or it is not a blob."""
    findings = []
    for entry in sorted(os.scandir(store.blobs), key=lambda e: e.name):
        if not _is_hex_name(entry.name) or not entry.is_file(follow_symlinks=False):
            problem = "is not a blob (not a file named by a sha256 digest)"
        elif file_digest(entry.path)[0] != f"sha256:{entry.name}":
            problem = "is corrupt (its content has another digest)"
        else:
            continue
        finding = Finding(f"blob {entry.name[:64]}", problem)
        if repair:
            _remove(entry.path)
            finding.repaired = "deleted"
        findings.append(finding)
    return findings


def _check_tags(store: ImageStore, repair: bool, corrupt: set[str]) -> list[Finding]:
    """Every index.json entry leads to a complete image (a corrupt blob counts as missing);
    an incomplete one loses its entry."""
    findings = []
    for ref, entry in store.entries():
        missing = _missing_blobs(store, entry, corrupt)
        if not missing:
            continue
        finding = Finding(f"image {ref or NONE + ' ' + entry['digest']}",
                          f"is incomplete: {missing}")
        if repair:
            if ref:
                store.untag(ref)
            else:
                store.drop_untagged(entry["digest"])
            finding.repaired = "removed (pull or build it again)"
        findings.append(finding)
    return findings


def _missing_blobs(store: ImageStore, entry: dict, corrupt: set[str]) -> str:
    """"" if the image is complete, else what it lacks, in words."""
    try:
        digest = entry["digest"]
        document = store.read_json(digest)
        if document.get("mediaType", entry.get("mediaType")) in INDEX_TYPES:
            index = check_index(document, f"blob {digest}")
            digest = _platform_manifest(store, index)
            document = store.read_json(digest)
        manifest = check_manifest(document, f"blob {digest}")
        config = check_config(store.read_json(manifest["config"]["digest"]),
                              f"blob {manifest['config']['digest']}")
    except ContainerError as e:
        return str(e)
    lacking = [d["digest"] for d in manifest["layers"]
               if not store.has_blob(d["digest"]) or d["digest"] in corrupt]
    if lacking:
        return f"layer {lacking[0]} is missing or corrupt" + (f" (and {len(lacking) - 1} more)" if len(lacking) > 1 else "")
    if len(manifest["layers"]) != len(config.get("rootfs", {}).get("diff_ids", [])):
        return "its config's diff_ids do not match its layers"
    return ""


def _platform_manifest(store: ImageStore, index: dict) -> str:
    """The manifest of an index that this machine runs: it must be in the store."""
    try:
        return pick_platform(index, *host_platform())["digest"]
    except ContainerError:
        present = [m["digest"] for m in index["manifests"] if store.has_blob(m["digest"])]
        if not present:
            raise ContainerError("the image index has none of its manifests in the store") from None
        return present[0]


def _check_layers(store: ImageStore, repair: bool) -> list[Finding]:
    """layers/ holds only directories named by a diff_id (a rename from tmp/ made each)."""
    findings = []
    for entry in sorted(os.scandir(store.layers_dir), key=lambda e: e.name):
        if _is_hex_name(entry.name) and entry.is_dir(follow_symlinks=False):
            continue
        finding = Finding(f"layers/{entry.name}", "is not an unpacked layer")
        if repair:
            _remove(entry.path)
            finding.repaired = "removed"
        findings.append(finding)
    return findings


def _check_caches(store: ImageStore, repair: bool) -> list[Finding]:
    """The two caches are JSON objects; a broken one is only a cache: it goes."""
    findings = []
    for name in CACHE_FILES:
        path = store.root / name
        try:
            if isinstance(json.loads(path.read_bytes()), dict):
                continue
        except FileNotFoundError:
            continue
        except ValueError:
            pass
        finding = Finding(name, "is not a JSON object")
        if repair:
            path.unlink()
            finding.repaired = "deleted (a cache: it is rebuilt)"
        findings.append(finding)
    return findings


def _check_tmp(store: ImageStore, repair: bool) -> list[Finding]:
    """tmp/ and the build cache's temporary file: leftovers of a process that died."""
    leftovers = sorted(os.scandir(store.tmp), key=lambda e: e.name)
    leftovers += [e for e in os.scandir(store.root) if e.name.endswith(".tmp")]
    if not leftovers:
        return []
    with store.exclusive() as alone:
        if not alone:                 # a pull or build in progress: its files, not leftovers
            return []
        findings = []
        for entry in leftovers:
            where = os.path.relpath(entry.path, store.root)
            kind = "a half-unpacked layer" if entry.name.startswith("unpack-") else "a leftover"
            finding = Finding(where, f"is {kind} of a pykvm process that died")
            if repair:
                _remove(entry.path)
                finding.repaired = "removed"
            findings.append(finding)
    return findings
