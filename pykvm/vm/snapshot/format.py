"""The snapshot directory: a JSON header, one file per part, guest memory as a sparse file.

    DIR/
      snapshot.json          the header: format, version, the guest, the host CPU facts,
                             and every part with its size, the KVM call that read it, its sha256
      memory.bin             guest RAM, its regions one after another; zero pages are holes
      vm/pic-master.bin      KVM_GET_IRQCHIP (chip 0)     vm/pit.bin    KVM_GET_PIT2
      vm/pic-slave.bin       KVM_GET_IRQCHIP (chip 1)     vm/clock.bin  KVM_GET_CLOCK
      vm/ioapic.bin          KVM_GET_IRQCHIP (chip 2)
      vcpu0/regs.bin ...     one directory per vCPU (pykvm.vm.snapshot.state lists its parts)
      devices/serial.json    one file per device: its get_state(), as JSON

A `.bin` part is a KVM structure byte for byte, as the ioctl filled it; a
`.json` part is a table pykvm made (MSRs, MP state, device registers).
Nothing is trusted on the way back in: the header's version must be one this
pykvm reads, and every part (memory too) must have the size and sha256 the
header names, before any of it reaches KVM.

Writing is atomic: a snapshot is written into a sibling directory and renamed
into place, so a reader never sees half a snapshot, and a VM restored from
DIR keeps its copy-on-write mapping of the old memory.bin while a new
snapshot replaces it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from pykvm.errors import SnapshotError

__all__ = ["SnapshotWriter", "Snapshot", "FORMAT", "VERSION", "HEADER", "MEMORY", "check_target"]

FORMAT = "pykvm-snapshot"       # the header's "format": what this directory is
VERSION = 2                     # the header's "version": bumped when any part's meaning changes
                                # (2: several vCPUs, virtio devices; a version-1 snapshot has neither)
HEADER = "snapshot.json"
MEMORY = "memory.bin"
PAGE = 4096                     # a page: the unit of holes in memory.bin and of its hash
CHUNK = 1 << 20                 # memory is scanned for zeros a megabyte at a time
ZERO_PAGE = bytes(PAGE)
ZERO_CHUNK = bytes(CHUNK)


def check_target(directory: Path) -> None:
    """Refuse a --snapshot-dir that holds something other than a snapshot: nothing is lost."""
    if directory.exists() and (not directory.is_dir() or
                               (any(directory.iterdir()) and not (directory / HEADER).exists())):
        raise SnapshotError(f"{directory}: exists and is not a snapshot directory; "
                            "name a new directory or an old snapshot to replace")


# --- guest memory: sparse writes, a hash of the non-zero pages ----------------

def _hash_page(hasher, index: int, page) -> None:
    """A page enters the memory hash with its number; zero pages do not enter it at all,
    so the hash is the same whether a zero page is a hole or written zeros."""
    hasher.update(index.to_bytes(8, "little"))
    hasher.update(page)


def write_sparse(fd: int, buffer, file_offset: int, hasher) -> int:
    """Write the non-zero pages of `buffer` at `file_offset`, skipping zero pages (holes).
    Returns how many pages were written.

    Each chunk is copied into a bytes object first: bytes compare with memcmp, while a
    memoryview of the mapping compares byte by byte in Python's C code (a 1 MiB chunk of
    zeros took 5 ms that way: most of a second for a 256 MiB guest).  A run of non-zero
    pages goes out in one pwrite: a Linux guest has tens of thousands of them."""
    view, written = memoryview(buffer), 0
    for chunk_at in range(0, len(view), CHUNK):
        chunk = bytes(view[chunk_at:chunk_at + CHUNK])
        if chunk == ZERO_CHUNK[:len(chunk)]:
            continue
        run_at = None                       # where the current run of non-zero pages began
        for page_at in range(0, len(chunk) + PAGE, PAGE):
            page = chunk[page_at:page_at + PAGE]
            if page and page != ZERO_PAGE:
                _hash_page(hasher, (file_offset + chunk_at + page_at) // PAGE, page)
                written += 1
                run_at = page_at if run_at is None else run_at
            elif run_at is not None:
                os.pwrite(fd, memoryview(chunk)[run_at:page_at], file_offset + chunk_at + run_at)
                run_at = None
    view.release()
    return written


def _data_extents(fd: int, size: int):
    """(start, end) of each run of data in the file (SEEK_DATA / SEEK_HOLE, lseek(2))."""
    position = 0
    while position < size:
        try:
            start = os.lseek(fd, position, os.SEEK_DATA)
        except OSError:             # ENXIO: no data after `position`
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        position = end


def hash_sparse(fd: int, size: int) -> str:
    """The memory hash of a memory file: its non-zero pages, read only where there is data."""
    hasher = hashlib.sha256()
    for start, end in _data_extents(fd, size):
        start -= start % PAGE
        for at in range(start, end, CHUNK):
            chunk = os.pread(fd, min(CHUNK, end - at), at)
            for page_at in range(0, len(chunk), PAGE):
                page = chunk[page_at:page_at + PAGE]
                if page != ZERO_PAGE[:len(page)]:
                    _hash_page(hasher, (at + page_at) // PAGE, page)
    return hasher.hexdigest()


# --- writing ------------------------------------------------------------------------

class SnapshotWriter:
    """Collects the parts of one snapshot in a sibling directory; commit() puts it at `directory`."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._partial = self.directory.with_name(f".{self.directory.name}.partial-{os.getpid()}")
        shutil.rmtree(self._partial, ignore_errors=True)
        self._partial.mkdir(parents=True)
        self.parts: dict[str, dict] = {}

    def add(self, name: str, data: bytes, source: str) -> None:
        """One part: `data` in file `name`, read by `source` (the KVM call or the device)."""
        path = self._partial / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.parts[name] = {"source": source, "size": len(data),
                            "sha256": hashlib.sha256(data).hexdigest()}

    def add_json(self, name: str, value, source: str) -> None:
        """A part that is a table: written as indented JSON, readable and diffable."""
        self.add(name, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode(), source)

    def add_memory(self, memory) -> dict:
        """Guest RAM into MEMORY, regions back to back, zero pages left as holes."""
        hasher, regions, offset, written = hashlib.sha256(), [], 0, 0
        fd = os.open(self._partial / MEMORY, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for region in memory.regions:
                written += write_sparse(fd, region.buffer, offset, hasher)
                regions.append({"guest_address": region.guest_addr, "size": region.size,
                                "file_offset": offset})
                offset += region.size
            os.ftruncate(fd, offset)
        finally:
            os.close(fd)
        return {"file": MEMORY, "size": offset, "regions": regions, "pages_written": written,
                "sha256_nonzero_pages": hasher.hexdigest()}

    def commit(self, header: dict) -> None:
        """Write the header last, then swap the finished directory in for any old snapshot."""
        header = {"format": FORMAT, "version": VERSION,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  **header, "parts": self.parts}
        (self._partial / HEADER).write_text(json.dumps(header, indent=1) + "\n")
        old = self.directory.with_name(f".{self.directory.name}.old-{os.getpid()}")
        if self.directory.exists():
            os.rename(self.directory, old)
        os.rename(self._partial, self.directory)
        shutil.rmtree(old, ignore_errors=True)

    def abandon(self) -> None:
        shutil.rmtree(self._partial, ignore_errors=True)


# --- reading --------------------------------------------------------------------------

class Snapshot:
    """A snapshot directory opened for reading.  open() checks the header; verify() every byte."""

    def __init__(self, directory: Path, header: dict):
        self.directory = directory
        self.header = header
        self._checked: dict[str, bytes] = {}    # parts read and checked once: verify, then restore

    @classmethod
    def open(cls, directory) -> Snapshot:
        """Read and check the header: a snapshot, of a version this pykvm reads."""
        directory = Path(directory)
        try:
            header = json.loads((directory / HEADER).read_text())
        except FileNotFoundError:
            raise SnapshotError(f"{directory}: no {HEADER}: not a snapshot directory") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SnapshotError(f"{directory / HEADER}: unreadable header ({e})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise SnapshotError(f"{directory / HEADER}: not a {FORMAT} header")
        version = header.get("version")
        if not isinstance(version, int) or version > VERSION:
            raise SnapshotError(f"{directory}: snapshot format version {version} is newer than this "
                                f"pykvm reads (version {VERSION}); restore it with a newer pykvm")
        for key in ("guest", "host", "memory", "parts"):
            if not isinstance(header.get(key), dict):
                raise SnapshotError(f"{directory / HEADER}: no \"{key}\" section: a damaged header")
        memory = header["guest"].get("memory")
        if not isinstance(memory, int) or memory <= 0 or memory % PAGE:
            raise SnapshotError(f"{directory / HEADER}: guest memory {memory!r} is not a whole number of pages")
        vcpus = header["guest"].get("vcpus", 1)
        if not isinstance(vcpus, int) or isinstance(vcpus, bool) or vcpus < 1:
            raise SnapshotError(f"{directory / HEADER}: {vcpus!r} vCPUs: a damaged header")
        if not all(isinstance(entry, dict) for entry in header["parts"].values()):
            raise SnapshotError(f"{directory / HEADER}: a part without its size and sha256: a damaged header")
        return cls(directory, header)

    @property
    def memory_size(self) -> int:
        return self.header["guest"]["memory"]

    @property
    def vcpu_count(self) -> int:
        return self.header["guest"].get("vcpus", 1)

    def part_names(self) -> list[str]:
        return list(self.header["parts"])

    def part(self, name: str) -> bytes:
        """A part's bytes, checked against the header's size and sha256 (read once)."""
        if name in self._checked:
            return self._checked[name]
        entry = self.header["parts"].get(name)
        if entry is None:
            raise SnapshotError(f"{self.directory}: the header lists no part {name}: a damaged snapshot")
        path = self._inside(name)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise SnapshotError(f"{path}: cannot read ({e.strerror}): a damaged snapshot") from None
        if len(data) != entry.get("size"):
            raise SnapshotError(f"{path}: {len(data)} bytes, the header says {entry.get('size')}: "
                                "a truncated or damaged snapshot")
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise SnapshotError(f"{path}: sha256 differs from the header's: the part was changed "
                                "after the snapshot was written")
        self._checked[name] = data
        return data

    def json_part(self, name: str):
        try:
            return json.loads(self.part(name))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SnapshotError(f"{self.directory / name}: not JSON ({e})") from None

    def _inside(self, name: str) -> Path:
        """A part's path; a name that climbs out of the directory is refused."""
        path = (self.directory / name).resolve()
        if self.directory.resolve() not in path.parents:
            raise SnapshotError(f"{self.directory / HEADER}: part {name!r} lies outside the snapshot")
        return path

    def open_memory(self) -> int:
        """An fd of memory.bin after checking its size and page hash; the caller closes it."""
        memory = self.header["memory"]
        path = self._inside(memory.get("file", MEMORY))
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise SnapshotError(f"{path}: cannot open ({e.strerror})") from None
        try:
            size = os.fstat(fd).st_size
            if size != memory.get("size") or size != self.memory_size:
                raise SnapshotError(f"{path}: {size} bytes, the header says {memory.get('size')}: "
                                    "a truncated or damaged snapshot")
            if hash_sparse(fd, size) != memory.get("sha256_nonzero_pages"):
                raise SnapshotError(f"{path}: guest memory differs from what the header's sha256 "
                                    "says: changed after the snapshot was written")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def verify_parts(self) -> None:
        """Check every part but memory.bin (open_memory() checks that)."""
        for name in self.part_names():
            self.part(name)
