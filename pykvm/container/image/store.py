"""The image store: an OCI image layout on disk (OCI image spec, image-layout.md).

    $PYKVM_STORE (or /var/lib/pykvm as root, else $XDG_DATA_HOME/pykvm)
    +-- oci/                      an OCI image layout, readable by skopeo and umoci
    |   +-- oci-layout            {"imageLayoutVersion": "1.0.0"}          (image-layout.md)
    |   +-- index.json            one descriptor per tag, the tag in the annotation
    |   |                         org.opencontainers.image.ref.name      (annotations.md)
    |   +-- blobs/sha256/<hex>    manifests, configs and gzip'd layers, named by digest
    +-- layers/<hex>/             a layer unpacked for overlayfs, named by its diff_id
    +-- build-cache.json          the build cache (pykvm.container.image.build)
    +-- tmp/                      downloads and builds in progress (same filesystem: rename is atomic)

An image is a *manifest* (manifest.md) that names a *config* (config.md:
Env, Cmd, Entrypoint, WorkingDir, User, and rootfs.diff_ids, the sha256 of
each layer's uncompressed tar) and the *layers* (descriptors of the gzip
blobs: media type, digest over the compressed bytes, size).  Every blob is
verified against its digest when it enters the store; nothing half-written
is ever visible under blobs/ (write to tmp/, fsync, rename).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pykvm.container.image.schema import check_config, check_index, check_manifest, parse_document
from pykvm.errors import ConfigError, ContainerError

__all__ = [
    "MEDIA_OCI_MANIFEST", "MEDIA_OCI_INDEX", "MEDIA_OCI_CONFIG", "MEDIA_OCI_LAYER_GZIP",
    "MEDIA_OCI_LAYER_TAR", "MEDIA_DOCKER_MANIFEST", "MEDIA_DOCKER_LIST", "MEDIA_DOCKER_CONFIG",
    "MEDIA_DOCKER_LAYER_GZIP", "MANIFEST_TYPES", "INDEX_TYPES", "REF_NAME",
    "canonical_json", "sha256_digest", "check_digest", "normalize_name",
    "store_root", "Image", "ImageStore", "resolve_for_run", "RunImage",
]

# OCI image spec media types (media-types.md) and their Docker v2 schema 2 twins.
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MANIFEST_TYPES = (MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)
INDEX_TYPES = (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST)

REF_NAME = "org.opencontainers.image.ref.name"   # annotations.md: the tag of an index entry
LAYOUT_VERSION = "1.0.0"                          # image-layout.md: oci-layout file
STORE_ENV = "PYKVM_STORE"                         # overrides the store location (tests)
DEFAULT_TAG = "latest"

# descriptor.md "Digests": algorithm ":" encoded; we produce and accept sha256 only.
DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
# distribution reference grammar (docker/distribution reference/regexp.go), simplified:
# [host[:port]/]path[:tag][@digest]
PATH_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
HOST_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
HOST_RE = re.compile(rf"^(?:{HOST_LABEL}(?:\.{HOST_LABEL})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$")
TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")


def canonical_json(obj) -> bytes:
    """JSON with sorted keys and no spaces: the same object always gives the same digest."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    """Refuse anything but a well-formed sha256 digest (it becomes a file name)."""
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise ContainerError(f"invalid or unsupported digest {digest!r} (want sha256:<64 hex>)")
    return digest


def split_reference(text: str) -> tuple[str | None, str, str | None, str | None]:
    """`[host/]path[:tag][@digest]` -> (host, path, tag, digest).

    The first component is a host when it has a dot or a colon or is
    `localhost` (docker's rule), so `127.0.0.1:5000/hello:v1` has a host and
    `library/hello` has none.
    """
    rest, _, digest = text.partition("@")
    host = None
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        host, rest = first, remainder
    path, _, tag = rest.rpartition(":") if ":" in rest.rsplit("/", 1)[-1] else (rest, "", "")
    bad = ((host is not None and not HOST_RE.match(host)) or not PATH_RE.match(path)
           or (tag and not TAG_RE.match(tag)) or (digest and not DIGEST_RE.match(digest)))
    if bad:
        raise ConfigError(f"invalid image reference {text!r} (want [REGISTRY/]NAME[:TAG], name in lower case)")
    return host, path, tag or None, digest or None


def normalize_name(text: str) -> str:
    """A local image name with its tag: `hello` -> `hello:latest`; digests are kept."""
    host, path, tag, digest = split_reference(text)
    name = f"{host}/{path}" if host else path
    if digest and not tag:
        return f"{name}@{digest}"
    return f"{name}:{tag or DEFAULT_TAG}"


def store_root() -> Path:
    """$PYKVM_STORE, else /var/lib/pykvm for root, else $XDG_DATA_HOME/pykvm (~/.local/share/pykvm)."""
    if os.environ.get(STORE_ENV):
        return Path(os.environ[STORE_ENV])
    if os.geteuid() == 0:
        return Path("/var/lib/pykvm")
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(data) / "pykvm"


@dataclass
class Image:
    """A tagged image in the store: its manifest, its config, and where they are."""

    name: str
    manifest_digest: str
    manifest: dict
    config: dict

    @property
    def config_digest(self) -> str:
        return self.manifest["config"]["digest"]

    @property
    def id(self) -> str:
        """Docker's image ID: the config digest."""
        return self.config_digest

    @property
    def layers(self) -> list[dict]:
        return self.manifest.get("layers", [])

    @property
    def diff_ids(self) -> list[str]:
        return self.config.get("rootfs", {}).get("diff_ids", [])

    @property
    def size(self) -> int:
        return sum(d["size"] for d in self.layers) + self.manifest["config"]["size"]


@dataclass
class RunImage:
    """What the runtime needs to run an image: layer directories (lowest first) and the config."""

    layers: list[str]
    env: list[str]
    cmd: list[str]
    entrypoint: list[str]
    working_dir: str
    user: str
    config: dict
    id: str = ""                   # the image ID, recorded in the container's state (rmi's conflict check)


class ImageStore:
    """Blobs by digest, tags in index.json, unpacked layers for overlayfs."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else store_root()
        self.layout = self.root / "oci"
        self.blobs = self.layout / "blobs" / "sha256"
        self.layers_dir = self.root / "layers"
        self.tmp = self.root / "tmp"
        for d in (self.blobs, self.layers_dir, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        marker = self.layout / "oci-layout"
        if not marker.exists():
            self._write_atomic(marker, json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode())
        if not (self.layout / "index.json").exists():
            self._save_index({"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": []})

    # --- locking and atomic files
    @contextlib.contextmanager
    def locked(self):
        """Serialize index.json updates between pykvm processes (flock on <store>/lock)."""
        with open(self.root / "lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _write_atomic(self, path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.tmp)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)

    def temp_file(self, suffix: str = "") -> tuple[int, str]:
        """A new temporary file inside the store (so it can be renamed into blobs/)."""
        return tempfile.mkstemp(dir=self.tmp, suffix=suffix)

    def temp_dir(self, prefix: str = "") -> str:
        return tempfile.mkdtemp(dir=self.tmp, prefix=prefix)

    # --- blobs
    def blob_path(self, digest: str) -> Path:
        return self.blobs / check_digest(digest).split(":", 1)[1]

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).exists()

    def put_bytes(self, data: bytes, expected: str | None = None) -> str:
        """Store `data` as a blob; refuse it if `expected` is given and does not match."""
        digest = sha256_digest(data)
        if expected is not None and digest != check_digest(expected):
            raise ContainerError(f"digest mismatch: expected {expected}, content is {digest}")
        if not self.has_blob(digest):
            self._write_atomic(self.blob_path(digest), data)
        return digest

    def put_file(self, path: str, expected: str | None = None, size: int | None = None) -> str:
        """Move the file at `path` (inside tmp/) into blobs/, after hashing it; refuse a mismatch."""
        digest, actual = file_digest(path)
        if expected is not None and digest != check_digest(expected):
            os.unlink(path)
            raise ContainerError(f"digest mismatch: expected {expected}, content is {digest}")
        if size is not None and actual != size:
            os.unlink(path)
            raise ContainerError(f"size mismatch for {digest}: expected {size} bytes, got {actual}")
        self.adopt(path, digest)
        return digest

    def adopt(self, path: str, digest: str) -> None:
        """Move a file the caller has already verified against `digest` into blobs/ (no second hash)."""
        os.chmod(path, 0o644)
        os.replace(path, self.blob_path(digest))

    def read_blob(self, digest: str) -> bytes:
        """A blob's bytes, checked against its digest (a blob changed on disk is an error)."""
        try:
            data = self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise ContainerError(f"blob {digest} is missing from the store {self.layout}") from None
        if sha256_digest(data) != digest:
            raise ContainerError(f"blob {digest} in {self.layout} is corrupt (its content has another digest)")
        return data

    def read_json(self, digest: str) -> dict:
        """A blob holding a JSON object (a manifest, an index, a config), or ContainerError."""
        return parse_document(self.read_blob(digest), f"blob {digest}")

    # --- index.json and tags
    def index(self) -> dict:
        """index.json, checked (schema.py): every entry a descriptor."""
        path = self.layout / "index.json"
        return check_index(parse_document(path.read_bytes(), str(path)), str(path))

    def _save_index(self, index: dict) -> None:
        self._write_atomic(self.layout / "index.json", json.dumps(index, indent=2).encode() + b"\n")

    def tag(self, name: str, descriptor: dict) -> None:
        """Point tag `name` at a manifest descriptor (replacing what it pointed at)."""
        name = normalize_name(name)
        entry = {k: descriptor[k] for k in ("mediaType", "digest", "size")}
        entry["annotations"] = {REF_NAME: name}
        with self.locked():
            index = self.index()
            index["manifests"] = [m for m in index["manifests"] if _ref_name(m) != name] + [entry]
            self._save_index(index)

    def tags(self) -> list[tuple[str, dict]]:
        return [(_ref_name(m), m) for m in self.index()["manifests"] if _ref_name(m)]

    def find(self, name: str) -> tuple[str, dict]:
        """(tag, index entry) for a name, a manifest digest, or an image ID (prefix)."""
        tags = self.tags()
        wanted = None
        with contextlib.suppress(ConfigError):
            wanted = normalize_name(name)
        for ref, entry in tags:
            if ref == wanted or entry["digest"] == name:
                return ref, entry
        if re.fullmatch(r"(sha256:)?[a-f0-9]{6,64}", name):
            hexpart = name.split(":")[-1]
            for ref, entry in tags:
                image = self.load(ref, entry)
                if image.id.split(":")[1].startswith(hexpart) or entry["digest"].split(":")[1].startswith(hexpart):
                    return ref, entry
        raise ContainerError(f"no such image: {name} (see `pykvm container images`)")

    def get(self, name: str) -> Image:
        ref, entry = self.find(name)
        return self.load(ref, entry)

    def load(self, ref: str, entry: dict) -> Image:
        """The image a tag's index entry names; each document checked before use (schema.py)."""
        manifest = self.read_json(entry["digest"])
        if manifest.get("mediaType", entry.get("mediaType")) in INDEX_TYPES:
            manifest_digest = pick_platform(check_index(manifest, f"{ref}: image index"))["digest"]
            manifest = self.read_json(manifest_digest)
        else:
            manifest_digest = entry["digest"]
        check_manifest(manifest, f"{ref}: image manifest")
        config = check_config(self.read_json(manifest["config"]["digest"]), f"{ref}: image config")
        return Image(ref, manifest_digest, manifest, config)

    def images(self) -> list[Image]:
        return [self.load(ref, entry) for ref, entry in self.tags()]

    def remove(self, names: list[str], force: bool = False) -> list[str]:
        """`rmi`: untag each name; returns the tags removed.  Blobs go with `gc`.

        Docker's rule: the last tag of an image that a container (running or
        stopped) was made from is refused unless `force`; all names are checked
        before any is removed.
        """
        if not force:
            for name in names:
                self._check_unused(name)
        return [self.untag(name) for name in names]

    def _check_unused(self, name: str) -> None:
        ref, entry = self.find(name)
        image = self.load(ref, entry)
        if any(r != ref and self.load(r, e).id == image.id for r, e in self.tags()):
            return                                       # another tag keeps the image
        users = [s.id for s in _containers() if s.image == image.id]
        if users:
            raise ContainerError(f'conflict: unable to remove repository reference "{name}" (must force) '
                                 f"- container {users[0]} is using its referenced image {image.id[7:19]}")

    def untag(self, name: str) -> str:
        """Remove one tag; returns the tag removed.  Blobs go with `gc`."""
        ref, _ = self.find(name)
        with self.locked():
            index = self.index()
            index["manifests"] = [m for m in index["manifests"] if _ref_name(m) != ref]
            self._save_index(index)
        return ref

    # --- storing a new image
    def add_image(self, name: str, config: dict, layers: list[dict], media_type: str = MEDIA_OCI_MANIFEST) -> Image:
        """Write config and manifest blobs for already-stored layers and tag the result."""
        config_bytes = canonical_json(config)
        config_digest = self.put_bytes(config_bytes)
        manifest = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
            "layers": layers,
        }
        manifest_bytes = canonical_json(manifest)
        digest = self.put_bytes(manifest_bytes)
        self.tag(name, {"mediaType": media_type, "digest": digest, "size": len(manifest_bytes)})
        return Image(normalize_name(name), digest, manifest, config)

    # --- garbage collection
    def referenced(self) -> tuple[set[str], set[str]]:
        """(blobs, diff_ids) reachable from index.json: manifests, nested indexes, configs, layers."""
        blobs: set[str] = set()
        diff_ids: set[str] = set()
        pending = [m["digest"] for m in self.index()["manifests"]]
        while pending:
            digest = pending.pop()
            if digest in blobs or not self.has_blob(digest):
                continue
            blobs.add(digest)
            doc = self.read_json(digest)                 # an image index or an image manifest
            if "manifests" in doc:
                pending += [m["digest"] for m in check_index(doc, f"blob {digest}")["manifests"]]
            if "layers" in doc:
                check_manifest(doc, f"blob {digest}")
                config = doc["config"]["digest"]
                blobs.add(config)
                blobs.update(layer["digest"] for layer in doc["layers"])
                if self.has_blob(config):
                    config_doc = check_config(self.read_json(config), f"blob {config}")
                    diff_ids.update(config_doc.get("rootfs", {}).get("diff_ids", []))
        return blobs, diff_ids

    def gc(self) -> list[str]:
        """Delete blobs and unpacked layers that no tag reaches; returns the digests deleted.

        An unpacked layer that an existing container's overlay uses (its lowerdir)
        is kept even when no tag reaches it any more (`rmi --force`).
        """
        with self.locked():
            live, live_diff_ids = self.referenced()
            live_diff_ids |= {f"sha256:{os.path.basename(d)}" for s in _containers() for d in s.layers
                              if os.path.dirname(os.path.abspath(d)) == str(self.layers_dir.absolute())}
            removed = []
            for path in sorted(self.blobs.iterdir()):
                if f"sha256:{path.name}" not in live:
                    path.unlink()
                    removed.append(f"sha256:{path.name}")
            for path in self.layers_dir.iterdir():
                if f"sha256:{path.name}" not in live_diff_ids:
                    shutil.rmtree(path)
        return removed

    # --- unpacked layers
    def unpacked_layer(self, descriptor: dict, diff_id: str) -> str:
        """The directory holding this layer unpacked in overlayfs form; unpacks it on first use.

        The diff_id (sha256 of the uncompressed tar) is checked while unpacking.
        """
        from pykvm.container.image.layer import apply_layer

        final = self.layers_dir / check_digest(diff_id).split(":", 1)[1]
        if final.exists():
            return str(final)
        try:
            blob = open(self.blob_path(descriptor["digest"]), "rb")
        except FileNotFoundError:
            raise ContainerError(f"layer {descriptor['digest']} is missing from the store {self.layout} "
                                 "(pull the image again)") from None
        work = self.temp_dir(prefix="unpack-")
        with blob:
            reader = _UncompressedHasher(blob)
            apply_layer(reader, work, overlay=True)
            reader.drain()
        if reader.diff_id() != diff_id:
            shutil.rmtree(work)
            raise ContainerError(f"layer {descriptor['digest']} has diff_id {reader.diff_id()}, "
                                 f"but the image config says {diff_id}")
        os.chmod(work, 0o755)
        try:
            os.rename(work, final)
        except OSError:
            shutil.rmtree(work)                      # another process won the race
        return str(final)


def _containers() -> list:
    """The containers the runtime knows (running or stopped): their state names image and layers."""
    from pykvm.container.runtime.state import StateStore
    return StateStore().list()


def _ref_name(entry: dict) -> str | None:
    return entry.get("annotations", {}).get(REF_NAME)


def pick_platform(index: dict, os_name: str = "linux", arch: str = "amd64") -> dict:
    """image-index.md: the manifest descriptor for our platform."""
    for m in index.get("manifests", []):
        p = m.get("platform", {})
        if p.get("os") == os_name and p.get("architecture") == arch:
            return m
    raise ContainerError(f"the image index has no {os_name}/{arch} manifest")


def file_digest(path: str) -> tuple[str, int]:
    """sha256 digest and size of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


class _UncompressedHasher:
    """A file-like over a (possibly gzip'd) layer blob that hashes the uncompressed bytes read."""

    def __init__(self, blob):
        import gzip
        magic = blob.read(2)
        blob.seek(0)
        self.stream = gzip.GzipFile(fileobj=blob, mode="rb") if magic == b"\x1f\x8b" else blob
        self.hash = hashlib.sha256()

    def read(self, n=-1):
        data = self.stream.read(n)
        self.hash.update(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass

    def diff_id(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def resolve_for_run(name: str, store: ImageStore | None = None) -> RunImage:
    """For `pykvm container run IMAGE`: the unpacked layer directories, lowest first, and the config.

    Stack them with overlayfs (lowerdir=reversed(layers), an empty upperdir),
    then start `entrypoint + cmd` as `user` in `working_dir` with `env`.
    """
    store = store or ImageStore()
    image = store.get(name)
    if len(image.layers) != len(image.diff_ids):
        raise ContainerError(f"image {name}: {len(image.layers)} layers but {len(image.diff_ids)} diff_ids")
    dirs = [store.unpacked_layer(d, diff_id) for d, diff_id in zip(image.layers, image.diff_ids)]
    cfg = image.config.get("config") or {}
    return RunImage(
        layers=dirs,
        env=list(cfg.get("Env") or []),
        cmd=list(cfg.get("Cmd") or []),
        entrypoint=list(cfg.get("Entrypoint") or []),
        working_dir=cfg.get("WorkingDir") or "/",
        user=cfg.get("User") or "",
        config=image.config,
        id=image.id,
    )
