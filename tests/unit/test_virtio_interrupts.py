"""The transport under threads: InterruptStatus / InterruptACK (virtio 1.2, 4.2.2), a word
changed only atomically, never wait for a request the device is working on (whose lock the
worker holds), and no update of InterruptStatus is lost.

On the eventfd path a worker thread runs the device while the vCPU thread reads and
writes registers; these tests play both parts with plain threads and a toy driver.
"""
from __future__ import annotations

import random
import struct
import sys
import threading

import pytest

from pykvm.vm.devices.virtio import mmio
from pykvm.vm.devices.virtio.blk import VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, Block
from pykvm.vm.devices.virtio.device import VirtioDevice
from pykvm.vm.devices.virtio.queue import VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
from virtio_driver import DATA_AREA, ToyDriver

WAIT = 30.0                    # seconds: the bound on every wait; a correct run never gets near it
SECTORS = 64
HEADER, DATA, STATUS = DATA_AREA, DATA_AREA + 0x1000, DATA_AREA + 0x2000


class GatedDevice(VirtioDevice):
    """A device whose process() waits, inside the transport's lock, until the test opens the gate."""

    device_id = 4
    name = "gated"
    queue_sizes = (8,)

    def __init__(self):
        super().__init__()
        self.entered, self.gate = threading.Event(), threading.Event()
        self.gate_opened_in_time = None

    def process(self, index: int) -> None:
        self.entered.set()
        self.gate_opened_in_time = self.gate.wait(WAIT)
        self.serve(index, lambda chain: 0)


def test_interrupt_registers_do_not_wait_for_a_running_request():
    driver = ToyDriver(GatedDevice())
    device = driver.device
    try:
        driver.start()
        driver.descriptor(0, 0, DATA_AREA, 16, VIRTQ_DESC_F_WRITE)
        driver.offer(0, 0)
        worker = threading.Thread(target=driver.kick, args=(0,))    # the eventfd worker's part
        worker.start()
        assert device.entered.wait(WAIT), "the device never started the request"
        # The vCPU's part, while the worker holds the device's lock.  Were these accesses to
        # wait for that lock, they would return only when the gate timed out (WAIT seconds).
        driver.write(mmio.INTERRUPT_ACK, mmio.INTERRUPT_USED_BUFFER)
        status = driver.read(mmio.INTERRUPT_STATUS)
        device.gate.set()
        worker.join(WAIT)
        assert device.gate_opened_in_time, "InterruptACK / InterruptStatus waited for the device"
        assert status == 0 and driver.used(0) == [(0, 0)]
    finally:
        driver.close()


class WatchingDriver(ToyDriver):
    """Reads InterruptStatus, through the register, at each interrupt: what the guest's
    handler would read first.  (That read must not need the lock the kick holds.)"""

    def __init__(self, device):
        super().__init__(device)
        self.seen: list[int] = []

    def _interrupt(self) -> None:
        super()._interrupt()
        self.seen.append(self.read(mmio.INTERRUPT_STATUS))


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(random.Random(7).randbytes(SECTORS * 512))
    return path


def read_request(driver: ToyDriver, sector: int) -> None:
    """Header, one sector of data, status byte: descriptors 0, 1, 2, offered (not kicked)."""
    driver.memory.write(HEADER, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, sector))
    driver.descriptor(0, 0, HEADER, 16, VIRTQ_DESC_F_NEXT, 1)
    driver.descriptor(0, 1, DATA, 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 2)
    driver.descriptor(0, 2, STATUS, 1, VIRTQ_DESC_F_WRITE)
    driver.offer(0, 0)


def test_interrupt_finds_its_reason_in_interrupt_status(image):
    driver = WatchingDriver(Block(image))
    try:
        driver.start()
        read_request(driver, 3)
        driver.kick(0)
        assert driver.seen == [mmio.INTERRUPT_USED_BUFFER], driver.seen
    finally:
        driver.close()


def test_requests_and_acks_from_three_threads(image):
    """A driver with one request in flight acknowledges each answer while a worker thread
    runs the device and a third thread keeps changing the config space.  Every request is
    answered with the image's bytes, and no InterruptACK of bit 0 ever loses bit 1."""
    requests, changes = 300, 300
    expected = image.read_bytes()
    driver = ToyDriver(Block(image))
    kicks, stop = threading.Semaphore(0), threading.Event()
    changed = [0]

    def worker() -> None:                      # EventfdNotifier._work's part
        while kicks.acquire(timeout=WAIT) and not stop.is_set():
            driver.transport.kick(0)

    def config_changer() -> None:              # a host thread: the device's config changed
        for _ in range(changes):
            driver.transport.config_changed()
            changed[0] += 1

    def used_idx() -> int:
        return len(driver.used(0))

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)                # switch threads as often as CPython allows
    threads = [threading.Thread(target=worker), threading.Thread(target=config_changer)]
    try:
        driver.start()
        for thread in threads:
            thread.start()
        for n in range(requests):
            sector = n % SECTORS
            read_request(driver, sector)
            kicks.release()                    # the QueueNotify write, as an ioeventfd would
            while used_idx() != n + 1:         # poll the used ring, as the benchmark guest does
                assert threads[0].is_alive(), "the worker died"
            config_changes_before = changed[0]
            driver.write(mmio.INTERRUPT_ACK, mmio.INTERRUPT_USED_BUFFER)
            if config_changes_before:          # bit 1 was set and nobody acknowledged it
                assert driver.read(mmio.INTERRUPT_STATUS) & mmio.INTERRUPT_CONFIG_CHANGE, \
                    f"request {n}: InterruptACK of bit 0 lost bit 1"
            assert driver.memory.read(DATA, 512) == expected[sector * 512:(sector + 1) * 512]
            assert driver.memory.read(STATUS, 1)[0] == VIRTIO_BLK_S_OK
    finally:
        sys.setswitchinterval(old_interval)
        stop.set()
        kicks.release()
        for thread in threads:
            thread.join(WAIT)
        driver.close()
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish"
