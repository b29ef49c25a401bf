"""A chain's buffers seen as one stream (virtio 1.2, 2.7.4.2): slice_buffers and last_byte
against a reference that walks the stream byte by byte."""
from __future__ import annotations

import random

import pytest

from pykvm.vm.devices.virtio.queue import last_byte, slice_buffers


def byte_addresses(buffers: list[tuple[int, int]]) -> list[int]:
    """The guest address of every byte of the stream, in order."""
    return [address + i for address, size in buffers for i in range(size)]


def random_buffers(rng: random.Random) -> list[tuple[int, int]]:
    return [(rng.randrange(0, 1 << 20), rng.choice([0, 1, 2, 7, 16, 100])) for _ in range(rng.randrange(1, 8))]


def test_slice_buffers_is_the_stream_byte_by_byte():
    rng = random.Random(7)
    for _ in range(2000):
        buffers = random_buffers(rng)
        total = sum(size for _, size in buffers)
        start = rng.randrange(0, total + 2)
        length = rng.randrange(0, total + 2)
        pieces = slice_buffers(buffers, start, length)
        assert byte_addresses(pieces) == byte_addresses(buffers)[start:start + length]
        assert all(size > 0 for _, size in pieces), pieces


def test_last_byte_skips_empty_buffers():
    assert last_byte([(0x1000, 16), (0x2000, 4), (0x3000, 0)]) == 0x2003
    rng = random.Random(8)
    for _ in range(500):
        buffers = random_buffers(rng)
        stream = byte_addresses(buffers)
        if stream:
            assert last_byte(buffers) == stream[-1]
        else:
            with pytest.raises(ValueError):
                last_byte(buffers)
