"""The devices a guest uses to end the VM: isa-debug-exit, ACPI PM1a_CNT, the i8042 reset line."""
from __future__ import annotations

import logging

import pytest

from pykvm.vm.devices.acpi_pm import PM1A_CNT_BASE, PM1A_CNT_LENGTH, AcpiPmControl
from pykvm.vm.devices.bus import Bus
from pykvm.vm.devices.debug_exit import DEBUG_EXIT_BASE, DEBUG_EXIT_LENGTH, DebugExit, exit_status
from pykvm.vm.devices.i8042 import I8042, I8042_BASE, I8042_LENGTH


@pytest.fixture
def machine():
    """A PIO bus with the three devices where the machine puts them; records stop/reset requests."""
    requests = []
    bus = Bus("pio")
    bus.insert(DebugExit(lambda status: requests.append(("stop", status))), DEBUG_EXIT_BASE, DEBUG_EXIT_LENGTH)
    bus.insert(AcpiPmControl(lambda status: requests.append(("stop", status))), PM1A_CNT_BASE, PM1A_CNT_LENGTH)
    bus.insert(I8042(lambda: requests.append(("reset",))), I8042_BASE, I8042_LENGTH)
    return bus, requests


@pytest.mark.parametrize("size, value, status", [
    (1, 0x00, 1),
    (1, 0x10, 0x21),
    (2, 0x1234, 0x2469),
    (4, 0x7F, 0xFF),
])
def test_debug_exit_status_is_value_shifted_left_or_one(machine, size, value, status):
    bus, requests = machine
    bus.write(0xF4, size, value)
    assert requests == [("stop", status)]
    assert exit_status(value) == status


def test_debug_exit_any_port_of_the_window(machine):
    bus, requests = machine
    bus.write(0xF7, 1, 3)
    assert requests == [("stop", 7)]


def test_debug_exit_reads_zero(machine):
    bus, requests = machine
    assert bus.read(0xF4, 4) == 0
    assert requests == []


def test_acpi_power_off_with_slp_en(machine):
    bus, requests = machine
    bus.write(0x604, 2, 0x0001)          # SCI_EN only: nothing happens
    assert requests == []
    bus.write(0x604, 2, 0x2000)          # SLP_EN with SLP_TYP 0 (S5)
    assert requests == [("stop", 0)]


def test_acpi_slp_en_reads_back_zero(machine):
    bus, _ = machine
    bus.write(0x604, 2, 0x2001)
    assert bus.read(0x604, 2) == 0x0001, "SLP_EN is write-only"


def test_acpi_byte_write_to_the_high_half(machine):
    bus, requests = machine
    bus.write(0x605, 1, 0x20)            # bit 13 lives in the second byte
    assert requests == [("stop", 0)]


def test_acpi_suspend_to_ram_is_ignored_and_logged(machine, caplog):
    bus, requests = machine
    with caplog.at_level(logging.WARNING):
        bus.write(0x604, 2, 0x2000 | (1 << 10))   # SLP_TYP 1: S3 in QEMU's tables
    assert requests == []
    assert "sleep type 1" in caplog.text
    bus.write(0x604, 2, 0x2000 | (2 << 10))       # SLP_TYP 2: S4, ends in power off
    assert requests == [("stop", 0)]


def test_i8042_status_says_no_data(machine):
    bus, _ = machine
    status = bus.read(0x64, 1)
    assert not status & 0x01, f"OBF set with nothing to read: {status:#x}"
    assert status & 0x04, "system flag: POST passed"


def test_i8042_reset_command(machine):
    bus, requests = machine
    bus.write(0x64, 1, 0xFE)
    assert requests == [("reset",)]


def test_i8042_reset_through_the_output_port(machine):
    bus, requests = machine
    bus.write(0x64, 1, 0xD0)
    assert bus.read(0x60, 1) & 0x01, "reset line inactive (high)"
    bus.write(0x64, 1, 0xD1)
    bus.write(0x60, 1, 0x02)             # bit 0 low: reset
    assert requests == [("reset",)]


def test_i8042_self_test_and_command_byte(machine):
    bus, requests = machine
    bus.write(0x64, 1, 0xAA)
    assert bus.read(0x64, 1) & 0x01
    assert bus.read(0x60, 1) == 0x55
    assert not bus.read(0x64, 1) & 0x01
    bus.write(0x64, 1, 0x60)
    bus.write(0x60, 1, 0x00)             # command byte 0: system flag off
    bus.write(0x64, 1, 0x20)
    assert bus.read(0x60, 1) == 0x00
    assert not bus.read(0x64, 1) & 0x04
    assert requests == []


def test_i8042_keyboard_bytes_are_acknowledged(machine):
    bus, _ = machine
    bus.write(0x60, 1, 0xF4)             # "enable scanning", sent to the keyboard
    assert bus.read(0x60, 1) == 0xFA


def test_i8042_does_not_claim_the_ports_between(machine):
    bus, _ = machine
    assert bus.read(0x61, 1) == 0xFF
