"""The ACPI PM1a control register, reduced to the one thing a guest needs: power off.

ACPI 6.5, section 4.8.3.2.1 "PM1 Control Registers": PM1_CNT is a
16-bit register; writing SLP_TYPx with SLP_EN set puts the machine in that
sleep state.  Which SLP_TYP value means S5 ("soft off") is announced by the
firmware's \\_S5 object; QEMU's PIIX4 and ICH9 tables say 0, and QEMU's
hw/acpi/core.c powers off on SLP_TYP 0 (and on its S4 value, 2 by default,
as "suspend to disk" ends in power off too).  QEMU -M pc and -M q35 both put
PM1a_CNT at port 0x604, so `outw(0x604, 0x2000)` powers off QEMU and pykvm alike.

pykvm provides no ACPI tables; this register exists so that guests written
for QEMU can turn the VM off.  Sleep types that do not power off (S1-S3:
suspend to RAM) are logged once and ignored: the guest keeps running, as on a
board that cannot suspend.
"""
from __future__ import annotations

import logging
from typing import Callable

from pykvm.vm.devices.bus import BusDevice

__all__ = ["AcpiPmControl", "PM1A_CNT_BASE", "PM1A_CNT_LENGTH"]

log = logging.getLogger("pykvm.vm.devices.acpi_pm")

PM1A_CNT_BASE = 0x604           # QEMU pc/q35: PM base 0x600 + 4
PM1A_CNT_LENGTH = 2             # a 16-bit register

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


class AcpiPmControl(BusDevice):
    """PM1a_CNT.  `stop(0)` is called when the guest sets SLP_EN with a power-off sleep type."""

    def __init__(self, stop: Callable[[int], None]):
        self._stop = stop
        self._value = 0
        self._ignored_types: set[int] = set()

    def read(self, offset: int, size: int) -> int:
        """The register's sticky bits; write-only bits read as 0."""
        return (self._value >> (8 * offset)) & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        """Merge the written bytes into the register; act on SLP_EN."""
        mask = ((1 << (8 * size)) - 1) << (8 * offset)
        value = (self._value & ~mask) | ((value << (8 * offset)) & mask)
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
