"""Image archives: `save` writes one, `load` reads three kinds.

    OCI archive       an image layout (image-layout.md) in a tar: oci-layout, index.json,
                      blobs/sha256/<hex>; what `save` writes and skopeo's `oci-archive:`
    layout tarball    the same made with `tar -C layout .`: every name starts with ./
    docker archive    `docker save`'s format (docker's image spec v1.2, "Combined Image JSON
                      + Filesystem Changeset Format"): manifest.json lists each image's
                      Config file, its RepoTags and its Layers (uncompressed tars, whose
                      sha256 are the config's rootfs.diff_ids); `repositories` is legacy

A docker archive holds no OCI manifest: one is written for each image, its layers
described by what their bytes are (plain tar, gzip, zstd).  Docker 25's `docker save`
writes both index.json and manifest.json; manifest.json wins, as under `docker load`.

Nothing is stored until everything is verified: each blob against its digest (its
name), each docker layer against its diff_id, and each image for completeness (every
manifest, config and layer it names is in the archive or already in the store, with
the size its descriptor says).  Then the blobs move into the store at once.
"""
from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import posixpath
import tarfile
import zlib
from dataclasses import dataclass, field

from pykvm.container.image.store import (INDEX_TYPES, MEDIA_OCI_CONFIG, MEDIA_OCI_INDEX,
                                         MEDIA_OCI_MANIFEST, REF_NAME, ImageStore, UncompressedHasher,
                                         canonical_json, check_digest, layer_media_type, local_name)
from pykvm.errors import ConfigError, ContainerError

__all__ = ["save_archive", "load_archive", "load_stream"]

COPY_CHUNK = 1 << 20
BLOBS_DIR = "blobs/sha256/"                # image-layout.md: blobs/<alg>/<encoded>
DOCKER_MANIFEST = "manifest.json"          # docker save: the list of images


# --- save --------------------------------------------------------------------------------

def save_archive(store: ImageStore, names, output: str) -> None:
    """A tar of an image layout holding just these images (oci-layout, index.json, their blobs)."""
    entries, blobs = [], set()
    for name in names:
        ref, entry = store.find(name)
        entries.append({**entry, "annotations": {**entry.get("annotations", {}), REF_NAME: ref}}
                       if ref else entry)
        blobs.add(entry["digest"])
        image = store.load(ref, entry)
        blobs |= {image.manifest_digest, image.config_digest} | {d["digest"] for d in image.layers}
    index = {"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": entries}
    tmp = output + ".tmp"
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, "oci-layout", (store.layout / "oci-layout").read_bytes())
            _add_bytes(tar, "index.json", canonical_json(index))
            for digest in sorted(blobs):
                tar.add(store.blob_path(digest), BLOBS_DIR + digest[7:])
        os.replace(tmp, output)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise ContainerError(f"cannot write archive {output}: {e.strerror}") from None


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


# --- load --------------------------------------------------------------------------------

@dataclass
class _Staging:
    """Blobs copied out of an archive into the store's tmp/, not yet in blobs/."""

    store: ImageStore
    archive: str
    paths: dict[str, str] = field(default_factory=dict)     # digest -> file in tmp/

    def add(self, stream) -> str:
        """Copy a stream into tmp/, hashing it on the way; returns its digest."""
        fd, path = self.store.temp_file(".blob")
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(COPY_CHUNK):
                h.update(chunk)
                out.write(chunk)
        digest = "sha256:" + h.hexdigest()
        if digest in self.paths:
            os.unlink(path)
        else:
            self.paths[digest] = path
        return digest

    def has(self, digest: str) -> bool:
        return digest in self.paths or self.store.has_blob(digest)

    def path(self, digest: str) -> str:
        return self.paths.get(digest) or str(self.store.blob_path(digest))

    def size(self, digest: str) -> int:
        return os.path.getsize(self.path(digest))

    def read_json(self, digest: str, what: str) -> dict:
        try:
            with open(self.path(digest), "rb") as f:
                return json.load(f)
        except (ValueError, UnicodeDecodeError):
            raise self.error(f"the {what} {digest} is not JSON") from None

    def error(self, text: str) -> ContainerError:
        return ContainerError(f"{self.archive}: {text}: nothing loaded")

    def commit(self) -> None:
        for digest, path in self.paths.items():
            self.store.adopt(path, digest)
        self.paths.clear()

    def discard(self) -> None:
        for path in self.paths.values():
            if os.path.exists(path):
                os.unlink(path)


def load_archive(store: ImageStore, path: str, label: str | None = None) -> list[str]:
    """Import every image of an archive, all verified first; returns the names loaded
    (`sha256:...` for an image without a tag).  `label`: the archive's name in errors."""
    label = label or path
    tar = _open(path, label)
    staging = _Staging(store, label)
    with tar:
        try:
            members = _members(tar)
            if DOCKER_MANIFEST in members:
                images = _load_docker(tar, members, staging)
            elif "index.json" in members:
                images = _load_oci(tar, members, staging)
            else:
                raise ContainerError(f"{label} is neither an OCI archive (index.json) "
                                     f"nor a docker archive (manifest.json)")
            staging.commit()
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as e:
            raise ContainerError(f"cannot read archive {label}: it is damaged or cut short ({e}): "
                                 "nothing loaded") from None
        finally:
            staging.discard()
    names = []
    for tags, descriptor in images:
        for tag in tags:
            store.tag(tag, descriptor)
        if not tags:
            store.keep_untagged(descriptor)
        names += tags or [store.load(None, descriptor).id]
    return names


def load_stream(store: ImageStore, stream) -> list[str]:
    """load_archive for an archive read from a stream (standard input): kept in the store's
    tmp/ first, since a tar is read out of order (index.json or manifest.json may come last)."""
    fd, path = store.temp_file(".tar")
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(COPY_CHUNK):
                out.write(chunk)
        return load_archive(store, path, "standard input")
    finally:
        os.unlink(path)


def _open(path: str, label: str) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except OSError as e:
        raise ContainerError(f"cannot read archive {label}: {e.strerror}") from None
    except tarfile.TarError:                    # its message lists every compression it tried
        raise ContainerError(f"cannot read archive {label}: not a tar file "
                             f"(plain, gzip, bzip2 or xz)") from None


def _members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """Regular files and symlinks by their name inside the archive: `./index.json` is index.json."""
    out = {}
    for member in tar.getmembers():
        name = posixpath.normpath("/" + member.name).lstrip("/")
        if name and (member.isfile() or member.issym() or member.islnk()):
            out[name] = member
    return out


def _read(tar: tarfile.TarFile, members: dict, name: str, staging: _Staging):
    """A member's stream (a symlink or hard link read as its target)."""
    member = members.get(name)
    stream = None
    if member is not None:
        try:
            stream = tar.extractfile(member)
        except KeyError:                        # a link to a member that is not there
            stream = None
    if stream is None:
        raise staging.error(f"{name} is missing from the archive")
    return stream


# --- an OCI image layout in a tar

def _load_oci(tar, members, staging: _Staging) -> list[tuple[list[str], dict]]:
    try:
        index = json.load(_read(tar, members, "index.json", staging))
        entries = list(index["manifests"])
    except (ValueError, KeyError, TypeError):
        raise staging.error("index.json is not an image index") from None
    for name in sorted(n for n in members if n.startswith(BLOBS_DIR)):
        claimed = check_digest("sha256:" + name[len(BLOBS_DIR):])
        if staging.add(_read(tar, members, name, staging)) != claimed:
            raise staging.error(f"blob {claimed} does not match its digest")
    images = []
    for entry in entries:
        _check_complete(staging, entry, "image " + (_ref(entry) or str(entry.get("digest"))))
        images.append(([_tag(staging, _ref(entry))] if _ref(entry) else [], entry))
    if not images:
        raise staging.error("the archive's index.json lists no image")
    return images


def _ref(entry: dict) -> str | None:
    return (entry.get("annotations") or {}).get(REF_NAME)


def _tag(staging: _Staging, name: str) -> str:
    """A name from the archive as a local tag, refused before anything is stored."""
    try:
        return local_name(name)
    except ConfigError:
        raise staging.error(f"{name!r} is not an image name") from None


def _check_complete(staging: _Staging, descriptor: dict, what: str, document: bool = True) -> None:
    """Every blob the descriptor reaches is here, with its descriptor's size: an index's
    manifests (those of other platforms may be absent, as after a pull of one), a
    manifest's config and layers.  `document`: the descriptor names a manifest or an index."""
    try:
        digest = check_digest(descriptor["digest"])
        size = descriptor["size"]
    except (KeyError, TypeError):
        raise staging.error(f"{what}: a malformed descriptor") from None
    if not staging.has(digest):
        raise staging.error(f"{what}: blob {digest} is missing from the archive")
    if staging.size(digest) != size:
        raise staging.error(f"{what}: blob {digest} has {staging.size(digest)} bytes, "
                            f"its descriptor says {size}")
    if not document:
        return                                  # a config or a layer: its digest was checked
    doc = staging.read_json(digest, "manifest")
    if doc.get("mediaType", descriptor.get("mediaType")) in INDEX_TYPES:
        present = [m for m in doc.get("manifests", []) if staging.has(m.get("digest", ""))]
        if not present:
            raise staging.error(f"{what}: none of the index's manifests is in the archive")
        for child in present:
            _check_complete(staging, child, what)
        return
    children = [doc.get("config")] + list(doc.get("layers") or [])
    if not all(isinstance(child, dict) for child in children):
        raise staging.error(f"{what}: manifest {digest} is malformed")
    for child in children:
        _check_complete(staging, child, what, document=False)


# --- docker save's format

def _load_docker(tar, members, staging: _Staging) -> list[tuple[list[str], dict]]:
    try:
        entries = json.load(_read(tar, members, DOCKER_MANIFEST, staging))
        assert isinstance(entries, list)
    except (ValueError, AssertionError):
        raise staging.error(f"{DOCKER_MANIFEST} is not a list of images") from None
    images = []
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) \
                or not isinstance(entry.get("Layers"), list):
            raise staging.error(f"{DOCKER_MANIFEST}: image {number} has no Config and Layers")
        images.append(_docker_image(tar, members, staging, entry))
    if not images:
        raise staging.error(f"{DOCKER_MANIFEST} lists no image")
    return images


def _docker_image(tar, members, staging: _Staging, entry: dict) -> tuple[list[str], dict]:
    """One manifest.json entry: its config and layers staged and checked, an OCI manifest written."""
    config_name = posixpath.normpath("/" + entry["Config"]).lstrip("/")
    config_digest = staging.add(_read(tar, members, config_name, staging))
    stem = posixpath.basename(config_name).removesuffix(".json")
    if len(stem) == 64 and "sha256:" + stem != config_digest:
        raise staging.error(f"{config_name} does not match its digest")
    config = staging.read_json(config_digest, "config")
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    if len(diff_ids) != len(entry["Layers"]):
        raise staging.error(f"{config_name} lists {len(diff_ids)} layers, {DOCKER_MANIFEST} "
                            f"{len(entry['Layers'])}")
    layers = [_docker_layer(tar, members, staging, posixpath.normpath("/" + name).lstrip("/"), diff_id)
              for name, diff_id in zip(entry["Layers"], diff_ids)]
    manifest = {"schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST,
                "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": config_digest,
                           "size": staging.size(config_digest)},
                "layers": layers}
    body = canonical_json(manifest)
    digest = staging.add(io.BytesIO(body))
    tags = [_tag(staging, t) for t in entry.get("RepoTags") or []]
    return tags, {"mediaType": MEDIA_OCI_MANIFEST, "digest": digest, "size": len(body)}


def _docker_layer(tar, members, staging: _Staging, name: str, diff_id: str) -> dict:
    """A layer file: staged, its uncompressed sha256 checked against the config's diff_id."""
    digest = staging.add(_read(tar, members, name, staging))
    with open(staging.path(digest), "rb") as blob:
        reader = UncompressedHasher(blob)
        try:
            reader.drain()
        except (OSError, EOFError, ValueError) as e:
            raise staging.error(f"layer {name} is corrupt ({e})") from None
        with open(staging.path(digest), "rb") as again:
            media_type = layer_media_type(again.read(8))
    if reader.diff_id() != diff_id:
        raise staging.error(f"layer {name} has diff_id {reader.diff_id()}, its config says {diff_id}")
    return {"mediaType": media_type, "digest": digest, "size": staging.size(digest)}
