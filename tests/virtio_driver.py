"""A toy virtio driver for unit tests: it lays rings out by hand in a GuestMemory.

It speaks to a VirtioMmio transport only through register reads and writes,
as a guest's driver would (virtio 1.2, 3.1.1 and 4.2.3), and writes
descriptors, available-ring entries and requests into guest memory byte by
byte, so a test can write exactly the hostile ring it wants.
"""
from __future__ import annotations

import struct

from pykvm.vm.devices.virtio import mmio
from pykvm.vm.devices.virtio.device import VIRTIO_F_VERSION_1
from pykvm.vm.devices.virtio.mmio import VirtioMmio
from pykvm.vm.devices.virtio.queue import DESC, ring_sizes
from pykvm.vm.memory import GuestMemory

__all__ = ["ToyDriver", "RING_AREA", "DATA_AREA"]

MEMORY_SIZE = 4 << 20
RING_AREA = 0x10000            # queue n's rings at RING_AREA + n * RING_STRIDE
RING_STRIDE = 0x10000
DATA_AREA = 0x100000           # buffers for requests
LIVE = mmio.STATUS_ACKNOWLEDGE | mmio.STATUS_DRIVER | mmio.STATUS_FEATURES_OK | mmio.STATUS_DRIVER_OK


class ToyDriver:
    """Drives `device` through a VirtioMmio in a fresh 4 MiB GuestMemory."""

    def __init__(self, device, memory_size: int = MEMORY_SIZE):
        self.memory = GuestMemory(memory_size)
        self.interrupts = 0
        self.transport = VirtioMmio(device, self.memory, self._interrupt)
        self.device = device
        self.sizes: dict[int, int] = {}
        self.next_avail: dict[int, int] = {}

    def _interrupt(self) -> None:
        self.interrupts += 1

    # --- registers
    def read(self, offset: int) -> int:
        return self.transport.read(offset, 4)

    def write(self, offset: int, value: int) -> None:
        self.transport.write(offset, 4, value)

    @property
    def status(self) -> int:
        return self.read(mmio.STATUS)

    def negotiate(self, features: int | None = None) -> bool:
        """Reset, ACKNOWLEDGE, DRIVER, write `features` (default: all offered), FEATURES_OK;
        True if the device kept FEATURES_OK."""
        self.write(mmio.STATUS, 0)
        self.write(mmio.STATUS, mmio.STATUS_ACKNOWLEDGE | mmio.STATUS_DRIVER)
        if features is None:
            features = self.offered()
        for half in (0, 1):
            self.write(mmio.DRIVER_FEATURES_SEL, half)
            self.write(mmio.DRIVER_FEATURES, (features >> (32 * half)) & 0xFFFFFFFF)
        self.write(mmio.STATUS, self.status | mmio.STATUS_FEATURES_OK)
        return bool(self.status & mmio.STATUS_FEATURES_OK)

    def offered(self) -> int:
        features = 0
        for half in (0, 1):
            self.write(mmio.DEVICE_FEATURES_SEL, half)
            features |= self.read(mmio.DEVICE_FEATURES) << (32 * half)
        return features

    def rings(self, index: int) -> tuple[int, int, int]:
        """Where queue `index` keeps its descriptor table, available ring and used ring."""
        desc = RING_AREA + index * RING_STRIDE
        size = self.sizes.get(index, 8)
        desc_bytes, avail_bytes, _ = ring_sizes(size)
        avail = desc + desc_bytes
        used = (avail + avail_bytes + 3) & ~3
        return desc, avail, used

    def setup_queue(self, index: int, size: int = 8, where: tuple[int, int, int] | None = None) -> None:
        self.sizes[index] = size
        self.next_avail[index] = 0
        desc, avail, used = where or self.rings(index)
        self.write(mmio.QUEUE_SEL, index)
        self.write(mmio.QUEUE_NUM, size)
        for low, address in ((mmio.QUEUE_DESC_LOW, desc), (mmio.QUEUE_DRIVER_LOW, avail),
                             (mmio.QUEUE_DEVICE_LOW, used)):
            self.write(low, address & 0xFFFFFFFF)
            self.write(low + 4, address >> 32)
        self.write(mmio.QUEUE_READY, 1)

    def start(self, features: int | None = None, queues: int = 1, size: int = 8) -> None:
        """The whole of 3.1.1: negotiate, set up `queues` queues, DRIVER_OK."""
        assert self.negotiate(features), f"device refused features {features}"
        for index in range(queues):
            self.setup_queue(index, size)
        self.write(mmio.STATUS, self.status | mmio.STATUS_DRIVER_OK)
        assert self.status == LIVE, f"status {self.status:#x}"

    # --- rings
    def descriptor(self, queue: int, index: int, address: int, length: int, flags: int = 0,
                   next_index: int = 0, table: int | None = None) -> None:
        """Write descriptor `index` of queue `queue`'s table (or of an indirect table at `table`)."""
        base = self.rings(queue)[0] if table is None else table
        self.memory.write(base + DESC.size * index, DESC.pack(address, length, flags, next_index))

    def offer(self, queue: int, head: int, avail_idx: int | None = None) -> None:
        """Put `head` in the available ring and bump avail.idx (or set it to `avail_idx`)."""
        _, avail, _ = self.rings(queue)
        slot = self.next_avail[queue] % self.sizes[queue]
        self.memory.write(avail + 4 + 2 * slot, struct.pack("<H", head))
        self.next_avail[queue] = (self.next_avail[queue] + 1) & 0xFFFF
        idx = self.next_avail[queue] if avail_idx is None else avail_idx
        self.memory.write(avail + 2, struct.pack("<H", idx))

    def kick(self, queue: int) -> None:
        self.write(mmio.QUEUE_NOTIFY, queue)

    def used(self, queue: int) -> list[tuple[int, int]]:
        """Every (head, length) the device has put in the used ring, in order."""
        _, _, used = self.rings(queue)
        idx = struct.unpack("<H", self.memory.read(used + 2, 2))[0]
        size = self.sizes[queue]
        return [struct.unpack("<II", self.memory.read(used + 4 + 8 * (i % size), 8)) for i in range(idx)]

    def set_avail_u16(self, queue: int, offset: int, value: int) -> None:
        _, avail, _ = self.rings(queue)
        self.memory.write(avail + offset, struct.pack("<H", value))

    def used_u16(self, queue: int, offset: int) -> int:
        _, _, used = self.rings(queue)
        return struct.unpack("<H", self.memory.read(used + offset, 2))[0]

    def scramble(self, queue: int, rng) -> None:
        """Random bytes for queue `queue`'s descriptor table (addresses and lengths mostly
        inside RAM) and the head of its available ring: a hostile ring for fuzzing."""
        desc, avail, _ = self.rings(queue)
        entries = self.sizes[queue]
        table = bytearray(rng.randbytes(DESC.size * entries))
        for i in range(entries):
            if rng.random() < 0.7:
                struct.pack_into("<Q", table, DESC.size * i, rng.randrange(0, self.memory.size))
                struct.pack_into("<I", table, DESC.size * i + 8, rng.randrange(0, 4096))
        self.memory.write(desc, bytes(table))
        self.memory.write(avail, rng.randbytes(4 + 2 * entries))

    def close(self) -> None:
        self.transport.reset()
        self.device.close()
        self.memory.close()


FEATURES_V1_ONLY = VIRTIO_F_VERSION_1
