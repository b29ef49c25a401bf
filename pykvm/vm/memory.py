"""GuestMemory: the guest's RAM, as mmap'd host memory that KVM maps into the guest.

The guest's physical address space is backed by anonymous mmaps in our own
process; KVM_SET_USER_MEMORY_REGION tells KVM which of our bytes are which
guest-physical addresses.  Below 4 GiB, RAM stops at MMIO_GAP_START so that
device windows have room; what does not fit continues at 4 GiB.

The anonymous memory is mapped MAP_PRIVATE from /dev/zero (ZERO_FILE), the way
Unix gave out zeroed memory before MAP_ANONYMOUS: the kernel makes such a
mapping anonymous memory all the same (a zeroed page on first touch), but
/proc/PID/maps names it /dev/zero.  So a tool tells guest RAM from the
interpreter's own memory by name, and the mapping never merges with a
neighbouring anonymous one (a mapping of a file merges only with the same
file at the next offset).  A restored guest's RAM is named by its snapshot's
memory.bin instead.

Fresh RAM starts on a 2 MiB boundary and is marked MADV_HUGEPAGE, as QEMU does
with its guest RAM (util/oslib-posix.c: "Use 2 MiB alignment so transparent
hugepages can be used by KVM"; madvise in ram_block_add).  KVM maps a guest
page as large as the host's page behind it, but a 2 MiB guest page only where
the guest address and our address agree modulo 2 MiB (KVM's memslot check,
Documentation/virt/kvm/x86/mmu.rst, "large pages").  Otherwise each 4 KiB page
the guest touches first costs a nested page fault exit: about 29,000 of them in
a Linux boot to its shell, against some 60 with 2 MiB pages.  Where the kernel
places a large mapping on such a boundary itself, the alignment changes
nothing; older kernels (Linux 6.1) place it on any page.

Every access pykvm makes on the guest's behalf goes through read(), write() or
view(), which check that the whole range lies inside one region: a guest
cannot make pykvm touch memory that is not its own.
"""
from __future__ import annotations

import mmap
import os
from dataclasses import dataclass

from pykvm.vm import layout
from pykvm.errors import ConfigError, GuestMemoryError
from pykvm.sizes import format_size

__all__ = ["GuestMemory", "MemoryRegion", "MIN_MEMORY", "ZERO_FILE"]

MIN_MEMORY = 2 << 20         # 2 MiB: the low megabyte plus room for a kernel at 1 MiB
PAGE_SIZE = 4096
HUGE_PAGE = 2 << 20          # x86-64's 2 MiB page: where fresh guest RAM starts
ZERO_FILE = "/dev/zero"       # what guest RAM is mapped from, and is named by in /proc/PID/maps


@dataclass
class MemoryRegion:
    """One contiguous run of guest RAM: a KVM memory slot.  `buffer` is the region's bytes,
    a view into `mapping`, the mmap that holds them (and may be larger: see _zeroed_memory)."""

    slot: int
    guest_addr: int
    size: int
    buffer: memoryview
    mapping: mmap.mmap

    def host_address(self) -> int:
        """Where this region starts in our own address space (for KVM)."""
        from pykvm.vm.kvm.bindings import ffi

        if "_keepalive" not in self.__dict__:      # one pointer for the region's whole life
            self._keepalive = ffi.from_buffer(self.buffer)
        return int(ffi.cast("uintptr_t", self._keepalive))


class GuestMemory:
    """All of a guest's RAM.  `size` bytes, split around the MMIO gap below 4 GiB."""

    def __init__(self, size: int, backing_fd: int | None = None):
        """`size` bytes of zeroed RAM; or, with `backing_fd`, RAM mapped copy-on-write from a
        file holding the regions back to back (a snapshot's memory.bin, pykvm.vm.snapshot)."""
        if size < MIN_MEMORY:
            raise ConfigError(f"guest memory {format_size(size)} is too small (at least {format_size(MIN_MEMORY)})")
        if size % PAGE_SIZE:
            raise ConfigError(f"guest memory must be a multiple of 4 KiB, not {size} bytes")
        self.size = size
        self.regions: list[MemoryRegion] = []
        self._backing_fd = backing_fd
        self._c_regions = None       # the regions as C sees them: c_regions()
        low = min(size, layout.MMIO_GAP_START)
        self._add_region(0, low)
        if size > low:
            self._add_region(layout.MMIO_GAP_END, size - low)

    def _add_region(self, guest_addr: int, size: int) -> None:
        if self._backing_fd is None:
            # Anonymous memory is allocated on first touch: untouched guest pages cost nothing.
            mapping, buffer = _zeroed_memory(size)
        else:
            # MAP_PRIVATE: reads share the file's page cache with every other VM mapping it;
            # the first write to a page copies it for this VM alone (copy-on-write).
            offset = sum(r.size for r in self.regions)
            mapping = mmap.mmap(self._backing_fd, size, flags=mmap.MAP_PRIVATE,
                                prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)
            buffer = memoryview(mapping)
        self.regions.append(MemoryRegion(len(self.regions), guest_addr, size, buffer, mapping))

    def register(self, vm) -> None:
        """Give every region to KVM as a memory slot (KVM_SET_USER_MEMORY_REGION)."""
        for r in self.regions:
            vm.set_user_memory_region(r.slot, r.guest_addr, r.size, r.host_address())

    def ram_ranges(self) -> list[tuple[int, int]]:
        """(guest address, size) of each RAM region."""
        return [(r.guest_addr, r.size) for r in self.regions]

    def memory_map(self) -> list[tuple[int, int, int]]:
        """The E820 map derived from the regions: (address, size, type)."""
        return layout.memory_map(self.ram_ranges())

    def _locate(self, address: int, length: int, what: str) -> tuple[MemoryRegion, int]:
        """The region holding [address, address+length) and the offset into it, or GuestMemoryError."""
        region = self.region_of(address, length)
        if region is None:
            raise GuestMemoryError(address, length, what)
        return region, address - region.guest_addr

    def region_of(self, address: int, length: int) -> MemoryRegion | None:
        """The region holding all of [address, address+length), or None.  (Called for every
        buffer of every virtio request: a plain loop, no exceptions.)"""
        if address >= 0 and length >= 0:
            for r in self.regions:
                if r.guest_addr <= address and address + length <= r.guest_addr + r.size:
                    return r
        return None

    def contains(self, address: int, length: int = 1) -> bool:
        """True if [address, address+length) is wholly guest RAM."""
        return self.region_of(address, length) is not None

    def read(self, address: int, length: int) -> bytes:
        """Copy `length` bytes out of guest memory at `address` (bounds-checked)."""
        region, offset = self._locate(address, length, "read")
        return bytes(region.buffer[offset:offset + length])

    def write(self, address: int, data: bytes, what: str = "write") -> None:
        """Copy `data` into guest memory at `address` (bounds-checked)."""
        region, offset = self._locate(address, len(data), what)
        region.buffer[offset:offset + len(data)] = data

    def view(self, address: int, length: int) -> memoryview:
        """A writable view of guest memory (bounds-checked); release it when done."""
        region, offset = self._locate(address, length, "access")
        return region.buffer[offset:offset + length]

    def c_regions(self):
        """The regions as `struct guest_ram[]` (guest address, size, host pointer) for the C
        helpers of pykvm/vm/devices/virtio/chain.c, which check every guest address
        against it as region_of() does.  Made once; valid until close()."""
        if self._c_regions is None:
            from pykvm.vm.kvm.bindings import ffi

            table = ffi.new("struct guest_ram[]", len(self.regions))
            for entry, region in zip(table, self.regions):
                entry.guest_addr, entry.size = region.guest_addr, region.size
                entry.host = ffi.cast("unsigned char *", region.host_address())
            self._c_regions = table
        return self._c_regions

    def rw_vectored(self, fd: int, pieces: bytes, offset: int, skip: int, length: int,
                    write: bool = False) -> int:
        """preadv(2) (or pwritev) between file `fd` at `offset` and `length` bytes of the
        guest's `pieces` (chain.c's struct virtq_piece[]: DescriptorChain.packed_buffers)
        seen as one stream, from byte `skip` of it on: zero-copy, in one C call
        (chain.c's guest_rw_vectored), with no Python per piece.  Each piece is checked
        to be guest RAM.  The bytes moved; OSError if the call failed."""
        from pykvm.vm.kvm.bindings import ffi, lib

        c_pieces = ffi.from_buffer("struct virtq_piece[]", pieces)
        done = lib.guest_rw_vectored(self.c_regions(), len(self.regions), fd, offset,
                                     c_pieces, len(c_pieces), skip, length, int(write))
        if done < 0:
            raise OSError(-done, os.strerror(-done))
        return done

    def read_cstring(self, address: int, limit: int) -> bytes:
        """A NUL-terminated string of at most `limit` bytes, without the NUL."""
        region, offset = self._locate(address, 1, "read")
        end = min(region.size, offset + limit)
        data = bytes(region.buffer[offset:end])
        nul = data.find(b"\0")
        return data if nul < 0 else data[:nul]

    def close(self) -> None:
        self._c_regions = None
        for r in self.regions:
            r.__dict__.pop("_keepalive", None)
            try:
                r.buffer.release()
                r.mapping.close()
            except BufferError:
                pass
        self.regions.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _zeroed_memory(size: int) -> tuple[mmap.mmap, memoryview]:
    """(mapping, its `size` bytes starting on a 2 MiB boundary, marked MADV_HUGEPAGE): zeroed
    memory named ZERO_FILE in /proc/PID/maps (the module's docstring says why), plain
    MAP_ANONYMOUS where there is no /dev/zero to open.  Python's mmap cannot ask for an
    address, so the mapping is HUGE_PAGE larger and the view starts at its first boundary:
    the unused head and tail are address space only, never touched."""
    length = size + HUGE_PAGE
    try:
        fd = os.open(ZERO_FILE, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        mapping = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    else:
        try:
            mapping = mmap.mmap(fd, length, flags=mmap.MAP_PRIVATE)
        finally:
            os.close(fd)        # the mapping keeps what it needs
    start = -_address_of(mapping) % HUGE_PAGE
    try:
        mapping.madvise(mmap.MADV_HUGEPAGE, start, size)
    except OSError:
        pass                    # a kernel without transparent huge pages: 4 KiB pages it is
    return mapping, memoryview(mapping)[start:start + size]


def _address_of(buffer) -> int:
    """Where `buffer` starts in our address space."""
    from pykvm.vm.kvm.bindings import ffi

    return int(ffi.cast("uintptr_t", ffi.from_buffer(buffer)))
