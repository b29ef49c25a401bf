"""The ACPI PM1a registers: power off, suspend to RAM, and the status that says "woken".

ACPI 6.5, section 4.8.3.2.1 "PM1 Control Registers": PM1_CNT is a
16-bit register; writing SLP_TYPx with SLP_EN set puts the machine in that
sleep state.  Which SLP_TYP value means S5 ("soft off") is announced by the
firmware's \\_S5 object; QEMU's PIIX4 and ICH9 tables say 0, and QEMU's
hw/acpi/core.c powers off on SLP_TYP 0 (and on its S4 value, 2 by default,
as "suspend to disk" ends in power off too), and suspends to RAM (S3) on 1.
QEMU -M pc and -M q35 both put PM1a_CNT at port 0x604, so
`outw(0x604, 0x2000)` powers off QEMU and pykvm alike.

S3 is the machine's business, not this register's: AcpiPmControl calls
`suspend()` and the machine sleeps until a wake event, then restarts the
CPU at the OS's waking vector (pykvm.vm.boot.firmware.resume_from_s3).  Sleep
types that neither power off nor suspend (S1, S2) are logged once and
ignored: the guest keeps running.

4.8.3.1 "PM1 Event Grouping": PM1a_STS and PM1a_EN, two 16-bit registers at
0x600 and 0x602 (AcpiPmEvent; 4.8.3.1.1, 4.8.3.1.2).  A status bit is set by
hardware when its event happens and cleared by writing 1 to it; an enable bit
lets that event raise the SCI or wake the machine.  pykvm's machine has one
event source, the RTC alarm that wakes it from S3: no PM timer (the FADT's
PM_TMR_LEN is 0), and the power and sleep buttons are not fixed features
(FADT flags PWR_BUTTON and SLP_BUTTON).  So PM1_STS reads 0 until a wake, when
it shows WAK_STS and the source (RTC_STS); PM1_EN keeps the bits the ACPI
spec defines, which Linux writes while it brings up ACPI.
"""
from __future__ import annotations

import logging
from typing import Callable

from pykvm.vm.devices.bus import BusDevice

__all__ = ["AcpiPmControl", "AcpiPmEvent", "PM1A_CNT_BASE", "PM1A_CNT_LENGTH", "PM1A_EVT_BASE",
           "PM1A_EVT_LENGTH"]

log = logging.getLogger("pykvm.vm.devices.acpi_pm")

PM1A_CNT_BASE = 0x604           # QEMU pc/q35: PM base 0x600 + 4
PM1A_CNT_LENGTH = 2             # a 16-bit register

PM1A_EVT_BASE = 0x600           # QEMU pc/q35: PM base; PM1a_STS here, PM1a_EN at +2
PM1A_EVT_LENGTH = 4             # two 16-bit registers

# PM1_EVT_BLK offsets (ACPI 6.5, 4.8.3.1)
PM1_STS = 0                     # PM1 status register: write 1 to clear a bit
PM1_EN = 2                      # PM1 enable register

# PM1_STS and PM1_EN bits (ACPI 6.5, 4.8.3.1.1 and 4.8.3.1.2); other PM1_EN bits are reserved
PM1_TMR_EN = 0x0001             # PM timer carry raises the SCI
PM1_GBL_EN = 0x0020             # global lock release raises the SCI
PM1_PWRBTN_EN = 0x0100          # fixed-feature power button raises the SCI
PM1_SLPBTN_EN = 0x0200          # fixed-feature sleep button raises the SCI
PM1_RTC = 0x0400                # RTC_STS / RTC_EN: the RTC alarm (a wake source)
PM1_RTC_EN = PM1_RTC
PM1_PCIEXP_WAKE_DIS = 0x4000    # PCI Express wake disable
PM1_WAK_STS = 0x8000            # WAK_STS: set when the machine wakes from a sleep state
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
SLP_TYP_SUSPEND_TO_RAM = 1      # S3, as QEMU's \_S3: the CPU stops, RAM keeps its contents


def _merge(old: int, offset: int, size: int, value: int) -> int:
    """A 16-bit register after a write of `size` bytes at byte `offset` within it."""
    mask = ((1 << (8 * size)) - 1) << (8 * offset)
    return ((old & ~mask) | ((value << (8 * offset)) & mask)) & 0xFFFF


class AcpiPmEvent(BusDevice):
    """PM1a_STS (write 1 to clear) and PM1a_EN (read/write), 16 bits each."""

    def __init__(self):
        self.status = 0
        self.enable = 0

    def read(self, offset: int, size: int) -> int:
        both = self.status | self.enable << 16
        return (both >> (8 * offset)) & ((1 << (8 * size)) - 1)

    def get_state(self) -> dict:
        return {"pm1_sts": self.status, "pm1_en": self.enable}

    def set_state(self, state: dict) -> None:
        self.status = state["pm1_sts"] & 0xFFFF
        self.enable = state["pm1_en"] & PM1_EN_BITS

    def write(self, offset: int, size: int, value: int) -> None:
        """The block as one 32-bit value: status in bits 0-15, enable in bits 16-31."""
        mask = ((1 << (8 * size)) - 1) << (8 * offset)
        written = (value << (8 * offset)) & mask
        self.status &= ~written & 0xFFFF                       # status: writing 1 clears
        self.enable = (self.enable & ~(mask >> 16) | written >> 16) & PM1_EN_BITS

    def woke(self, source: int) -> None:
        """The machine woke because of `source` (a PM1_STS bit)."""
        self.status |= PM1_WAK_STS | source


class AcpiPmControl(BusDevice):
    """PM1a_CNT.  Calls `stop(0)` for a power-off sleep type, `suspend()` for S3."""

    def __init__(self, stop: Callable[[int], None], suspend: Callable[[], None] | None = None):
        self._stop = stop
        self._suspend = suspend
        self._value = 0
        self._ignored_types: set[int] = set()

    def read(self, offset: int, size: int) -> int:
        """The register's sticky bits; write-only bits read as 0."""
        return (self._value >> (8 * offset)) & ((1 << (8 * size)) - 1)

    def get_state(self) -> dict:
        return {"pm1_cnt": self._value}

    def set_state(self, state: dict) -> None:
        self._value = state["pm1_cnt"] & 0xFFFF & ~PM1_WRITE_ONLY

    def write(self, offset: int, size: int, value: int) -> None:
        """Merge the written bytes into the register; act on SLP_EN."""
        value = _merge(self._value, offset, size, value)
        self._value = value & ~PM1_WRITE_ONLY
        if value & PM1_SLP_EN:
            self._sleep((value & PM1_SLP_TYP_MASK) >> PM1_SLP_TYP_SHIFT)

    def _sleep(self, slp_typ: int) -> None:
        if slp_typ in (SLP_TYP_SOFT_OFF, SLP_TYP_SUSPEND_TO_DISK):
            self._stop(0)
        elif slp_typ == SLP_TYP_SUSPEND_TO_RAM and self._suspend is not None:
            self._suspend()
        elif slp_typ not in self._ignored_types:
            self._ignored_types.add(slp_typ)
            log.warning("guest asked for ACPI sleep type %d; pykvm cannot suspend, the guest keeps running",
                        slp_typ)
