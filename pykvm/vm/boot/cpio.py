"""A writer for "newc" cpio archives, the format of a Linux initramfs.

Spec: Documentation/driver-api/early-userspace/buffer-format.rst in the kernel
tree (and cpio(5), "New ASCII Format").  Each member is

    110-byte ASCII header  "070701" then 13 fields of 8 hex digits
    name                   NUL-terminated, padded so the data starts on 4 bytes
    data                   file contents or a symlink's target, padded to 4 bytes

and the archive ends with a member named "TRAILER!!!".  The kernel unpacks
the archive into its rootfs before running /init.

    writer = CpioWriter()
    writer.directory("dev")
    writer.device("dev/console", "c", 5, 1)
    writer.file("init", script, mode=0o755)
    archive = writer.finish()

`archive_tree(path)` packs a whole directory the same way.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from pykvm.errors import ConfigError

__all__ = ["CpioWriter", "archive_tree", "NEWC_MAGIC", "TRAILER"]

NEWC_MAGIC = b"070701"        # "new ASCII" format, no checksum
TRAILER = "TRAILER!!!"        # name of the last, empty member
HEADER_SIZE = 110             # 6 magic + 13 fields * 8 hex digits
ALIGN = 4                     # name and data are each padded to 4-byte boundaries

# File types, as in the st_mode bits of <sys/stat.h>.
S_IFDIR = stat.S_IFDIR
S_IFREG = stat.S_IFREG
S_IFLNK = stat.S_IFLNK
S_IFCHR = stat.S_IFCHR
S_IFBLK = stat.S_IFBLK
DEVICE_TYPES = {"c": S_IFCHR, "b": S_IFBLK}


def _pad(n: int) -> bytes:
    """Zero bytes that bring an offset of n up to the next multiple of 4."""
    return b"\0" * (-n % ALIGN)


class CpioWriter:
    """Builds a newc archive in memory, one member at a time.

    Every member is owned by root (uid 0, gid 0) with mtime 0 unless told
    otherwise, so the same tree always gives the same bytes.  Names are
    stored without a leading "/" ("dev/console"), as gen_init_cpio does.
    """

    def __init__(self, mtime: int = 0):
        self.mtime = mtime
        self._parts: list[bytes] = []
        self._offset = 0
        self._ino = 1
        self._names: set[str] = set()
        self._finished = False

    # -- members -------------------------------------------------------------
    def directory(self, name: str, mode: int = 0o755) -> None:
        """A directory (its parent must come first, as the kernel creates members in order)."""
        self._member(name, S_IFDIR | (mode & 0o7777), b"", nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """A regular file with these contents."""
        self._member(name, S_IFREG | (mode & 0o7777), bytes(data))

    def symlink(self, name: str, target: str) -> None:
        """A symbolic link; the link's target is stored as the member's data."""
        self._member(name, S_IFLNK | 0o777, os.fsencode(target))

    def device(self, name: str, kind: str, major: int, minor: int, mode: int = 0o600) -> None:
        """A device node: kind "c" (character) or "b" (block), e.g. dev/console c 5 1."""
        if kind not in DEVICE_TYPES:
            raise ConfigError(f"device kind must be 'c' or 'b', not {kind!r}")
        self._member(name, DEVICE_TYPES[kind] | (mode & 0o7777), b"", rdev=(major, minor))

    def __contains__(self, name: str) -> bool:
        return _clean(name) in self._names

    def finish(self) -> bytes:
        """Append the trailer and return the whole archive."""
        if not self._finished:
            self._emit(TRAILER, 0, b"", nlink=1, ino=0, rdev=(0, 0))
            self._finished = True
        return b"".join(self._parts)

    # -- encoding ------------------------------------------------------------
    def _member(self, name: str, mode: int, data: bytes, nlink: int = 1,
                rdev: tuple[int, int] = (0, 0)) -> None:
        if self._finished:
            raise ConfigError("cpio archive already finished")
        clean = _clean(name)
        if clean in self._names:
            raise ConfigError(f"cpio archive already has a member named {clean!r}")
        self._names.add(clean)
        self._emit(clean, mode, data, nlink=nlink, ino=self._ino, rdev=rdev)
        self._ino += 1

    def _emit(self, name: str, mode: int, data: bytes, nlink: int, ino: int,
              rdev: tuple[int, int]) -> None:
        encoded = os.fsencode(name) + b"\0"
        fields = (ino, mode, 0, 0, nlink, self.mtime, len(data),
                  0, 0,            # major/minor of the device holding the file: none
                  rdev[0], rdev[1],
                  len(encoded), 0)  # namesize (with the NUL), check (always 0 in newc)
        header = NEWC_MAGIC + b"".join(b"%08X" % f for f in fields)
        assert len(header) == HEADER_SIZE
        head = header + encoded
        self._write(head + _pad(self._offset + len(head)))
        if data:
            self._write(data + _pad(len(data)))

    def _write(self, chunk: bytes) -> None:
        self._parts.append(chunk)
        self._offset += len(chunk)


def _clean(name: str) -> str:
    """Archive names are relative ("dev/console"); reject ones that climb out of the root."""
    clean = name.strip("/")
    if not clean or ".." in clean.split("/"):
        raise ConfigError(f"bad name for an initramfs member: {name!r}")
    return clean


def archive_tree(root: str | os.PathLike, console: bool = True) -> bytes:
    """Pack the directory `root` into a newc archive, parents before children.

    Files, directories, symlinks and device nodes are kept with their
    permission bits; ownership becomes root's.  With `console`, dev/ and
    dev/console (c 5 1) are added when the tree lacks them: the kernel opens
    /dev/console for init's stdin/stdout before /init runs.
    """
    base = Path(root)
    if not base.is_dir():
        raise ConfigError(f"{base} is not a directory")
    writer = CpioWriter()
    for path in _walk(base):
        try:
            _add_path(writer, path, path.relative_to(base).as_posix())
        except OSError as e:            # unreadable, or a /proc file that refuses read()
            raise ConfigError(f"{path}: cannot archive: {e.strerror or e}") from None
    if console:
        if "dev" not in writer:
            writer.directory("dev")
        if "dev/console" not in writer:
            writer.device("dev/console", "c", 5, 1)
    return writer.finish()


def _walk(base: Path):
    """Every path under base, sorted, each directory before what it contains."""
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        here = Path(dirpath)
        entries = sorted(dirnames + filenames)
        for name in entries:
            yield here / name


def _add_path(writer: CpioWriter, path: Path, name: str) -> None:
    st = path.lstat()
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        writer.symlink(name, os.readlink(path))
    elif stat.S_ISDIR(st.st_mode):
        writer.directory(name, mode)
    elif stat.S_ISREG(st.st_mode):
        writer.file(name, path.read_bytes(), mode)
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        kind = "c" if stat.S_ISCHR(st.st_mode) else "b"
        writer.device(name, kind, os.major(st.st_rdev), os.minor(st.st_rdev), mode)
    else:
        raise ConfigError(f"{path}: sockets and FIFOs cannot go into an initramfs here")
