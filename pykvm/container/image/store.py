"""The image store: an OCI image layout on disk (OCI image spec, image-layout.md).

    $PYKVM_STORE (or /var/lib/pykvm as root, else $XDG_DATA_HOME/pykvm)
    +-- oci/                      an OCI image layout, readable by skopeo and umoci
    |   +-- oci-layout            {"imageLayoutVersion": "1.0.0"}          (image-layout.md)
    |   +-- index.json            one descriptor per tag, the tag in the annotation
    |   |                         org.opencontainers.image.ref.name      (annotations.md);
    |   |                         an image without a tag (`<none>`) has none
    |   +-- blobs/sha256/<hex>    manifests, configs and gzip'd layers, named by digest
    +-- layers/<hex>/             a layer unpacked for overlayfs, named by its diff_id
    +-- build-cache.json          the build cache (pykvm.container.image.build)
    +-- layer-sizes.json          each layer's unpacked size by diff_id (`images` SIZE)
    +-- tmp/                      downloads and builds in progress (same filesystem: rename is atomic)
    +-- lock                      flock(2)ed around every index.json change
    +-- in-use                    flock(2)ed shared by every process with the store open, so
                                  `system check` (check.py) knows whose tmp/ files are leftovers

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
    "MEDIA_OCI_LAYER_TAR", "MEDIA_OCI_LAYER_ZSTD", "MEDIA_DOCKER_MANIFEST", "MEDIA_DOCKER_LIST",
    "MEDIA_DOCKER_CONFIG", "MEDIA_DOCKER_LAYER_GZIP", "MEDIA_DOCKER_LAYER_TAR", "MANIFEST_TYPES",
    "INDEX_TYPES", "REF_NAME", "REPO_DIGEST", "NONE",
    "canonical_json", "sha256_digest", "check_digest", "normalize_name", "local_name",
    "layer_media_type", "pick_platform", "parse_platform", "host_platform",
    "store_root", "Image", "ImageStore", "resolve_for_run", "RunImage",
]

# OCI image spec media types (media-types.md) and their Docker v2 schema 2 twins.
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MEDIA_DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
MANIFEST_TYPES = (MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)
INDEX_TYPES = (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST)

REF_NAME = "org.opencontainers.image.ref.name"   # annotations.md: the tag of an index entry
REPO_DIGEST = "io.pykvm.image.repo-digest"        # ours: REPO@DIGEST, the registry's name for it (RepoDigests)
LAYOUT_VERSION = "1.0.0"                          # image-layout.md: oci-layout file
STORE_ENV = "PYKVM_STORE"                         # overrides the store location (tests)
DEFAULT_TAG = "latest"
IN_USE_FILE = "in-use"                            # shared flock: a process has the store open
SIZES_FILE = "layer-sizes.json"                   # diff_id -> bytes of its files, unpacked (SIZE)
DISKS_DIR = "disks"                               # <image id hex>.ext4: root disks for VMs (rootdisk.py)
NONE = "<none>:<none>"                            # how docker shows an image without a tag
DOCKER_HUB_PREFIXES = ("docker.io/library/", "docker.io/")   # docker's own spelling of short names

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


def local_name(text: str) -> str:
    """A name as docker shows it locally: `docker.io/library/hello:1` -> `hello:1`."""
    for prefix in DOCKER_HUB_PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    return normalize_name(text)


def layer_media_type(head: bytes) -> str:
    """media-types.md: a layer's media type from its first bytes (gzip, zstd, or a plain tar)."""
    from pykvm.container.image.layer import GZIP_MAGIC, ZSTD_MAGIC
    if head.startswith(GZIP_MAGIC):
        return MEDIA_OCI_LAYER_GZIP
    if head.startswith(ZSTD_MAGIC):
        return MEDIA_OCI_LAYER_ZSTD
    return MEDIA_OCI_LAYER_TAR


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
    repo_digest: str | None = None      # REPO@DIGEST: a registry's name for it (an index's digest, if pulled so)

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
        self._in_use = self._hold_in_use()

    def _hold_in_use(self):
        """A shared flock on <store>/in-use for as long as this object lives (its file is
        closed with it, and by the kernel when the process dies, however it dies)."""
        f = open(self.root / IN_USE_FILE, "a")      # close-on-exec: a container's command lacks it
        fcntl.flock(f, fcntl.LOCK_SH)
        return f

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

    @contextlib.contextmanager
    def exclusive(self):
        """Yields True when no other process has the store open (and none may open it until
        the block ends), False when one has: then its tmp/ files may be work in progress."""
        self._in_use.close()
        with open(self.root / IN_USE_FILE, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                alone = True
            except BlockingIOError:
                alone = False
            try:
                yield alone
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
        self._in_use = self._hold_in_use()

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
        """Point tag `name` at a manifest descriptor (replacing what it pointed at); the
        image's untagged entry, if it had one, goes (it is no longer `<none>`)."""
        name = normalize_name(name)
        entry = {k: descriptor[k] for k in ("mediaType", "digest", "size")}
        entry["annotations"] = {**_kept_annotations(descriptor), REF_NAME: name}
        with self.locked():
            index = self.index()
            index["manifests"] = [m for m in index["manifests"] if _ref_name(m) != name
                                  and (_ref_name(m) or m["digest"] != entry["digest"])] + [entry]
            self._save_index(index)

    def keep_untagged(self, descriptor: dict) -> None:
        """Keep an image without a tag (docker's `<none>`): an index.json entry with no ref.name."""
        entry = {k: descriptor[k] for k in ("mediaType", "digest", "size")}
        with self.locked():
            index = self.index()
            if not any(m["digest"] == entry["digest"] for m in index["manifests"]):
                index["manifests"].append(entry)
                self._save_index(index)

    def entries(self) -> list[tuple[str | None, dict]]:
        """Every image of index.json: (its tag, or None for `<none>`, the entry)."""
        return [(_ref_name(m), m) for m in self.index()["manifests"]]

    def tags(self) -> list[tuple[str, dict]]:
        return [(ref, m) for ref, m in self.entries() if ref]

    def find(self, name: str) -> tuple[str | None, dict]:
        """(tag or None, index entry) for a name, a manifest digest, or an image ID (prefix)."""
        ref, entry, _ = self._match(name)
        return ref, entry

    def _match(self, name: str) -> tuple[str | None, dict, bool]:
        """find(), and whether `name` was a tag (not an ID or a digest)."""
        entries = self.entries()
        wanted = None
        with contextlib.suppress(ConfigError):
            wanted = normalize_name(name)
        for ref, entry in entries:
            if ref is not None and ref == wanted:
                return ref, entry, True
        for ref, entry in entries:
            repo_digest = (entry.get("annotations") or {}).get(REPO_DIGEST)
            if name == entry["digest"] or (repo_digest and repo_digest in (name, wanted)):
                return ref, entry, False
        if re.fullmatch(r"(sha256:)?[a-f0-9]{6,64}", name):
            hexpart = name.split(":")[-1]
            for ref, entry in entries:
                image = self.load(ref, entry)
                if image.id.split(":")[1].startswith(hexpart) or entry["digest"].split(":")[1].startswith(hexpart):
                    return ref, entry, False
        raise ContainerError(f"no such image: {name} (see `pykvm container images`)")

    def get(self, name: str) -> Image:
        ref, entry = self.find(name)
        return self.load(ref, entry)

    def load(self, ref: str | None, entry: dict) -> Image:
        label = ref or entry.get("digest", "?")
        manifest = self.read_json(entry["digest"])
        if manifest.get("mediaType", entry.get("mediaType")) in INDEX_TYPES:
            manifest_digest = self._present_platform(check_index(manifest, f"{label}: image index"))["digest"]
            manifest = self.read_json(manifest_digest)
        else:
            manifest_digest = entry["digest"]
        check_manifest(manifest, f"{label}: image manifest")
        config = check_config(self.read_json(manifest["config"]["digest"]), f"{label}: image config")
        return Image(ref or NONE, manifest_digest, manifest, config,
                     (entry.get("annotations") or {}).get(REPO_DIGEST))

    def _present_platform(self, index: dict) -> dict:
        """image-index.md: this machine's manifest, else the first whose blob the store has."""
        with contextlib.suppress(ContainerError):
            chosen = pick_platform(index, *host_platform())
            if self.has_blob(chosen["digest"]):
                return chosen
        for m in index.get("manifests", []):
            if self.has_blob(m["digest"]):
                return m
        raise ContainerError("the image index has none of its manifests in the store")

    def images(self) -> list[Image]:
        return [self.load(ref, entry) for ref, entry in self.entries()]

    def remove(self, names: list[str], force: bool = False) -> list[str]:
        """`rmi`: untag each name; returns the tags removed.  Blobs go with `gc`.

        Docker's rules: a tag removes that tag; an image ID removes every tag of
        the image, and is refused (unless `force`) when there are several; the last
        tag of an image a container (running or stopped) was made from is refused
        unless `force`.  All names are checked before any is removed.
        """
        plans = [self._removal(name, force) for name in names]
        removed = []
        for refs, digest in plans:
            removed += [self.untag(ref) for ref in refs]
            self.drop_untagged(digest)
        return removed

    def _removal(self, name: str, force: bool) -> tuple[list[str], str]:
        """(the tags rmi NAME removes, the manifest digest): checked, nothing changed yet."""
        ref, entry, by_tag = self._match(name)
        image = self.load(ref, entry)
        same = [r for r, e in self.tags() if self.load(r, e).id == image.id]
        refs = [ref] if by_tag else same
        if not by_tag and len(same) > 1 and not force:
            raise ContainerError(f"conflict: unable to delete {image.id[7:19]} (must be forced) "
                                 f"- image is referenced in multiple repositories")
        if not force and not set(same) - set(refs):          # no other tag keeps the image
            users = [s.id for s in _containers() if s.image == image.id]
            if users:
                raise ContainerError(f'conflict: unable to remove repository reference "{name}" (must force) '
                                     f"- container {users[0]} is using its referenced image {image.id[7:19]}")
        return refs, entry["digest"]

    def untag(self, name: str) -> str:
        """Remove one tag (or an untagged image's entry); returns what was removed.  Blobs go with `gc`."""
        ref, entry = self.find(name)
        if ref is None:
            self.drop_untagged(entry["digest"])
            return NONE
        with self.locked():
            index = self.index()
            index["manifests"] = [m for m in index["manifests"] if _ref_name(m) != ref]
            self._save_index(index)
        return ref

    def drop_untagged(self, digest: str) -> None:
        """Remove the `<none>` entry of this manifest digest from index.json, if there is one."""
        with self.locked():
            index = self.index()
            index["manifests"] = [m for m in index["manifests"] if _ref_name(m) or m["digest"] != digest]
            self._save_index(index)

    # --- storing a new image
    def add_image(self, name: str | None, config: dict, layers: list[dict], media_type: str = MEDIA_OCI_MANIFEST) -> Image:
        """Write config and manifest blobs for already-stored layers and tag the result
        (name None: keep it untagged)."""
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
        descriptor = {"mediaType": media_type, "digest": digest, "size": len(manifest_bytes)}
        if name is None:
            self.keep_untagged(descriptor)
            return Image(NONE, digest, manifest, config)
        self.tag(name, descriptor)
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
        """Delete blobs, unpacked layers and VM root disks that no tag reaches; returns the
        digests deleted.

        An unpacked layer that an existing container's overlay uses (its lowerdir)
        is kept even when no tag reaches it any more (`rmi --force`).  A root disk a
        running VM has open stays readable to it after the unlink.
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
            disks = self.root / DISKS_DIR
            for path in disks.iterdir() if disks.is_dir() else ():
                if f"sha256:{path.name.removesuffix('.ext4')}" not in live:     # named by image ID
                    path.unlink()
        return removed

    # --- sizes
    def unpacked_size(self, image: Image) -> int:
        """Docker's image SIZE: the bytes of every regular file in every layer, unpacked
        (the sum of each layer's content; a hard link is not counted twice).  Each layer's
        sum is kept in layer-sizes.json by diff_id, so it is read from the blob only once."""
        path = self.root / SIZES_FILE
        try:
            sizes = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            sizes = {}
        missing = [(d, diff_id) for d, diff_id in zip(image.layers, image.diff_ids) if diff_id not in sizes]
        for descriptor, diff_id in missing:
            sizes[diff_id] = self._content_size(descriptor)
        if missing:
            with self.locked():
                self._write_atomic(path, json.dumps(sizes, sort_keys=True).encode())
        return sum(sizes[diff_id] for diff_id in image.diff_ids if diff_id in sizes)

    def _content_size(self, descriptor: dict) -> int:
        import tarfile

        from pykvm.container.image.layer import decompressed
        total = 0
        try:
            with open(self.blob_path(descriptor["digest"]), "rb") as blob, \
                    tarfile.open(fileobj=decompressed(blob), mode="r|") as tar:
                total = sum(member.size for member in tar if member.isreg())
        except FileNotFoundError:
            raise ContainerError(f"blob {descriptor['digest']} is missing from the store {self.layout}") from None
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ContainerError(f"layer {descriptor['digest']} is corrupt: {e}") from None
        return total

    # --- unpacked layers
    def unpacked_layer(self, descriptor: dict, diff_id: str) -> str:
        """The directory holding this layer unpacked in overlayfs form; unpacks it on first use.

        The diff_id (sha256 of the uncompressed tar) is checked while unpacking.
        """
        from pykvm.container.image.layer import apply_layer

        final = self.layers_dir / check_digest(diff_id).split(":", 1)[1]
        if final.exists():
            return str(final)
        if not self.has_blob(descriptor["digest"]):
            raise ContainerError(f"layer {descriptor['digest']} is missing from the store {self.layout} "
                                 "(pull or load the image again)")
        work = self.temp_dir(prefix="unpack-")
        with open(self.blob_path(descriptor["digest"]), "rb") as blob:
            reader = UncompressedHasher(blob)
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
    return (entry.get("annotations") or {}).get(REF_NAME)


def _kept_annotations(descriptor: dict) -> dict:
    """The annotations a new tag of this descriptor keeps: where a registry knows it from."""
    annotations = descriptor.get("annotations") or {}
    return {REPO_DIGEST: annotations[REPO_DIGEST]} if REPO_DIGEST in annotations else {}


# image-index.md "platform": GOARCH names for the machines Python reports (uname -m).
MACHINE_ARCH = {"x86_64": ("amd64", ""), "aarch64": ("arm64", "v8"), "armv7l": ("arm", "v7"), "i686": ("386", "")}


def host_platform() -> tuple[str, str, str]:
    """(os, architecture, variant) of this machine, as an image index names it."""
    import platform
    arch, variant = MACHINE_ARCH.get(platform.machine(), (platform.machine(), ""))
    return "linux", arch, variant


def parse_platform(text: str) -> tuple[str, str, str]:
    """--platform OS/ARCH[/VARIANT] (docker's syntax): "linux/arm64" -> ("linux", "arm64", "")."""
    parts = text.split("/")
    if not 2 <= len(parts) <= 3 or not all(parts):
        raise ConfigError(f"--platform {text!r}: want OS/ARCH[/VARIANT], as in linux/arm64")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else ""


def pick_platform(index: dict, os_name: str = "linux", arch: str = "amd64", variant: str = "") -> dict:
    """image-index.md: the manifest descriptor for a platform; a variant, when asked for,
    must match unless the index gives none (arm64's v8 is usually left out)."""
    for m in index.get("manifests", []):
        p = m.get("platform", {})
        if p.get("os") == os_name and p.get("architecture") == arch \
                and (not variant or p.get("variant", variant) == variant):
            return m
    offered = sorted("/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)
                     for p in (m.get("platform", {}) for m in index.get("manifests", [])))
    want = "/".join(x for x in (os_name, arch, variant) if x)
    raise ContainerError(f"the image index has no {want} manifest (it has: {', '.join(offered) or 'none'})")


def file_digest(path: str) -> tuple[str, int]:
    """sha256 digest and size of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


class UncompressedHasher:
    """A file-like over a (possibly compressed) layer blob that hashes the uncompressed bytes read."""

    def __init__(self, blob):
        from pykvm.container.image.layer import decompressed
        self.stream = decompressed(blob)
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
