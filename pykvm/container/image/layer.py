"""OCI image layers: changesets as tar archives, whiteouts, and safe extraction.

OCI image spec, layer.md ("Image Layer Filesystem Changeset"): a layer is a tar
archive of the files that a step added or changed, plus *whiteouts* for what
it deleted:

    .wh.NAME        NAME (in the same directory) was deleted          (layer.md "Whiteouts")
    .wh..wh..opq    this directory is *opaque*: hide everything the
                    lower layers had in it                             (layer.md "Opaque Whiteout")

Whiteouts only ever hide files of *lower* layers; a file added by the same
layer stays.  Stacking layers ("applying" them in order) gives the root
filesystem of a container.

Two ways to apply a layer, both here:

    flatten   every layer into one directory; whiteouts delete files there
    overlay   each layer into its own directory for overlayfs(5): `.wh.NAME`
              becomes a character device 0:0 named NAME, an opaque directory
              gets the xattr trusted.overlay.opaque="y" (what containerd's
              overlay snapshotter does)

Extraction never writes outside the root, whatever the archive says.  A tar
member name is read as a path inside the root, like a chroot would:
`../../etc/passwd` and `/etc/passwd` both mean `<root>/etc/passwd`.  Every
directory on the way is resolved with `secure_join`, which follows symlinks
but clamps them to the root, so a symlink `evil -> /etc` made by one layer
and a file `evil/passwd` in the next land in `<root>/etc/passwd`.  Hard links
may only name files inside the root; device nodes need `allow_devices`.

Layers written here are deterministic: entries sorted, mtimes fixed
(SOURCE_DATE_EPOCH or 0), no user/group names, gzip without a timestamp, so
the same files give the same digests on every build.
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import posixpath
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass, field

from pykvm.errors import ContainerError

__all__ = [
    "WHITEOUT_PREFIX",
    "OPAQUE_WHITEOUT",
    "layer_mtime",
    "clean_member_name",
    "secure_join",
    "apply_layer",
    "Change",
    "snapshot",
    "changes_since",
    "write_layer",
    "LayerDigests",
]

WHITEOUT_PREFIX = ".wh."               # layer.md "Whiteouts": .wh.NAME deletes NAME
WHITEOUT_META_PREFIX = ".wh..wh."      # reserved names (aufs), never real files
OPAQUE_WHITEOUT = ".wh..wh..opq"       # layer.md "Opaque Whiteout"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"  # overlayfs(5): opaque directory marker
COPY_CHUNK = 1 << 20                    # bytes per read when copying file data
GZIP_LEVEL = 6                          # gzip's default; fixed so digests are reproducible


def layer_mtime() -> int:
    """The mtime stamped on every entry of a layer we write (reproducible-builds.org SOURCE_DATE_EPOCH)."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "0")
    try:
        return max(0, int(value))
    except ValueError:
        raise ContainerError(f"SOURCE_DATE_EPOCH must be an integer, not {value!r}") from None


# --- paths inside a root ----------------------------------------------------

def clean_member_name(name: str) -> str:
    """A tar member name as a path relative to the root: `/a/../../b` -> `b`, `./` -> ``."""
    return posixpath.normpath("/" + name).lstrip("/")


def secure_join(root: str, unsafe: str, follow_last: bool = True) -> str:
    """`root/unsafe`, resolving symlinks as if `root` were `/` (a chroot), never leaving it.

    The runtime's resolver (pykvm.container.runtime.rootfs.secure_join, after runc's
    and umoci's filepath-securejoin): a symlink is expanded in place, an
    absolute target restarts at the root, `..` never climbs above it, missing
    components are kept.  With follow_last=False the final component is not
    expanded (to create, replace or delete that entry itself).
    """
    from pykvm.container.runtime.rootfs import secure_join as resolve

    try:
        if follow_last:
            return resolve(root, unsafe)
        parent, base = posixpath.split(posixpath.normpath("/" + unsafe))
        return os.path.join(resolve(root, parent), base) if base else resolve(root, parent)
    except NotADirectoryError:
        raise ContainerError(f"{unsafe}: a component of this path is not a directory") from None


def _remove(path: str) -> None:
    """Delete one entry without following it: a directory with its contents, anything else unlinked."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


# --- applying a layer ---------------------------------------------------------

@dataclass
class _Extraction:
    """The state of one layer being applied to one root."""

    root: str
    overlay: bool
    allow_devices: bool
    added: set[str] = field(default_factory=set)         # names this layer created (whiteouts skip them)
    dir_times: list[tuple[str, int]] = field(default_factory=list)
    owners: dict[str, tuple[int, int]] | None = None      # when not root: path -> (uid, gid) we could not set


def apply_layer(fileobj, root: str, *, overlay: bool = False, allow_devices: bool | None = None,
                owners: dict[str, tuple[int, int]] | None = None) -> None:
    """Apply the layer tar (plain or gzip, detected) read from `fileobj` to directory `root`.

    overlay=False applies whiteouts by deleting; overlay=True writes overlayfs
    whiteouts (needs root).  Device nodes are refused unless allow_devices
    (default: running as root).  `owners`, when given, receives the uid/gid of
    entries whose ownership could not be set (not root).
    """
    if allow_devices is None:
        allow_devices = os.geteuid() == 0
    state = _Extraction(os.path.realpath(root), overlay, allow_devices, owners=owners)
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for member in tar:
                _apply_member(state, tar, member)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ContainerError(f"corrupt layer archive: {e}") from None
    except OSError as e:
        raise ContainerError(f"cannot apply layer to {root}: {e}") from None
    for path, mtime in reversed(state.dir_times):
        os.utime(path, (mtime, mtime), follow_symlinks=False)


def _apply_member(state: _Extraction, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    name = clean_member_name(member.name)
    if not name:
        return                                      # the root itself: keep ours
    parent_name, base = posixpath.split(name)
    if base == OPAQUE_WHITEOUT:
        _opaque(state, parent_name)
    elif base.startswith(WHITEOUT_META_PREFIX):
        return                                      # aufs bookkeeping (.wh..wh.plnk ...): never content
    elif base.startswith(WHITEOUT_PREFIX):
        _whiteout(state, parent_name, base[len(WHITEOUT_PREFIX):])
    else:
        _create(state, tar, member, parent_name, base)


def _opaque(state: _Extraction, dir_name: str) -> None:
    """layer.md "Opaque Whiteout": hide the lower layers' children of dir_name."""
    path = secure_join(state.root, dir_name)
    if not os.path.isdir(path) or os.path.islink(path):
        os.makedirs(path, exist_ok=True)
    if state.overlay:
        os.setxattr(path, OVERLAY_OPAQUE_XATTR, b"y", follow_symlinks=False)
        return
    for entry in os.listdir(path):
        child = os.path.join(path, entry)
        if child not in state.added:
            _remove(child)


def _whiteout(state: _Extraction, dir_name: str, victim: str) -> None:
    """layer.md "Whiteouts": `.wh.victim` deletes victim from the lower layers."""
    if victim in ("", ".", "..") or "/" in victim:
        raise ContainerError(f"invalid whiteout {WHITEOUT_PREFIX}{victim!r} in {dir_name or '/'}")
    parent = secure_join(state.root, dir_name)
    path = os.path.join(parent, victim)
    if path in state.added:
        return                                      # same-layer files are never hidden by it
    if state.overlay:
        os.makedirs(parent, exist_ok=True)
        _remove(path)
        try:
            os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        except PermissionError:
            raise ContainerError("unpacking an image for overlayfs needs root "
                                 "(its whiteouts are 0:0 character devices)") from None
        return
    _remove(path)


def _create(state: _Extraction, tar, member: tarfile.TarInfo, parent_name: str, base: str) -> None:
    parent = secure_join(state.root, parent_name)
    _make_parents(state.root, parent)
    path = os.path.join(parent, base)
    if member.isdir():
        if not (os.path.isdir(path) and not os.path.islink(path)):
            _remove(path)
            os.mkdir(path, 0o700)
    else:
        _remove(path)
        _create_nondir(state, tar, member, path)
    state.added.add(path)
    _set_attributes(state, member, path)


def _make_parents(root: str, parent: str) -> None:
    """Create the missing directories of `parent` (already resolved inside root)."""
    if os.path.isdir(parent):
        return
    rel = os.path.relpath(parent, root)
    here = root
    for part in rel.split(os.sep):
        here = os.path.join(here, part)
        if os.path.lexists(here) and not os.path.isdir(here):
            raise ContainerError(f"layer puts a file under {os.path.relpath(here, root)}, which is not a directory")
        if not os.path.lexists(here):
            os.mkdir(here, 0o755)


def _create_nondir(state: _Extraction, tar, member: tarfile.TarInfo, path: str) -> None:
    if member.isreg():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(tar.extractfile(member), out, COPY_CHUNK)
    elif member.issym():
        os.symlink(member.linkname, path)
    elif member.islnk():
        _hardlink(state, member, path)
    elif member.ischr() or member.isblk():
        if not state.allow_devices:
            raise ContainerError(f"layer has device node {member.name!r}; device nodes are refused here")
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
        os.mknod(path, kind | 0o600, os.makedev(member.devmajor, member.devminor))
    elif member.isfifo():
        os.mkfifo(path, 0o600)
    else:
        raise ContainerError(f"layer entry {member.name!r} has unsupported tar type {member.type!r}")


def _hardlink(state: _Extraction, member: tarfile.TarInfo, path: str) -> None:
    """A hard link to an entry that must already exist inside the root."""
    target = secure_join(state.root, clean_member_name(member.linkname), follow_last=False)
    try:
        os.link(target, path, follow_symlinks=False)
    except FileNotFoundError:
        raise ContainerError(f"layer entry {member.name!r} links to {member.linkname!r}, "
                             "which is not in the image") from None
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        raise ContainerError(f"hard link {member.name!r} -> {member.linkname!r} crosses filesystems") from None


def _set_attributes(state: _Extraction, member: tarfile.TarInfo, path: str) -> None:
    try:
        os.lchown(path, member.uid, member.gid)
    except PermissionError:
        if state.owners is not None:
            state.owners[path] = (member.uid, member.gid)
    if not member.issym():
        os.chmod(path, member.mode & 0o7777)
    if member.isdir():
        state.dir_times.append((path, int(member.mtime)))
    else:
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)


# --- what changed: snapshots of a directory tree ---------------------------------

Signature = tuple  # (mode, uid, gid, size, mtime_ns, ctime_ns, ino, dev)


def _signature(st: os.stat_result) -> Signature:
    return (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def snapshot(root: str, skip: frozenset[str] = frozenset()) -> dict[str, Signature]:
    """Every path under root (relative, '/'-separated) -> its stat signature.  `skip`: top-level names left out."""
    result: dict[str, Signature] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(root, rel)) as it:
            for entry in it:
                name = f"{rel}/{entry.name}" if rel else entry.name
                if not rel and entry.name in skip:
                    continue
                st = entry.stat(follow_symlinks=False)
                result[name] = _signature(st)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(name)
    return result


@dataclass(frozen=True, order=True)
class Change:
    """One entry of a changeset: `kind` is "add" (new or modified), "delete" or "opaque" (a directory replaced)."""

    path: str
    kind: str


def changes_since(before: dict[str, Signature], root: str, skip: frozenset[str] = frozenset()) -> list[Change]:
    """What happened to `root` since `before` was taken: the content of one layer.

    A path is changed when any of its stat fields moved (ctime catches every
    write, chmod and chown).  A directory whose inode changed was deleted and
    made again: it becomes opaque, with all of its contents added.
    """
    after = snapshot(root, skip)
    out: list[Change] = []
    replaced: list[str] = []
    for path, sig in after.items():
        old = before.get(path)
        if old == sig:
            continue
        if old is not None and stat.S_ISDIR(sig[0]) and stat.S_ISDIR(old[0]) and old[6:] != sig[6:]:
            replaced.append(path)
            out.append(Change(path, "opaque"))
        out.append(Change(path, "add"))
    for path in before:
        if path in after:
            continue  # still there (a type change is an "add" that replaces it)
        parent = posixpath.dirname(path)
        if parent and (parent not in after or parent in replaced
                       or not stat.S_ISDIR(after[parent][0])):
            continue  # the parent went, was replaced or is no directory now: that covers it
        out.append(Change(path, "delete"))
    return sorted(out)


# --- writing a layer -------------------------------------------------------------

@dataclass(frozen=True)
class LayerDigests:
    """What the image spec records about a layer: digest and size of the gzip blob, and the diff_id."""

    digest: str      # sha256 of the compressed blob (the manifest's layer descriptor)
    size: int
    diff_id: str     # sha256 of the uncompressed tar (config.json rootfs.diff_ids)


class _HashingWriter(io.RawIOBase):
    """Passes bytes on to `sink` while hashing and counting them."""

    def __init__(self, sink):
        self.sink = sink
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self):
        return True

    def write(self, data):
        self.hash.update(data)
        self.size += len(data)
        if self.sink is not None:
            self.sink.write(data)
        return len(data)


def write_layer(root: str, changes: list[Change], out, *,
                owners: dict[str, tuple[int, int]] | None = None) -> LayerDigests:
    """Write the changeset as a deterministic gzip'd tar to `out`; return its digests.

    Entries are in sorted path order; every mtime is layer_mtime(); owners
    come from the files (or from `owners`, keyed by absolute path, when we
    could not chown them); user and group names are left empty.
    """
    blob = _HashingWriter(out)
    mtime = layer_mtime()
    with gzip.GzipFile(filename="", mode="wb", fileobj=blob, mtime=0, compresslevel=GZIP_LEVEL) as gz:
        tar_stream = _HashingWriter(gz)
        with tarfile.open(fileobj=tar_stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            seen_inodes: dict[tuple[int, int], str] = {}
            for change in changes:
                _write_change(tar, root, change, mtime, owners or {}, seen_inodes)
    return LayerDigests("sha256:" + blob.hash.hexdigest(), blob.size,
                        "sha256:" + tar_stream.hash.hexdigest())


def _write_change(tar, root, change: Change, mtime: int, owners, seen_inodes) -> None:
    parent, base = posixpath.split(change.path)
    if change.kind == "delete":
        tar.addfile(_marker(posixpath.join(parent, WHITEOUT_PREFIX + base), mtime))
        return
    if change.kind == "opaque":
        tar.addfile(_marker(posixpath.join(change.path, OPAQUE_WHITEOUT), mtime))
        return
    path = os.path.join(root, change.path)
    st = os.lstat(path)
    if stat.S_ISSOCK(st.st_mode):
        return                      # a socket left by a RUN step is not content (docker skips them too)
    info = tarfile.TarInfo(change.path)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = owners.get(path, (st.st_uid, st.st_gid))
    info.uname = info.gname = ""
    info.mtime = mtime
    key = (st.st_dev, st.st_ino)
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and key in seen_inodes:
        info.type, info.linkname = tarfile.LNKTYPE, seen_inodes[key]
        tar.addfile(info)
        return
    if stat.S_ISREG(st.st_mode):
        seen_inodes.setdefault(key, change.path)
        info.size = st.st_size
        with open(path, "rb") as f:
            tar.addfile(info, f)
        return
    _describe_special(info, path, st)
    tar.addfile(info)


def _describe_special(info: tarfile.TarInfo, path: str, st: os.stat_result) -> None:
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif stat.S_ISFIFO(mode):
        info.type = tarfile.FIFOTYPE
    else:
        raise ContainerError(f"cannot put {path} in a layer: unknown file type {stat.S_IFMT(mode):o}")


def _marker(name: str, mtime: int) -> tarfile.TarInfo:
    """An empty regular file: the form of both whiteout kinds."""
    info = tarfile.TarInfo(name)
    info.mode, info.mtime, info.uname, info.gname = 0o644, mtime, "", ""
    return info
