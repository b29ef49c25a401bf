"""The ACPI PM1a register blocks the FADT names: the event block and the control register.

ACPI 6.5, section 4.8.3.1 "PM1 Event Grouping": PM1_EVT_BLK holds two 16-bit
registers, PM1_STS at offset 0 and PM1_EN at offset 2 (4.8.3.1.1, 4.8.3.1.2).
A status bit is set by hardware when its event happens and cleared by
writing 1 to it; an enable bit lets that event raise the SCI.  pykvm's
machine has none of the event sources: no PM timer (the FADT's PM_TMR_LEN is
0), the power and sleep buttons are not fixed features (FADT flags
PWR_BUTTON and SLP_BUTTON), no RTC alarm, no wake from sleep.  So PM1_STS
always reads 0 and PM1_EN is plain storage a guest reads back; Linux clears
one and writes the other while it brings up ACPI.

ACPI 6.5, section 4.8.3.2.1 "PM1 Control Registers": PM1_CNT is a
16-bit register; writing SLP_TYPx with SLP_EN set puts the machine in that
sleep state.  Which SLP_TYP value means S5 ("soft off") is announced by the
firmware's \\_S5 object; QEMU's PIIX4 and ICH9 tables say 0, and QEMU's
hw/acpi/core.c powers off on SLP_TYP 0 (and on its S4 value, 2 by default,
as "suspend to disk" ends in power off too).  QEMU -M pc and -M q35 both put
the PM block at port 0x600 (PM1a_EVT 0x600, PM1a_CNT 0x604), so
`outw(0x604, 0x2000)` powers off QEMU and pykvm alike.

pykvm.vm.arch.x86.acpi writes the tables (RSDP, FADT, DSDT with \\_S5) that
point a guest at these ports; guests written for QEMU use them without
tables.  Sleep types that do not power off (S1-S3: suspend to RAM) are
logged once and ignored: the guest keeps running, as on a board that cannot
suspend.
"""
from __future__ import annotations

import logging
from typing import Callable

from pykvm.vm.devices.bus import BusDevice

__all__ = ["AcpiPmEvent", "AcpiPmControl", "PM1A_EVT_BASE", "PM1A_EVT_LENGTH", "PM1A_CNT_BASE",
           "PM1A_CNT_LENGTH"]

log = logging.getLogger("pykvm.vm.devices.acpi_pm")

PM1A_EVT_BASE = 0x600           # QEMU pc/q35: the PM base; PM1_STS here, PM1_EN at + 2
PM1A_EVT_LENGTH = 4             # two 16-bit registers
PM1A_CNT_BASE = 0x604           # QEMU pc/q35: PM base 0x600 + 4
PM1A_CNT_LENGTH = 2             # a 16-bit register

# PM1_EVT_BLK offsets (ACPI 6.5, 4.8.3.1)
PM1_STS = 0                     # PM1 status register: write 1 to clear a bit
PM1_EN = 2                      # PM1 enable register

# PM1_EN bits (ACPI 6.5, 4.8.3.1.2 "PM1 Enable Registers"); the others are reserved, read as 0
PM1_TMR_EN = 0x0001             # PM timer carry raises the SCI
PM1_GBL_EN = 0x0020             # global lock release raises the SCI
PM1_PWRBTN_EN = 0x0100          # fixed-feature power button raises the SCI
PM1_SLPBTN_EN = 0x0200          # fixed-feature sleep button raises the SCI
PM1_RTC_EN = 0x0400             # RTC alarm raises the SCI / wakes
PM1_PCIEXP_WAKE_DIS = 0x4000    # PCI Express wake disable
PM1_EN_BITS = (PM1_TMR_EN | PM1_GBL_EN | PM1_PWRBTN_EN | PM1_SLPBTN_EN | PM1_RTC_EN
               | PM1_PCIEXP_WAKE_DIS)

# PM1_CNT bits (ACPI 6.5, 4.8.3.2.1)
PM1_SCI_EN = 0x0001             # SCI_EN: power management events go to the SCI
PM1_BM_RLD = 0x0002             # BM_RLD: bus master requests wake from C3
PM1_GBL_RLS = 0x0004            # GBL_RLS: write-only, releases the global lock to firmware
PM1_SLP_TYP_SHIFT = 10          # SLP_TYPx: bits 10-12, the sleep type to enter
PM1_SLP_TYP_MASK = 0x7 << PM1_SLP_TYP_SHIFT
PM1_SLP_EN = 0x2000             # SLP_EN: write-only, "enter SLP_TYP now"; reads as 0
PM1_WRITE_ONLY = PM1_GBL_RLS | PM1_SLP_EN

# SLP_TYP values that power the machine off, per QEMU's \_S5 (0) and its default \_S4 (2)
SLP_TYP_SOFT_OFF = 0            # S5
SLP_TYP_SUSPEND_TO_DISK = 2     # S4: the state is saved, then the power goes


def _bytes_of(register: int, offset: int, size: int) -> int:
    """The `size` bytes at byte `offset` of a little-endian register block."""
    return (register >> (8 * offset)) & ((1 << (8 * size)) - 1)


def _merged(register: int, offset: int, size: int, value: int) -> int:
    """`register` with the `size` bytes at `offset` replaced by `value` (a byte or word access)."""
    mask = ((1 << (8 * size)) - 1) << (8 * offset)
    return (register & ~mask) | ((value << (8 * offset)) & mask)


class AcpiPmEvent(BusDevice):
    """PM1a_EVT_BLK: PM1_STS (always 0: no event source here) and PM1_EN (read back)."""

    def __init__(self):
        self._enable = 0

    def read(self, offset: int, size: int) -> int:
        """PM1_STS in the low word (0), PM1_EN in the high word."""
        return _bytes_of(self._enable << (8 * PM1_EN), offset, size)

    def get_state(self) -> dict:
        return {"pm1_en": self._enable}

    def set_state(self, state: dict) -> None:
        self._enable = state["pm1_en"] & PM1_EN_BITS

    def write(self, offset: int, size: int, value: int) -> None:
        """PM1_EN keeps its defined bits; a write to PM1_STS clears bits that are never set."""
        block = _merged(self._enable << (8 * PM1_EN), offset, size, value)
        self._enable = (block >> (8 * PM1_EN)) & PM1_EN_BITS


class AcpiPmControl(BusDevice):
    """PM1a_CNT.  `stop(0)` is called when the guest sets SLP_EN with a power-off sleep type."""

    def __init__(self, stop: Callable[[int], None]):
        self._stop = stop
        self._value = 0
        self._ignored_types: set[int] = set()

    def read(self, offset: int, size: int) -> int:
        """The register's sticky bits; write-only bits read as 0."""
        return _bytes_of(self._value, offset, size)

    def get_state(self) -> dict:
        return {"pm1_cnt": self._value}

    def set_state(self, state: dict) -> None:
        self._value = state["pm1_cnt"] & 0xFFFF & ~PM1_WRITE_ONLY

    def write(self, offset: int, size: int, value: int) -> None:
        """Merge the written bytes into the register; act on SLP_EN."""
        value = _merged(self._value, offset, size, value)
        self._value = value & 0xFFFF & ~PM1_WRITE_ONLY
        if value & PM1_SLP_EN:
            self._sleep((value & PM1_SLP_TYP_MASK) >> PM1_SLP_TYP_SHIFT)

    def _sleep(self, slp_typ: int) -> None:
        if slp_typ in (SLP_TYP_SOFT_OFF, SLP_TYP_SUSPEND_TO_DISK):
            self._stop(0)
        elif slp_typ not in self._ignored_types:
            self._ignored_types.add(slp_typ)
            log.warning("guest asked for ACPI sleep type %d; pykvm cannot suspend, the guest keeps running",
                        slp_typ)
