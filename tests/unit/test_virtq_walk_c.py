"""The descriptor-chain walk in C (chain.c) against the one in Python (queue.py).

SplitQueue.pop() walks chains with chain.c's virtq_read_chain; read_chain is the
same walk in Python, the one to read.  Here both walk the same rings, thousands
of them, built at random to break every rule of virtio 1.2 2.7.5 and 2.7.5.3:
indexes outside the table, loops, indirect tables that are nested, chained on,
empty, too long or outside RAM, buffers outside RAM or across the hole below
4 GiB, readable buffers after writable ones, lengths that would wrap.  For each
ring the two must give the same chain (the same buffers, joined the same way),
or both refuse it.  Then GuestMemory.rw_vectored, the C preadv/pwritev that
virtio-blk moves data with, is checked against the image file.
"""
from __future__ import annotations

import os
import random
import struct
from collections import Counter

import pytest

from pykvm.vm import layout
from pykvm.vm.devices.virtio.queue import (DESC, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT,
                                          VIRTQ_DESC_F_WRITE, DescriptorChain, SplitQueue,
                                          VirtqueueError)
from pykvm.vm.memory import GuestMemory

SIZE = 16
TABLE, AVAIL, USED = 0x10000, 0x20000, 0x30000
HIGH_RAM = 8 << 20                     # RAM above 4 GiB: two regions, with the hole between
LOW_END = layout.MMIO_GAP_START        # where the first region ends
HIGH_END = layout.MMIO_GAP_END + HIGH_RAM
INDIRECT_TABLES = [0x40000, 0x41003, LOW_END - 2 * DESC.size, layout.MMIO_GAP_END + 0x8000]
PAGES = [0x100000 + 0x1000 * i for i in range(8)]       # adjacent pages: buffers that join
NEXT, WRITE, INDIRECT = VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT


@pytest.fixture(scope="module")
def memory():
    m = GuestMemory(LOW_END + HIGH_RAM)       # untouched RAM costs address space only
    assert len(m.regions) == 2
    yield m
    m.close()


@pytest.fixture
def queue(memory):
    q = SplitQueue(memory, SIZE, TABLE, AVAIL, USED, indirect=True)
    yield q
    q.release()


def an_address(rng: random.Random) -> int:
    if rng.random() < 0.85:
        return rng.choice(PAGES) + rng.choice([0, 0, 0, 512, 4095])
    return rng.choice([
        rng.choice(PAGES), rng.choice(PAGES) + rng.choice([512, 4095]),
        LOW_END - rng.choice([1, 16, 0x1000]), LOW_END, layout.MMIO_GAP_END - 16,
        layout.MMIO_GAP_END, HIGH_END - rng.choice([1, 0x1000]), HIGH_END,
        (1 << 64) - rng.choice([1, 0x1000]), rng.randrange(1 << 64), rng.randrange(HIGH_END)])


def a_length(rng: random.Random) -> int:
    if rng.random() < 0.05:
        return rng.choice([0xFFFFFFFF, rng.randrange(1 << 32)])
    return rng.choice([0, 1, 16, 512, 0x1000, 0x1000, 0x1000, 0x2000])


def a_descriptor(rng: random.Random, index: int, entries: int, indirect_address: bool,
                 first_writable: int) -> bytes:
    """Entry `index` of a table of `entries`; from `first_writable` on mostly device-writable."""
    flags = 0
    if rng.random() < 0.85:
        flags |= NEXT
    if (index >= first_writable) != (rng.random() < 0.05):
        flags |= WRITE
    if rng.random() < 0.08:
        flags |= INDIRECT
    if rng.random() < 0.03:
        flags |= rng.randrange(1 << 16)
    nxt = index + 1 if rng.random() < 0.8 else rng.choice([rng.randrange(entries), entries,
                                                           rng.randrange(1 << 16)])
    if flags & INDIRECT and indirect_address:
        address = rng.choice(INDIRECT_TABLES)
        length = DESC.size * rng.choice([1, 2, 5, SIZE, SIZE + 1]) + rng.choice([0] * 8 + [1, 8])
    else:
        address, length = an_address(rng), a_length(rng)
    return DESC.pack(address, length, flags, nxt & 0xFFFF)


def write_ring(memory, rng: random.Random) -> None:
    """A random queue table, and random indirect tables where descriptors may point."""
    split = rng.randrange(SIZE + 1)
    memory.write(TABLE, b"".join(a_descriptor(rng, i, SIZE, True, split) for i in range(SIZE)))
    for table in INDIRECT_TABLES:
        room = min(SIZE + 1, (LOW_END - table) // DESC.size) if table < LOW_END else SIZE + 1
        split = rng.randrange(room + 1)
        memory.write(table, b"".join(a_descriptor(rng, i, room, rng.random() < 0.1, split)
                                     for i in range(room)))


# How read_chain words each rule a chain can break: the rings below must break them all.
RULES = ["outside a table", "buffer at", "with VIRTQ_DESC_F_NEXT set", "after a device-writable",
         "was not negotiated", "longer than its table", "not a whole number",
         "inside an indirect table", "indirect table at"]


def walk_in_python(queue: SplitQueue, head: int, broken: Counter):
    try:
        return queue.read_chain(head)
    except VirtqueueError as e:
        broken.update(rule for rule in RULES if rule in str(e))
        return None


def same_chain(got, expected, memory=None) -> bool:
    """The C walk's chain and the Python walk's are the same chain: the same buffers, their
    lengths, the last writable byte, the packed form and the first readable bytes; or both
    walks refused it."""
    if got is None or expected is None:
        return got is expected
    if memory is not None and expected.readable_length >= 16:
        if got.read_readable(memory, 16) != expected.read_readable(memory, 16):
            return False
    lengths = (expected.readable_length, expected.writable_length)
    last = expected.last_writable_byte() if expected.writable_length else None
    return (got.buffers() == expected.buffers()
            and (got.readable_length, got.writable_length) == lengths
            and (got.last_writable_byte() if got.writable_length else None) == last
            and all(got.packed_buffers(w) == expected.packed_buffers(w) for w in (False, True)))


def test_the_c_walk_gives_the_python_walks_answer_on_hostile_rings(memory, queue):
    rng = random.Random(2718)
    outcomes, broken = Counter(), Counter()
    for case in range(6000):
        write_ring(memory, rng)
        queue.indirect = rng.random() < 0.8
        head = rng.randrange(SIZE) if rng.random() < 0.95 else rng.randrange(1 << 16)
        expected, got = walk_in_python(queue, head, broken), queue.read_chain_in_c(head)
        assert same_chain(got, expected, memory), f"case {case}, head {head}"
        if expected is None:
            outcomes["refused"] += 1
        else:
            outcomes["accepted"] += 1
            pieces = expected.readable + expected.writable
            outcomes["joined"] += any(length > 0x1000 for _, length in pieces if length != 0xFFFFFFFF)
            outcomes["both kinds"] += bool(expected.readable and expected.writable)
    # The rings must have exercised both answers, and the joins, for the comparison to mean much.
    assert outcomes["refused"] > 1000 and outcomes["accepted"] > 1000, outcomes
    assert outcomes["joined"] > 100 and outcomes["both kinds"] > 100, outcomes
    assert all(broken[rule] for rule in RULES), broken


def test_a_linux_sized_request_through_an_indirect_table(memory, queue):
    """Header, 254 scattered pages, status: Linux's 1 MiB read.  Same chain either way."""
    rng = random.Random(5)
    pages = rng.sample(range(0x200, 0x2000), 254)
    queue_size = 256
    big = SplitQueue(memory, queue_size, 0x50000, 0x60000, 0x70000, indirect=True)
    entries = [DESC.pack(0x3000, 16, NEXT, 1)]
    entries += [DESC.pack(page << 12, 0x1000, WRITE | NEXT, i + 2) for i, page in enumerate(pages)]
    entries.append(DESC.pack(0x3100, 1, WRITE, 0))
    memory.write(0x80000, b"".join(entries))
    memory.write(0x50000, DESC.pack(0x80000, DESC.size * queue_size, INDIRECT, 0))
    chain = big.read_chain_in_c(0)
    assert same_chain(chain, big.read_chain(0))
    assert chain.readable == [(0x3000, 16)] and chain.writable[-1] == (0x3100, 1)
    assert chain.writable_length == 254 * 0x1000 + 1
    big.release()


def test_a_loop_and_a_table_overrun_are_refused_by_both(memory, queue):
    memory.write(TABLE, DESC.pack(PAGES[0], 16, NEXT, 1) + DESC.pack(PAGES[1], 16, NEXT, 0))
    assert queue.read_chain_in_c(0) is None
    with pytest.raises(VirtqueueError, match="longer than its table"):
        queue.read_chain(0)
    memory.write(TABLE, DESC.pack(PAGES[0], 16, NEXT, SIZE))
    assert queue.read_chain_in_c(0) is None
    with pytest.raises(VirtqueueError, match="outside a table"):
        queue.read_chain(0)


def test_pop_names_what_the_c_walk_refused(memory, queue):
    """pop() walks in C; for a chain C refuses, the error is the Python walk's, with details."""
    memory.write(TABLE, DESC.pack(LOW_END - 8, 16, 0, 0))
    memory.write(AVAIL + 4, struct.pack("<H", 0))
    memory.write(AVAIL + 2, struct.pack("<H", 1))
    with pytest.raises(VirtqueueError, match=f"buffer at {LOW_END - 8:#x} .* outside guest memory"):
        queue.pop()


def test_pop_walks_in_c_unless_told_not_to(memory, queue, monkeypatch):
    calls = Counter()
    real = SplitQueue.read_chain_in_c
    monkeypatch.setattr(SplitQueue, "read_chain_in_c",
                        lambda self, head: calls.update(["c"]) or real(self, head))
    memory.write(TABLE, DESC.pack(PAGES[0], 16, 0, 0))
    for avail_idx, walk_in_c in ((1, True), (2, False)):
        queue.walk_in_c = walk_in_c
        memory.write(AVAIL + 2, struct.pack("<H", avail_idx))
        memory.write(AVAIL + 4 + 2 * (avail_idx - 1), struct.pack("<H", 0))
        assert queue.pop().readable == [(PAGES[0], 16)]
    assert calls["c"] == 1


# --- GuestMemory.rw_vectored: the C preadv/pwritev
def packed(pieces) -> bytes:
    return DescriptorChain(0, pieces).packed_buffers(writable=False)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(random.Random(9).randbytes(1 << 20))
    fd = os.open(path, os.O_RDWR)
    yield path, fd
    os.close(fd)


def test_rw_vectored_reads_into_pieces_in_both_regions(memory, image):
    path, fd = image
    pieces = [(PAGES[3] + 7, 100), (layout.MMIO_GAP_END + 0x100, 5000), (PAGES[0], 1)]
    assert memory.rw_vectored(fd, packed(pieces), 4096, 0, 5101) == 5101
    data = path.read_bytes()[4096:4096 + 5101]
    got = b"".join(memory.read(address, length) for address, length in pieces)
    assert got == data


@pytest.mark.parametrize("skip,length", [(0, 10), (16, 600), (100, 5000), (99, 1), (5100, 1),
                                         (0, 0), (2000, 3101)])
def test_rw_vectored_moves_a_slice_of_the_stream(memory, image, skip, length):
    """Bytes [skip, skip+length) of the pieces' stream are read, the pieces around them are
    not touched: what slice_buffers cuts in Python."""
    path, fd = image
    pieces = [(PAGES[3] + 7, 100), (PAGES[5], 0), (layout.MMIO_GAP_END + 0x100, 5000), (PAGES[0], 1)]
    for address, size in pieces:
        memory.write(address, b"\xee" * size)
    assert memory.rw_vectored(fd, packed(pieces), 0, skip, length) == length
    stream = b"".join(memory.read(address, size) for address, size in pieces)
    expected = b"\xee" * skip + path.read_bytes()[:length] + b"\xee" * (5101 - skip - length)
    assert stream == expected


def test_rw_vectored_writes_and_reads_more_pieces_than_one_call_takes(memory, image):
    path, fd = image
    pieces = [(0x100000 + 0x20 * i, 16) for i in range(3000)]      # 3 batches of iovecs
    payload = random.Random(3).randbytes(16 * 3000)
    for i, (address, _) in enumerate(pieces):
        memory.write(address, payload[16 * i:16 * i + 16])
    assert memory.rw_vectored(fd, packed(pieces), 512, 8, len(payload) - 8, write=True) == len(payload) - 8
    assert path.read_bytes()[512:512 + len(payload) - 8] == payload[8:]


def test_rw_vectored_stops_short_at_the_end_of_the_file_or_of_the_pieces(memory, image):
    _, fd = image
    pieces = packed([(PAGES[0], 4096), (PAGES[2], 4096)])
    assert memory.rw_vectored(fd, pieces, (1 << 20) - 100, 0, 8192) == 100
    assert memory.rw_vectored(fd, pieces, 0, 4000, 8192) == 4192


@pytest.mark.parametrize("piece", [(LOW_END - 10, 11), (LOW_END, 1), (HIGH_END - 1, 2),
                                   ((1 << 64) - 1, 2), (layout.MMIO_GAP_END - 1, 1)])
def test_rw_vectored_refuses_a_piece_outside_guest_ram(memory, image, piece):
    _, fd = image
    before = memory.read(PAGES[0], 64)
    with pytest.raises(OSError) as e:
        memory.rw_vectored(fd, packed([(PAGES[0], 64), piece]), 0, 0, 64 + piece[1])
    assert e.value.errno == 14                                      # EFAULT, nothing read
    assert memory.read(PAGES[0], 64) == before


def test_rw_vectored_reports_the_files_error(memory):
    with pytest.raises(OSError) as e:
        memory.rw_vectored(-1, packed([(PAGES[0], 16)]), 0, 0, 16)
    assert e.value.errno == 9                                       # EBADF


def test_the_c_walks_packed_buffers_are_the_chains_buffers(memory, queue):
    memory.write(TABLE, DESC.pack(PAGES[0], 16, NEXT, 1) + DESC.pack(PAGES[1], 16, NEXT | WRITE, 2)
                 + DESC.pack(PAGES[4], 1, WRITE, 0))
    from_c = queue.read_chain_in_c(0)
    from_python = queue.read_chain(0)
    assert from_python.packed is None and from_c.packed is not None
    for writable in (False, True):
        assert from_c.packed_buffers(writable) == from_python.packed_buffers(writable)
