"""The PIO/MMIO bus: dispatch by offset, overlap refusal, unmapped accesses."""
from __future__ import annotations

import logging
import threading
import time

import pytest

from pykvm.vm.devices.bus import Bus, BusDevice, BusOverlapError, Device, all_ones


class Recorder(BusDevice):
    """A device that remembers every access and reads back offset-tagged values."""

    def __init__(self):
        self.accesses = []

    def read(self, offset, size):
        self.accesses.append(("read", offset, size))
        return 0x100 + offset

    def write(self, offset, size, value):
        self.accesses.append(("write", offset, size, value))


def test_device_sees_offsets_not_addresses():
    bus, uart = Bus("pio"), Recorder()
    bus.insert(uart, 0x3F8, 8)
    bus.write(0x3FD, 1, 0x41)
    assert bus.read(0x3FF, 1) == 0x107
    assert uart.accesses == [("write", 5, 1, 0x41), ("read", 7, 1)]


def test_same_device_class_at_two_bases():
    bus, com1, com2 = Bus("pio"), Recorder(), Recorder()
    bus.insert(com1, 0x3F8, 8)
    bus.insert(com2, 0x2F8, 8)
    bus.write(0x2F8, 1, 1)
    bus.write(0x3F9, 1, 2)
    assert com2.accesses == [("write", 0, 1, 1)]
    assert com1.accesses == [("write", 1, 1, 2)]


@pytest.mark.parametrize("base, length", [
    (0x3F8, 8),        # identical
    (0x3F0, 9),        # runs into the start
    (0x3FF, 1),        # the last port
    (0x3FA, 2),        # inside
    (0x3F0, 0x20),     # covers it
])
def test_overlap_refused_and_named(base, length):
    bus = Bus("pio")
    bus.insert(Recorder(), 0x3F8, 8)
    with pytest.raises(BusOverlapError) as e:
        bus.insert(BusDevice(), base, length)
    assert isinstance(e.value, ValueError)
    message = str(e.value)
    assert "Recorder at [0x3f8, 0x400)" in message, message
    assert f"BusDevice at [{base:#x}, {base + length:#x})" in message, message
    assert len(bus.devices()) == 1


def test_adjacent_ranges_are_fine():
    bus = Bus("pio")
    low, high = Recorder(), Recorder()
    bus.insert(high, 0x400, 4)
    bus.insert(low, 0x3F8, 8)
    bus.insert(BusDevice(), 0x3F0, 8)
    assert [b for b, _, _ in bus.devices()] == [0x3F0, 0x3F8, 0x400]
    bus.read(0x3FF, 1)
    bus.read(0x400, 1)
    assert low.accesses == [("read", 7, 1)] and high.accesses == [("read", 0, 1)]


@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_unmapped_read_is_all_ones_and_write_dropped(size, caplog):
    bus = Bus("mmio")
    bus.insert(Recorder(), 0x1000, 0x100)
    with caplog.at_level(logging.WARNING, logger="pykvm.bus"):
        assert bus.read(0xFEE00000, size) == (1 << (8 * size)) - 1 == all_ones(size)
        bus.write(0xFEE00000, size, 0)
    assert "unmapped read" in caplog.text


def test_unmapped_logged_once_per_address(caplog):
    bus = Bus("pio")
    with caplog.at_level(logging.WARNING, logger="pykvm.bus"):
        for _ in range(5):
            bus.read(0x80, 1)
            bus.write(0x80, 1, 0)
        bus.read(0x81, 1)
    lines = [r.getMessage() for r in caplog.records if r.name == "pykvm.bus"]
    assert len(lines) == 2, lines
    assert "0x80" in lines[0] and "0x81" in lines[1]


def test_access_running_past_the_device_is_unmapped(caplog):
    bus, dev = Bus("pio"), Recorder()
    bus.insert(dev, 0x3F8, 8)
    with caplog.at_level(logging.WARNING, logger="pykvm.bus"):
        assert bus.read(0x3FE, 4) == 0xFFFFFFFF      # 0x3fe..0x401 leaves the UART
        assert bus.read(0x3FC, 4) == 0x104           # 0x3fc..0x3ff stays inside
    assert dev.accesses == [("read", 4, 4)]
    assert "0x3fe" in caplog.text


def test_insert_after_use_invalidates_lookup_cache():
    bus, dev = Bus("pio"), Recorder()
    assert bus.read(0x60, 1) == 0xFF                 # cached as unmapped
    bus.insert(dev, 0x60, 5)
    assert bus.read(0x64, 1) == 0x104


def test_bad_ranges_refused():
    bus = Bus("pio")
    with pytest.raises(ValueError):
        bus.insert(Recorder(), 0x10, 0)
    with pytest.raises(ValueError):
        bus.insert(Recorder(), -1, 4)


def test_device_protocol_is_structural():
    class Plain:
        def read(self, offset, size):
            return 0

        def write(self, offset, size, value):
            pass

    assert isinstance(Plain(), Device)
    assert not isinstance(object(), Device)


class Reentrancy(BusDevice):
    """A device that notices if two threads are inside it at once (it yields the GIL inside)."""

    def __init__(self):
        self.inside = 0
        self.overlaps = 0
        self.count = 0

    def write(self, offset, size, value):
        self.inside += 1
        if self.inside > 1:
            self.overlaps += 1
        time.sleep(0)                                # let another vCPU thread run here
        self.count += 1                              # a read-modify-write, as device state is
        self.inside -= 1


def test_two_vcpu_threads_never_meet_inside_a_device():
    """Two vCPU threads exiting at once: the bus runs one device access at a time."""
    bus, dev = Bus("pio"), Reentrancy()
    bus.insert(dev, 0x3F8, 8)
    rounds = 2000

    def vcpu():
        for _ in range(rounds):
            bus.write(0x3F8, 1, 0x41)

    threads = [threading.Thread(target=vcpu) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (dev.overlaps, dev.count) == (0, 2 * rounds)
