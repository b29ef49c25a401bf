"""CMOS/RTC and the empty PCI configuration space, register by register."""
from __future__ import annotations

import calendar

from pykvm.vm.devices.cmos import (B_24HOUR, B_DM_BINARY, REG_B, REG_C, REG_CENTURY, REG_D,
                                REG_DAY_OF_MONTH, REG_DAY_OF_WEEK, REG_HOURS, REG_MINUTES,
                                REG_MONTH, REG_SECONDS, REG_YEAR, Cmos)
from pykvm.vm.devices.pci import PciConfigSpace

# Tuesday 2024-02-27 13:45:07 UTC
WHEN = calendar.timegm((2024, 2, 27, 13, 45, 7, 0, 0, 0))


def reg(cmos: Cmos, number: int) -> int:
    cmos.write(0, 1, number)
    return cmos.read(1, 1)


def test_time_in_bcd_24_hour_by_default():
    cmos = Cmos(clock=lambda: WHEN)
    got = [reg(cmos, r) for r in (REG_SECONDS, REG_MINUTES, REG_HOURS, REG_DAY_OF_WEEK,
                                  REG_DAY_OF_MONTH, REG_MONTH, REG_YEAR, REG_CENTURY)]
    assert got == [0x07, 0x45, 0x13, 3, 0x27, 0x02, 0x24, 0x20], [hex(v) for v in got]


def test_binary_and_12_hour_modes():
    cmos = Cmos(clock=lambda: WHEN)
    cmos.write(0, 1, REG_B)
    cmos.write(1, 1, B_DM_BINARY)                 # binary, 12-hour
    assert reg(cmos, REG_HOURS) == 0x80 | 1       # 1 PM
    assert reg(cmos, REG_MINUTES) == 45
    cmos.write(0, 1, REG_B)
    cmos.write(1, 1, B_DM_BINARY | B_24HOUR)
    assert reg(cmos, REG_HOURS) == 13


def test_status_registers_and_nmi_bit():
    cmos = Cmos(clock=lambda: WHEN)
    assert reg(cmos, 0x80 | REG_D) == 0x80        # NMI mask bit is not part of the index; VRT set
    assert reg(cmos, 0x0A) & 0x80 == 0            # never update-in-progress
    assert reg(cmos, REG_C) == 0


def test_clock_follows_host_and_ignores_writes():
    now = [WHEN]
    cmos = Cmos(clock=lambda: now[0])
    cmos.write(0, 1, REG_SECONDS)
    cmos.write(1, 1, 0x30)
    assert cmos.read(1, 1) == 0x07
    now[0] += 2
    assert cmos.read(1, 1) == 0x09


def test_ram_keeps_guest_writes():
    cmos = Cmos()
    cmos.write(0, 1, 0x40)
    cmos.write(1, 1, 0xA5)
    assert reg(cmos, 0x40) == 0xA5
    assert cmos.read(0, 1) == 0x40


def test_pci_config_address_reads_back_and_bus_is_empty():
    pci = PciConfigSpace()
    pci.write(0, 4, 0x80000000)
    assert pci.read(0, 4) == 0x80000000           # what pci_check_type1 looks for
    pci.write(0, 4, 0x80001803)                   # bus 0, device 3, register 0 (+ reserved bits)
    assert pci.selected() == (0, 3, 0, 0)
    assert pci.read(4, 4) == 0xFFFFFFFF           # vendor 0xFFFF: no device
    assert pci.read(6, 2) == 0xFFFF
    pci.write(4, 4, 0x12345678)                   # goes nowhere
    assert pci.read(4, 4) == 0xFFFFFFFF


def test_pci_byte_accesses_are_not_config_address():
    pci = PciConfigSpace()
    pci.write(0, 4, 0x80000000)
    pci.write(3, 1, 0x00)                         # pci_check_type2's probe
    assert pci.read(0, 1) == 0xFF
    assert pci.read(0, 4) == 0x80000000
    pci.write(0, 4, 0)
    assert pci.selected() is None
