"""virtio-console (5.3) and virtio-rng (5.4) through the transport, rings built by hand."""
from __future__ import annotations

import threading

from pykvm.vm.devices.virtio import mmio
from pykvm.vm.devices.virtio.console import HOST_QUEUE_BYTES, RECEIVEQ, TRANSMITQ, VirtioConsole
from pykvm.vm.devices.virtio.device import VIRTIO_F_VERSION_1
from pykvm.vm.devices.virtio.queue import VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
from pykvm.vm.devices.virtio.rng import MAX_BYTES, Rng
from virtio_driver import DATA_AREA, LIVE, ToyDriver

WRITE = VIRTQ_DESC_F_WRITE


def test_rng_fills_the_buffers():
    driver = ToyDriver(Rng())
    driver.start()
    driver.descriptor(0, 0, DATA_AREA, 64, WRITE | VIRTQ_DESC_F_NEXT, 1)
    driver.descriptor(0, 1, DATA_AREA + 0x1000, 64, WRITE)
    driver.offer(0, 0)
    driver.kick(0)
    assert driver.used(0) == [(0, 128)]
    first, second = driver.memory.read(DATA_AREA, 64), driver.memory.read(DATA_AREA + 0x1000, 64)
    assert first != bytes(64) and second != bytes(64) and first != second
    driver.close()


def test_rng_gives_at_most_max_bytes_per_request():
    driver = ToyDriver(Rng())
    driver.start()
    driver.descriptor(0, 0, DATA_AREA, 1 << 20, WRITE)
    driver.offer(0, 0)
    driver.kick(0)
    assert driver.used(0) == [(0, MAX_BYTES)]
    assert driver.memory.read(DATA_AREA + MAX_BYTES, 4096) == bytes(4096)
    driver.close()


def test_rng_refuses_a_read_only_buffer_without_writing_it():
    driver = ToyDriver(Rng())
    driver.start()
    driver.descriptor(0, 0, DATA_AREA, 64)
    driver.offer(0, 0)
    driver.kick(0)
    assert driver.used(0) == [(0, 0)] and driver.memory.read(DATA_AREA, 64) == bytes(64)
    driver.close()


def console_driver(features=None):
    out = []
    driver = ToyDriver(VirtioConsole(out=out.append))
    driver.start(features, queues=2)
    return driver, out


def test_console_transmit_goes_to_the_host():
    driver, out = console_driver()
    driver.memory.write(DATA_AREA, b"hello, ")
    driver.memory.write(DATA_AREA + 0x100, b"hvc0\n")
    driver.descriptor(TRANSMITQ, 0, DATA_AREA, 7, VIRTQ_DESC_F_NEXT, 1)
    driver.descriptor(TRANSMITQ, 1, DATA_AREA + 0x100, 5)
    driver.offer(TRANSMITQ, 0)
    driver.kick(TRANSMITQ)
    assert b"".join(out) == b"hello, hvc0\n"
    assert driver.used(TRANSMITQ) == [(0, 0)] and driver.interrupts == 1
    driver.close()


def test_console_input_waits_for_a_receive_buffer():
    driver, _ = console_driver(VIRTIO_F_VERSION_1)           # no EVENT_IDX: an interrupt per answer
    assert driver.device.receive(b"ls\r") == 3
    assert driver.used(RECEIVEQ) == []                        # no buffer lent yet
    driver.descriptor(RECEIVEQ, 0, DATA_AREA, 2, WRITE)
    driver.offer(RECEIVEQ, 0)
    driver.kick(RECEIVEQ)
    assert driver.used(RECEIVEQ) == [(0, 2)] and driver.memory.read(DATA_AREA, 2) == b"ls"
    driver.descriptor(RECEIVEQ, 1, DATA_AREA + 0x100, 64, WRITE)
    driver.offer(RECEIVEQ, 1)
    driver.kick(RECEIVEQ)
    assert driver.used(RECEIVEQ)[1] == (1, 1) and driver.memory.read(DATA_AREA + 0x100, 1) == b"\r"
    assert driver.interrupts == 2
    driver.close()


def test_console_input_into_a_lent_buffer_interrupts_at_once():
    driver, _ = console_driver()
    driver.descriptor(RECEIVEQ, 0, DATA_AREA, 64, WRITE)
    driver.offer(RECEIVEQ, 0)
    driver.kick(RECEIVEQ)
    assert driver.interrupts == 0
    driver.device.receive(b"x")
    assert driver.used(RECEIVEQ) == [(0, 1)] and driver.interrupts == 1
    driver.close()


def test_console_host_queue_is_bounded_and_drains():
    driver, _ = console_driver()
    assert driver.device.receive(bytes(HOST_QUEUE_BYTES + 100)) == HOST_QUEUE_BYTES
    assert not driver.device.wait_for_room(0.01)
    waiter = threading.Thread(target=driver.device.wait_for_room, args=(30,))
    waiter.start()
    driver.descriptor(RECEIVEQ, 0, DATA_AREA, 1024, WRITE)
    driver.offer(RECEIVEQ, 0)
    driver.kick(RECEIVEQ)
    waiter.join(30)
    assert not waiter.is_alive()
    driver.close()


def test_console_reset_drops_queued_input():
    driver, _ = console_driver()
    driver.device.receive(b"abc")
    driver.write(mmio.STATUS, 0)
    driver.start(queues=2)
    assert driver.status == LIVE
    driver.descriptor(RECEIVEQ, 0, DATA_AREA, 64, WRITE)
    driver.offer(RECEIVEQ, 0)
    driver.kick(RECEIVEQ)
    assert driver.used(RECEIVEQ) == []
    driver.close()


def test_two_consoles_write_to_their_own_outputs():
    """`container run --isolation vm`: hvc0 is the command's stdout, hvc1 its stderr, both apart
    from the serial port (the kernel's log); slots in order: disks, hvc0, hvc1."""
    from pykvm.vm.devices.virtio.attach import VirtioConfig, VirtioDevices

    stdout, stderr = [], []
    devices = VirtioDevices(VirtioConfig(console=True, console_output=stdout.append,
                                         error_console=stderr.append))
    try:
        assert [slot.device.name for slot in devices.slots] == ["virtio-console"] * 2
        assert devices.console is devices.slots[0].device          # input, if any, goes to hvc0
        for slot, text in zip(devices.slots, [b"to stdout\n", b"to stderr\n"]):
            driver = ToyDriver(slot.device)
            driver.start(queues=2)
            driver.memory.write(DATA_AREA, text)
            driver.descriptor(TRANSMITQ, 0, DATA_AREA, len(text))
            driver.offer(TRANSMITQ, 0)
            driver.kick(TRANSMITQ)
            driver.close()
    finally:
        devices.close()
    assert (b"".join(stdout), b"".join(stderr)) == (b"to stdout\n", b"to stderr\n")
