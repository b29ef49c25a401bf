"""PCI configuration mechanism #1 with nothing behind it: "no device" on every slot.

Spec: PCI Local Bus Specification 3.0, 3.2.2.3.2 "Software Generation of
Configuration Transactions" (ports 0xCF8/0xCFC).  pykvm's machine has no PCI
devices, but Linux probes for a PCI bus at boot unless told `pci=off`
(arch/x86/pci/direct.c: pci_check_type1 writes 0x80000000 to CONFIG_ADDRESS
and reads it back, then scans bus 0).  Answering like a host bridge with an
empty bus lets that probe end quickly and quietly.

    0xCF8  CONFIG_ADDRESS  32-bit only:
             bit 31     enable (config cycle on the next CONFIG_DATA access)
             23..16     bus      15..11 device      10..8 function
             7..2       register (dword)            1..0  always 0
    0xCFC  CONFIG_DATA     1, 2 or 4 bytes at 0xCFC..0xCFF

Reading CONFIG_DATA gives all-ones: a vendor ID of 0xFFFF means "no device
here" (PCI 3.0, 6.2.1), so every bus/device/function is empty.  Writes go
nowhere.  As on the PIIX chipset, byte and word accesses to 0xCF8..0xCFB are
not CONFIG_ADDRESS: they read all-ones and are dropped.
"""
from __future__ import annotations

__all__ = ["PciConfigSpace", "PCI_CONFIG_BASE", "PCI_CONFIG_LENGTH"]

PCI_CONFIG_BASE = 0xCF8   # CONFIG_ADDRESS; CONFIG_DATA follows at 0xCFC
PCI_CONFIG_LENGTH = 8

CONFIG_ADDRESS = 0        # offsets from PCI_CONFIG_BASE
CONFIG_DATA = 4
ADDRESS_ENABLE = 1 << 31  # CONFIG_ADDRESS bit 31: next CONFIG_DATA access is a config cycle
ADDRESS_MASK = 0x80FFFFFC  # reserved bits 30..24 and 1..0 read back as 0
NO_DEVICE = 0xFFFFFFFF    # what an empty slot returns (vendor ID 0xFFFF)


class PciConfigSpace:
    """Configuration mechanism #1 over an empty PCI bus 0."""

    def __init__(self):
        self.address = 0

    def read(self, offset: int, size: int) -> int:
        if offset == CONFIG_ADDRESS and size == 4:
            return self.address
        return NO_DEVICE & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == CONFIG_ADDRESS and size == 4:
            self.address = value & ADDRESS_MASK

    def get_state(self) -> dict:
        return {"config_address": self.address}

    def set_state(self, state: dict) -> None:
        self.address = state["config_address"] & ADDRESS_MASK

    def selected(self) -> tuple[int, int, int, int] | None:
        """(bus, device, function, register) of the enabled CONFIG_ADDRESS, or None."""
        if not self.address & ADDRESS_ENABLE:
            return None
        a = self.address
        return (a >> 16) & 0xFF, (a >> 11) & 0x1F, (a >> 8) & 0x7, a & 0xFC
