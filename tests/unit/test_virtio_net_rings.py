"""virtio-net's rings under a driver that checks them as Linux does, with pykvm's threads.

Linux's split-ring driver (drivers/virtio/virtio_ring.c, virtqueue_get_buf_ctx_split)
marks a queue broken for good, and virtio_net then logs "Unexpected TXQ (0) queue
failure: -5" at every frame, when a used-ring entry fails its checks: an id outside the
table ("out of range"), or one that is not the head of a chain it made available and has
not had back ("is not a head!").  LinuxRing below keeps the same books (a free list
through `next`, desc_state[head] while a chain is out, num_free) and makes the same
checks, so a device that returns a head twice, or one it never got, fails here with
Linux's words.  (Whether each index is published in one store, which threads under one
interpreter lock cannot see, is test_virtqueue_indexes.py's question.)

The device runs as in a VM: kicks reach it on a worker thread woken through an eventfd
(notify.py's ioeventfd path), frames from the wire through the Net's own reader thread,
and the wire is a socketpair whose other end the test reads slowly, so that writes to it
fail with EAGAIN (a full tap) for a while, and frames are dropped, as on a loaded host.
"""
from __future__ import annotations

import os
import random
import socket
import struct
import threading

from clitools import wait_for
from pykvm.vm.devices.virtio.device import VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_EVENT_IDX
from pykvm.vm.devices.virtio.net import NET_HEADER, RECEIVEQ, TRANSMITQ, Net
from pykvm.vm.devices.virtio.queue import (DESC, USED_ELEM, VIRTQ_DESC_F_INDIRECT,
                                           VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE)
from pykvm.vm.devices.virtio.tap import Tap
from test_virtio_net import ALL, MAC, frame
from virtio_driver import DATA_AREA, LIVE, ToyDriver

QUEUE_SIZE = 16                        # small, so that the ring wraps and fills often
FRAMES = 600                           # frames the driver sends
TX_BUFFERS = DATA_AREA                 # each head's data (and indirect table) at its own page
RX_BUFFERS = DATA_AREA + 0x100000
PAGE = 0x1000


class BadRing(AssertionError):
    """What Linux's BAD_RING() would have logged before marking the queue broken."""


class LinuxRing:
    """The driver's side of one split queue, kept as virtio_ring.c keeps it."""

    def __init__(self, driver: ToyDriver, index: int):
        self.size = driver.sizes[index]
        self.desc, self.avail, self.used = driver.rings(index)
        self.memory = driver.memory
        for i in range(self.size):               # the free list: each descriptor's next
            self._write_desc(i, 0, 0, 0, (i + 1) % self.size)
        self.free_head, self.num_free = 0, self.size
        self.data: list[object | None] = [None] * self.size   # desc_state[head].data
        self.chain_length = [0] * self.size
        self.avail_idx = self.last_used = 0
        self.returned = 0

    def _write_desc(self, i: int, address: int, length: int, flags: int, next_index: int) -> None:
        self.memory.write(self.desc + DESC.size * i, DESC.pack(address, length, flags, next_index))

    def _next_of(self, i: int) -> int:
        return DESC.unpack(self.memory.read(self.desc + DESC.size * i, DESC.size))[3]

    def add(self, buffers: list[tuple[int, int, int]], token: object, indirect_at: int | None = None) -> bool:
        """virtqueue_add_split: (address, length, flags) buffers as one chain, or as one
        indirect descriptor whose table is written at `indirect_at`.  False if no room."""
        if indirect_at is not None:
            table = b"".join(DESC.pack(a, n, f | (VIRTQ_DESC_F_NEXT if i + 1 < len(buffers) else 0),
                                       i + 1) for i, (a, n, f) in enumerate(buffers))
            self.memory.write(indirect_at, table)
            buffers = [(indirect_at, len(table), VIRTQ_DESC_F_INDIRECT)]
        if self.num_free < len(buffers):
            return False
        head = i = self.free_head
        for n, (address, length, flags) in enumerate(buffers):
            following = self._next_of(i)         # the free list goes on there
            more = VIRTQ_DESC_F_NEXT if n + 1 < len(buffers) else 0
            self._write_desc(i, address, length, flags | more, following)
            i = following
        self.free_head = i
        self.num_free -= len(buffers)
        self.data[head], self.chain_length[head] = token, len(buffers)
        slot = self.avail + 4 + 2 * (self.avail_idx % self.size)
        self.memory.write(slot, struct.pack("<H", head))
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.memory.write(self.avail + 2, struct.pack("<H", self.avail_idx))   # after the entry
        return True

    def get_buf(self) -> tuple[object, int] | None:
        """virtqueue_get_buf_ctx_split: the next used chain's token and length, or None."""
        used_idx = struct.unpack("<H", self.memory.read(self.used + 2, 2))[0]
        if used_idx == self.last_used:
            return None
        slot = self.used + 4 + USED_ELEM.size * (self.last_used % self.size)
        head, length = USED_ELEM.unpack(self.memory.read(slot, USED_ELEM.size))
        if head >= self.size:
            raise BadRing(f"id {head} out of range (used entry {self.last_used})")
        if self.data[head] is None:
            raise BadRing(f"id {head} is not a head! (used entry {self.last_used})")
        token, self.data[head] = self.data[head], None
        tail = head                              # detach_buf_split: the chain back on the list
        for _ in range(self.chain_length[head] - 1):
            tail = self._next_of(tail)
        self._write_desc(tail, 0, 0, 0, self.free_head)
        self.free_head, self.num_free = head, self.num_free + self.chain_length[head]
        self.last_used = (self.last_used + 1) & 0xFFFF
        self.returned += 1
        self.memory.write(self.avail + 4 + 2 * self.size, struct.pack("<H", self.last_used))  # used_event
        return token, length


class Worker:
    """notify.py's ioeventfd path: a kick is an eventfd write; a thread runs every queue."""

    def __init__(self, transport):
        self.transport, self.fd, self.stopping = transport, os.eventfd(0), False
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while True:
            os.eventfd_read(self.fd)
            if self.stopping:
                return
            try:
                self.transport.kick_all()
            except BaseException as e:          # the test reports it
                self.errors.append(e)

    def kick(self) -> None:
        os.eventfd_write(self.fd, 1)

    def close(self) -> None:
        self.stopping = True
        os.eventfd_write(self.fd, 1)
        self.thread.join(timeout=10)
        os.close(self.fd)


def run_traffic(features: int, seed: int) -> None:
    """FRAMES frames out and frames in at once; every used entry checked as Linux does."""
    rng = random.Random(seed)
    device_end, host_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    device_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)    # a few frames: full soon
    host_end.settimeout(0.01)
    net = Net(Tap(device_end.detach(), "test0"), MAC)
    driver = ToyDriver(net, memory_size=8 << 20)
    driver.start(features=features, queues=2, size=QUEUE_SIZE)
    tx, rx = LinuxRing(driver, TRANSMITQ), LinuxRing(driver, RECEIVEQ)
    worker = Worker(driver.transport)
    net.start()
    received = []
    try:
        for i in range(QUEUE_SIZE):                                    # receive buffers
            rx.add([(RX_BUFFERS + i * PAGE, 256, VIRTQ_DESC_F_WRITE)], token=i)
        worker.kick()
        sent = 0
        for _ in range(FRAMES * 100):                                  # bounded: a lost kick fails
            if sent == FRAMES and tx.returned == FRAMES:
                break
            for _ in range(rng.randrange(1, 6)):                       # host -> guest
                if rng.random() < 0.5:
                    send_to_guest(host_end, frame(rng.randrange(60, 600), seed=sent))
            if sent < FRAMES and send_one(tx, rng, sent):
                sent += 1
                worker.kick()
            while (done := tx.get_buf()) is not None:
                pass
            while (done := rx.get_buf()) is not None:                  # lend it again
                index, _ = done
                received.append(index)
                rx.add([(RX_BUFFERS + index * PAGE, 256, VIRTQ_DESC_F_WRITE)], token=index)
                worker.kick()
            if rng.random() < 0.1:                                     # the host reads, slowly
                drain(host_end, rng.randrange(0, 8))
            assert not worker.errors, worker.errors
            assert driver.status == LIVE, f"status {driver.status:#x}"
        assert tx.returned == FRAMES, f"{FRAMES - tx.returned} frames never came back"
        assert net.tx_frames + net.tx_dropped == FRAMES
        assert net.tx_dropped > 0, "the wire never filled: the test did not reach the drop path"
        wait_for(lambda: rx.get_buf() is None)
    finally:
        worker.close()
        driver.close()
        host_end.close()


def send_one(tx: LinuxRing, rng: random.Random, n: int) -> bool:
    """One header + frame, as Linux lays it out: one buffer, a header and a frame in two,
    or those two behind an indirect descriptor."""
    head_page = TX_BUFFERS + (n % 64) * PAGE
    data = NET_HEADER.pack(0, 0, 0, 0, 0, 0, 0) + frame(rng.randrange(60, 1500), seed=n)
    tx.memory.write(head_page, data)
    split = NET_HEADER.size
    shape = rng.choice(("one", "two", "indirect"))
    if shape == "one":
        return tx.add([(head_page, len(data), 0)], token=n)
    pieces = [(head_page, split, 0), (head_page + split, len(data) - split, 0)]
    return tx.add(pieces, token=n, indirect_at=head_page + 0x800 if shape == "indirect" else None)


def send_to_guest(sock: socket.socket, data: bytes) -> None:
    try:
        sock.send(data)
    except (TimeoutError, BlockingIOError):      # the device's end is full: the host drops it
        pass


def drain(sock: socket.socket, count: int) -> None:
    for _ in range(count):
        try:
            sock.recv(65536)
        except (TimeoutError, BlockingIOError):
            return


def test_every_head_comes_back_once_with_a_full_wire():
    run_traffic(ALL | VIRTIO_F_INDIRECT_DESC, seed=1)


def test_every_head_comes_back_once_with_event_idx():
    run_traffic(ALL | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_RING_EVENT_IDX, seed=2)
