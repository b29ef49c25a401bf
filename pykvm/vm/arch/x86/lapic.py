"""The local APIC's state at boot: LINT0 as ExtINT, LINT1 as NMI ("virtual wire").

Spec: Intel SDM Vol. 3A 10.5.1 "Local Vector Table" and the MultiProcessor
Specification 1.4, 3.6.2.2 "Virtual Wire Mode".  A PC firmware wires the
8259 PIC's output to the bootstrap processor's LINT0 in ExtINT mode and the
NMI line to LINT1; a kernel starts in that mode and may move to the IOAPIC
once it has read the ACPI MADT.  KVM's in-kernel LAPIC already resets the
BSP's LVT LINT0 to 0x700 (ExtINT, unmasked: kvm_lapic_reset,
KVM_X86_QUIRK_LINT0_REENABLED) but leaves LINT1 masked (0x10000), and other
vCPUs get both masked; so pykvm writes both, as the firmware would, instead
of relying on a quirk.

KVM_GET_LAPIC / KVM_SET_LAPIC move the APIC's 1 KiB register page
(struct kvm_lapic_state); each register sits at its MMIO offset.
"""
from __future__ import annotations

import struct

__all__ = ["virtual_wire", "APIC_LVT_LINT0", "APIC_LVT_LINT1"]

APIC_LVT_LINT0 = 0x350           # LVT LINT0 register offset
APIC_LVT_LINT1 = 0x360           # LVT LINT1 register offset
LVT_DELIVERY_MODE_SHIFT = 8      # bits 10..8: delivery mode
LVT_DELIVERY_MODE_MASK = 0x7 << LVT_DELIVERY_MODE_SHIFT
LVT_MASKED = 1 << 16             # bit 16: interrupt masked
DELIVERY_NMI = 0b100             # deliver as NMI
DELIVERY_EXTINT = 0b111          # ask the 8259 for the vector (INTA cycle)


def _set_delivery_mode(page: bytearray, offset: int, mode: int) -> None:
    (value,) = struct.unpack_from("<I", page, offset)
    value = (value & ~(LVT_DELIVERY_MODE_MASK | LVT_MASKED)) | (mode << LVT_DELIVERY_MODE_SHIFT)
    struct.pack_into("<I", page, offset, value)


def virtual_wire(lapic_page: bytes) -> bytes:
    """The register page with LINT0 = ExtINT and LINT1 = NMI, both unmasked."""
    page = bytearray(lapic_page)
    _set_delivery_mode(page, APIC_LVT_LINT0, DELIVERY_EXTINT)
    _set_delivery_mode(page, APIC_LVT_LINT1, DELIVERY_NMI)
    return bytes(page)
