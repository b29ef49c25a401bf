"""Split virtqueue: the rings a driver and a device share in guest memory.

Spec: virtio 1.2, section 2.7 "Split Virtqueues" (https://docs.oasis-open.org/virtio/virtio/v1.2/).

    descriptor table (2.7.5)        available ring (2.7.6)        used ring (2.7.8)
    16 bytes per entry, align 16    written by the driver         written by the device
    +------+-----+-------+------+   +-------+-----+---------+     +-------+-----+-------------+
    | addr | len | flags | next |   | flags | idx | ring[N] |     | flags | idx | ring[N]     |
    +------+-----+-------+------+   +-------+-----+---------+     +-------+-----+-------------+
    | u64  | u32 | u16   | u16  |     u16    u16   u16 each         u16    u16   {u32 id,
      ...  N entries                  + u16 used_event (2.7.10)                  u32 len} each
                                                                       + u16 avail_event (2.7.10)

The driver puts a request in descriptors (device-readable ones first, then
device-writable ones, linked by `next`), writes the first one's index into
avail.ring[avail.idx % N] and bumps avail.idx.  The device takes it, does the
work, writes {head, bytes written} into used.ring[used.idx % N] and bumps
used.idx.  Both indexes run freely modulo 2^16.

The guest's CPU reads the used ring while the device writes it, so every
index the device publishes (used.idx, avail_event) is one aligned 16-bit
store through a typed view of guest memory (`memoryview.cast("H")`), never
struct.pack_into: pack_into first fills its destination with zeros and then
writes the value (CPython's s_pack_internal), and a driver that reads used.idx
in between sees 0, takes that for "the device has used every entry up to
here" and reads entries the device never wrote.  Linux then finds a head it
does not have out ("output.0:id 2 is not a head!") and stops the queue for good.

A store then a load of another index is the one order x86 does not keep:
the device's load may happen before its store is seen.  Where the device
publishes an index and then reads one the driver publishes (avail_event then
avail.idx, before it sleeps; used.idx then used_event, before it decides on
an interrupt), a full barrier (`full_fence`, mfence) stands between them, as
in QEMU's virtio.c and Firecracker's queue.rs; the driver has its own
(Linux's virtio_mb).  Without it both sides can miss the other's update: the
device sleeps waiting for a kick the driver thought unneeded, and a driver
that waits by polling (Linux's virtio-console output does) spins for good.

Every value here was written by the guest, so nothing is trusted: the ring
areas are checked against guest memory once when the queue is set up, every
descriptor's buffer is checked to lie inside one RAM region (address +
length, in Python integers: no wrap-around), a chain takes at most as many
steps through a table as the table has entries (so a loop is caught), and an
indirect table (2.7.5.3) never holds another indirect descriptor.  A broken
chain raises VirtqueueError; the transport then marks the device
DEVICE_NEEDS_RESET (2.1.2) instead of stopping the VMM.

read_chain() is that walk in Python, to be read.  pop() runs the same walk in
C (chain.c's virtq_read_chain, `walk_in_c`), because a 1 MiB disk read is
254 descriptors and Python's few microseconds each add up to more than the
read itself.  When the C walk refuses a chain, read_chain() walks it again and
names what is wrong; the unit tests run both on the same hostile rings.
"""
from __future__ import annotations

import struct
import sys
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from functools import cached_property
from itertools import accumulate, chain
from operator import itemgetter

from pykvm.errors import PyKvmError
from pykvm.vm.kvm.bindings import ffi, lib

__all__ = ["SplitQueue", "DescriptorChain", "PackedChain", "VirtqueueError", "MAX_QUEUE_SIZE",
           "VIRTQ_DESC_F_NEXT", "VIRTQ_DESC_F_WRITE", "VIRTQ_DESC_F_INDIRECT",
           "VIRTQ_AVAIL_F_NO_INTERRUPT", "DESC", "vring_need_event", "ring_sizes", "slice_buffers",
           "last_byte", "read_buffers", "write_buffers"]

# 2.7.5 The Virtqueue Descriptor Table
DESC = struct.Struct("<QIHH")          # addr, len, flags, next: 16 bytes
VIRTQ_DESC_F_NEXT = 1                  # the chain continues at `next`
VIRTQ_DESC_F_WRITE = 2                 # device-writable (otherwise device-readable)
VIRTQ_DESC_F_INDIRECT = 4              # the buffer is a table of descriptors (2.7.5.3)
# 2.7.6 The Virtqueue Available Ring
VIRTQ_AVAIL_F_NO_INTERRUPT = 1         # the driver asks for no interrupt (without EVENT_IDX)
# 2.7.8 The Virtqueue Used Ring
USED_ELEM = struct.Struct("<II")       # id (head index), len (bytes written into the chain)
PIECE = struct.Struct("<QQ")           # chain.c's struct virtq_piece: one buffer, address + length

MAX_QUEUE_SIZE = 32768                 # 2.7: Queue Size is at most 32768, a power of 2
DESC_ALIGN, AVAIL_ALIGN, USED_ALIGN = 16, 2, 4   # 2.7 table "Virtqueue Part Alignment"
RING_HEADER = 4                        # flags + idx, in front of either ring
# Where the u16 fields are, counted in u16 words of either ring (2.7.6, 2.7.8, 2.7.10):
RING_FLAGS, RING_IDX, AVAIL_RING = 0, 1, 2   # avail.ring[i] is word 2 + i
# The typed views below use the host's byte order; virtio 1.x rings are little-endian (2.4).
assert sys.byteorder == "little", "pykvm's virtqueues assume a little-endian host (x86)"


class VirtqueueError(PyKvmError):
    """The driver broke the ring's rules; the device stops using the queue until a reset."""


def ring_sizes(size: int) -> tuple[int, int, int]:
    """Bytes of the descriptor table, available ring and used ring for a queue of `size`."""
    return DESC.size * size, RING_HEADER + 2 * size + 2, RING_HEADER + USED_ELEM.size * size + 2


def vring_need_event(event: int, new: int, old: int) -> bool:
    """2.7.10: has the index passed `event` in the step from `old` to `new`?  (all mod 2^16)"""
    return (new - event - 1) & 0xFFFF < (new - old) & 0xFFFF


@dataclass
class DescriptorChain:
    """One request: its head index and its buffers, device-readable first (2.7.4.2)."""

    head: int
    readable: list[tuple[int, int]] = field(default_factory=list)   # (guest address, length)
    writable: list[tuple[int, int]] = field(default_factory=list)
    # The same buffers as chain.c's struct virtq_piece[], readable ones first: the C walk's
    # own output, or packed on first use (packed_buffers).
    packed: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def readable_length(self) -> int:
        return sum(map(itemgetter(1), self.readable))

    @property
    def writable_length(self) -> int:
        return sum(map(itemgetter(1), self.writable))

    def last_writable_byte(self) -> int:
        """The guest address of the device-writable stream's last byte (there is one)."""
        return last_byte(self.writable)

    def read_readable(self, memory, length: int) -> bytes:
        """The first `length` bytes of the device-readable stream (a request's header)."""
        return read_buffers(memory, self.readable, 0, length)

    def packed_buffers(self, writable: bool) -> bytes:
        """One kind's buffers as struct virtq_piece[], for GuestMemory.rw_vectored."""
        if self.packed is None:
            pieces = self.readable + self.writable
            self.packed = struct.pack(f"<{2 * len(pieces)}Q", *chain.from_iterable(pieces))
        cut = PIECE.size * len(self.readable)
        return self.packed[cut:] if writable else self.packed[:cut]

    def buffers(self) -> tuple[int, list[tuple[int, int]], list[tuple[int, int]]]:
        """(head, readable, writable): what two walks of one chain must agree on."""
        return self.head, self.readable, self.writable


class PackedChain(DescriptorChain):
    """A chain as the C walk left it: its buffers packed (readable ones first), the lengths
    and the last writable byte worked out in C.  The (address, length) lists are made
    only when a device asks for them; virtio-blk's reads and writes never do, so a 1 MiB
    read's 254 buffers never become 254 tuples."""

    def __init__(self, head: int, packed: bytes, info):
        self.head, self.packed = head, packed
        self._cut = PIECE.size * info.readable
        self._readable_length, self._writable_length = info.readable_length, info.writable_length
        self._last_writable_byte = info.last_writable_byte

    @cached_property
    def readable(self) -> list[tuple[int, int]]:
        return list(PIECE.iter_unpack(self.packed[:self._cut]))

    @cached_property
    def writable(self) -> list[tuple[int, int]]:
        return list(PIECE.iter_unpack(self.packed[self._cut:]))

    @property
    def readable_length(self) -> int:
        return self._readable_length

    @property
    def writable_length(self) -> int:
        return self._writable_length

    def read_readable(self, memory, length: int) -> bytes:
        if self._cut:                   # the first buffer nearly always holds the whole header
            address, size = PIECE.unpack_from(self.packed)
            if size >= length:
                return memory.read(address, length)
        return super().read_readable(memory, length)

    def last_writable_byte(self) -> int:
        if not self._writable_length:
            raise ValueError("no bytes in the buffers")
        return self._last_writable_byte

    def packed_buffers(self, writable: bool) -> bytes:
        return self.packed[self._cut:] if writable else self.packed[:self._cut]


class SplitQueue:
    """One split virtqueue of `size` entries whose three parts the driver placed in `memory`.

    `event_idx`: VIRTIO_F_RING_EVENT_IDX was negotiated (2.7.10);
    `indirect`: VIRTIO_F_INDIRECT_DESC was negotiated (2.7.5.3).
    """

    walk_in_c = True     # pop() walks chains in C; False: with read_chain, in Python

    def __init__(self, memory, size: int, desc: int, avail: int, used: int, *,
                 event_idx: bool = False, indirect: bool = False):
        if not 0 < size <= MAX_QUEUE_SIZE or size & (size - 1):
            raise VirtqueueError(f"queue size {size} is not a power of 2 from 1 to {MAX_QUEUE_SIZE}")
        self.memory, self.size = memory, size
        self.event_idx, self.indirect = event_idx, indirect
        desc_bytes, avail_bytes, used_bytes = ring_sizes(size)
        self._desc = _ring_view(memory, "descriptor table", desc, desc_bytes, DESC_ALIGN)
        self._avail = _ring_view(memory, "available ring", avail, avail_bytes, AVAIL_ALIGN)
        self._used = _ring_view(memory, "used ring", used, used_bytes, USED_ALIGN)
        self._avail16 = self._avail.cast("H")   # the same bytes as u16 words: single loads
        self._used16 = self._used.cast("H")     # and single stores of each index
        self._used_event = AVAIL_RING + size                        # word after avail.ring
        self._avail_event = (RING_HEADER + USED_ELEM.size * size) // 2   # word after used.ring
        # For the C walk: the table as C structs, and room for a chain's buffers (at most
        # `size` steps in the queue's table, then `size` in an indirect one).
        self._c_table = ffi.from_buffer("struct virtq_desc[]", self._desc)
        self._c_pieces = ffi.new("struct virtq_piece[]", 2 * size)
        self._c_info = ffi.new("struct virtq_chain_info *")
        self.last_avail = 0          # the next available-ring slot the device reads
        self.used_idx = 0            # the next used-ring slot the device writes
        self._signalled = 0          # used_idx when the driver was last considered for an interrupt

    # --- the available ring: requests in
    def avail_idx(self) -> int:
        return self._avail16[RING_IDX]

    def has_available(self) -> bool:
        return self.avail_idx() != self.last_avail

    def pop(self) -> DescriptorChain | None:
        """The next request the driver made available, or None.  VirtqueueError if it is broken."""
        avail_idx = self.avail_idx()
        pending = (avail_idx - self.last_avail) & 0xFFFF
        if pending == 0:
            return None
        if pending > self.size:
            raise VirtqueueError(f"avail.idx {avail_idx} is {pending} ahead of the device: "
                                 f"more than the queue's {self.size} entries")
        head = self._avail16[AVAIL_RING + self.last_avail % self.size]
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        chain = self.read_chain_in_c(head) if self.walk_in_c else None
        return chain if chain is not None else self.read_chain(head)

    def read_chain_in_c(self, head: int) -> PackedChain | None:
        """read_chain(head), walked by chain.c's virtq_read_chain: the same checks and the
        same joined buffers, with no Python per descriptor.  None if the chain breaks a
        rule (read_chain then says which)."""
        regions = self.memory.c_regions()
        count = lib.virtq_read_chain(regions, len(regions), self._c_table, self.size, head,
                                     self.indirect, self._c_pieces, len(self._c_pieces), self._c_info)
        if count < 0:
            return None
        return PackedChain(head, ffi.buffer(self._c_pieces, PIECE.size * count)[:], self._c_info)

    def read_chain(self, head: int) -> DescriptorChain:
        """Follow the chain from descriptor `head`, checking every step (2.7.5, 2.7.5.3).

        2.7.5.3.1: a chain is at most the queue's size long, and so is an
        indirect table; counting the steps through each table against its
        number of entries catches loops.  (The descriptor that points to an
        indirect table is not one of the chain's buffers: a table of the
        queue's size is allowed, and Linux's virtio-blk sends one when a
        request has seg_max segments.)

        Each buffer must lie in guest RAM, device-readable ones first
        (2.7.4.2).  A buffer that starts where the previous one ends joins
        it: a device sees one stream either way, and Linux's pages are often
        adjacent, so a 1 MiB request of 256 pages can be a few pieces, not
        256.  This loop runs for every descriptor of every request, so it
        keeps the RAM region of the last buffer at hand ([low, high)) and
        looks one up only when a buffer is not in it."""
        chain = DescriptorChain(head)
        buffers = chain.readable
        table, entries, index, steps = None, self.size, head, 0
        low = high = 0
        while steps < entries:
            if index >= entries:
                raise VirtqueueError(f"descriptor index {index} outside a table of {entries}")
            if table is None:       # the queue's own table, in guest memory: read entry by entry
                address, length, flags, next_index = DESC.unpack_from(self._desc, DESC.size * index)
            else:                   # an indirect table, copied and unpacked at once
                address, length, flags, next_index = table[index]
            if flags & VIRTQ_DESC_F_INDIRECT:
                table = self._indirect_table(address, length, flags, nested=table is not None)
                entries, index, steps = len(table), 0, 0
                continue
            if not (low <= address and address + length <= high):    # another region, or none
                region = self.memory.region_of(address, length)
                if region is not None:
                    low, high = region.guest_addr, region.guest_addr + region.size
                elif length:
                    raise VirtqueueError(f"buffer at {address:#x} (+{length:#x}) is outside guest memory")
            if flags & VIRTQ_DESC_F_WRITE:
                buffers = chain.writable
            elif chain.writable:
                raise VirtqueueError("device-readable descriptor after a device-writable one")
            last_address, last_length = buffers[-1] if buffers else (-1, 0)
            if length and last_address >= low and last_address + last_length == address:
                buffers[-1] = (last_address, last_length + length)      # joined, inside one region
            else:
                buffers.append((address, length))
            if not flags & VIRTQ_DESC_F_NEXT:
                return chain
            index, steps = next_index, steps + 1
        raise VirtqueueError(f"descriptor chain from {head} is longer than its table "
                             f"({entries} entries): a loop, or a chain too long")

    def _indirect_table(self, address: int, length: int, flags: int, nested: bool) -> list[tuple]:
        """The entries of the indirect table a descriptor points to, unpacked from a copy (the
        driver cannot change them under us), after the checks of 2.7.5.3.1."""
        if not self.indirect:
            raise VirtqueueError("indirect descriptor, but VIRTIO_F_INDIRECT_DESC was not negotiated")
        if nested:
            raise VirtqueueError("indirect descriptor inside an indirect table")
        if flags & VIRTQ_DESC_F_NEXT:
            raise VirtqueueError("indirect descriptor with VIRTQ_DESC_F_NEXT set")
        if length == 0 or length % DESC.size or length // DESC.size > self.size:
            raise VirtqueueError(f"indirect table of {length} bytes: not a whole number of "
                                 f"1 to {self.size} descriptors")
        if not self.memory.contains(address, length):
            raise VirtqueueError(f"indirect table at {address:#x} (+{length:#x}) is outside guest memory")
        return list(DESC.iter_unpack(self.memory.read(address, length)))

    # --- the used ring: answers out
    def push(self, head: int, written: int) -> None:
        """Return chain `head` to the driver, saying `written` bytes were written into it (2.7.8)."""
        slot = RING_HEADER + USED_ELEM.size * (self.used_idx % self.size)
        self._used[slot:slot + USED_ELEM.size] = USED_ELEM.pack(head, written)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        # After the element (x86 keeps store order), in one store: the driver may read it now.
        self._used16[RING_IDX] = self.used_idx

    def needs_interrupt(self) -> bool:
        """Does the driver want an interrupt for what was pushed since the last call?  (2.7.7, 2.7.10)"""
        old, new = self._signalled, self.used_idx
        self._signalled = new
        if old == new:
            return False
        lib.full_fence()            # used.idx (stored by push) is seen before used_event is read
        if self.event_idx:
            return vring_need_event(self._avail16[self._used_event], new, old)
        return not self._avail16[RING_FLAGS] & VIRTQ_AVAIL_F_NO_INTERRUPT

    def want_notifications(self) -> bool:
        """With EVENT_IDX, ask for a kick at the next request (avail_event, 2.7.10).

        True if requests arrived meanwhile (the device must look again before
        it sleeps, or it would wait for a kick the driver will not send)."""
        if self.event_idx:
            self._used16[self._avail_event] = self.last_avail
            lib.full_fence()        # avail_event is seen before avail.idx is read again
        return self.has_available()

    def rewind(self, count: int) -> None:
        """Give back the last `count` chains popped, unused: pop() returns them again.  For a
        device that took buffers one by one and found too few (virtio-net's mergeable
        receive buffers; QEMU's virtqueue_unpop)."""
        self.last_avail = (self.last_avail - count) & 0xFFFF

    def want_more_buffers(self) -> bool:
        """The device has work but too few buffers: with EVENT_IDX, ask for a kick as soon as
        the driver adds any (avail_event = the avail.idx seen now, 2.7.10; without it the
        driver kicks at every buffer anyway).  True if buffers arrived meanwhile: look again."""
        seen = self.avail_idx()
        if self.event_idx:
            self._used16[self._avail_event] = seen
            lib.full_fence()
        return self.avail_idx() != seen

    # --- snapshots: the device's side of the rings (the rings themselves are guest memory)
    def get_state(self) -> dict:
        """The indexes the device keeps to itself: where it reads next, where it writes next, and
        what the driver was last considered for an interrupt at (2.7.10)."""
        return {"last_avail": self.last_avail, "used_idx": self.used_idx, "signalled": self._signalled}

    def set_state(self, state: dict) -> None:
        """Back to `state` (a snapshot's table: each index is checked to be a 16-bit one)."""
        values = {name: int(state[name]) for name in ("last_avail", "used_idx", "signalled")}
        for name, value in values.items():
            if not 0 <= value <= 0xFFFF:
                raise ValueError(f"queue index {name} {value} is not a 16-bit ring index")
        self.last_avail, self.used_idx, self._signalled = (
            values["last_avail"], values["used_idx"], values["signalled"])

    def release(self) -> None:
        """Give back the views of guest memory (at reset, and before guest memory is unmapped)."""
        ffi.release(self._c_table)
        for view in (self._avail16, self._used16, self._desc, self._avail, self._used):
            view.release()


def slice_buffers(buffers: list[tuple[int, int]], start: int, length: int) -> list[tuple[int, int]]:
    """The (address, length) pieces of bytes [start, start+length) of a chain's buffers, seen as
    one stream: 2.7.4.2 lets the driver split a request across descriptors any way it likes.

    The stream position after each buffer (a running sum) is sorted, so the first and the
    last buffer of the slice are found by binary search, and the buffers between them are
    taken whole: a 1 MiB read of 256 pages is one list slice, not 256 steps of Python."""
    ends = list(accumulate(map(itemgetter(1), buffers)))   # the stream position after each
    end = min(start + length, ends[-1]) if ends else 0
    if start >= end:
        return []
    first = bisect_right(ends, start)             # the buffer holding byte `start`
    last = bisect_left(ends, end)                 # ... and the one holding byte end-1
    pieces = buffers[first:last + 1]
    if len(pieces) > 2 and not all(map(itemgetter(1), pieces)):
        pieces = [pieces[0], *(piece for piece in pieces[1:-1] if piece[1]), pieces[-1]]
    address, size = pieces[-1]                    # cut the last piece at `end` ...
    pieces[-1] = (address, size - (ends[last] - end))
    address, size = pieces[0]                     # ... and the first at `start`
    skip = start - (ends[first] - buffers[first][1])
    pieces[0] = (address + skip, size - skip)
    return pieces


def last_byte(buffers: list[tuple[int, int]]) -> int:
    """The guest address of the last byte of a chain's buffers (they hold at least one)."""
    for address, size in reversed(buffers):
        if size:
            return address + size - 1
    raise ValueError("no bytes in the buffers")


def read_buffers(memory, buffers: list[tuple[int, int]], start: int, length: int) -> bytes:
    """Bytes [start, start+length) of a chain's device-readable stream."""
    return b"".join(memory.read(a, n) for a, n in slice_buffers(buffers, start, length))


def write_buffers(memory, buffers: list[tuple[int, int]], start: int, data: bytes) -> None:
    """Write `data` at byte `start` of a chain's device-writable stream."""
    done = 0
    for address, size in slice_buffers(buffers, start, len(data)):
        memory.write(address, data[done:done + size])
        done += size


def _ring_view(memory, what: str, address: int, length: int, align: int) -> memoryview:
    if address % align:
        raise VirtqueueError(f"{what} at {address:#x} is not {align}-byte aligned")
    if not memory.contains(address, length):
        raise VirtqueueError(f"{what} at {address:#x} (+{length:#x}) is outside guest memory")
    return memory.view(address, length)
