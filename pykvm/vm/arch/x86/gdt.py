"""Segment descriptors: the boot GDT, and the same segments as KVM wants them.

On x86 a segment register has a visible selector and a hidden part (base,
limit, access rights) that the CPU loads from the GDT.  KVM_SET_SREGS sets the
hidden part directly, but the guest may reload a segment at any time, so we
also write a GDT into guest memory whose entries match what we set: both are
generated from one table of (flags, base, limit) here, as Firecracker's gdt.rs
does.

Descriptor format: Intel SDM Vol. 3A, 3.4.5 "Segment Descriptors".
`flags` packs the access byte (bits 0-7: type, S, DPL, P) and the high nibble
(bits 12-15: AVL, L, D/B, G), the way the descriptor stores them.

Selectors follow the Linux x86 boot protocol (Documentation/arch/x86/boot.rst,
"64-bit BOOT PROTOCOL"): __BOOT_CS = 0x10, __BOOT_DS = 0x18.
"""
from __future__ import annotations

import struct

__all__ = [
    "CODE32_FLAGS", "CODE64_FLAGS", "DATA_FLAGS", "TSS_FLAGS", "BOOT_CS", "BOOT_DS", "BOOT_TSS",
    "gdt_entry", "boot_gdt", "kvm_segment",
]

CODE32_FLAGS = 0xC09B  # G=1 D=1, P=1 DPL=0 S=1, type 0xB: execute/read, accessed
CODE64_FLAGS = 0xA09B  # G=1 L=1, P=1 DPL=0 S=1, type 0xB
DATA_FLAGS = 0xC093    # G=1 B=1, P=1 DPL=0 S=1, type 0x3: read/write, accessed
TSS_FLAGS = 0x008B     # P=1, S=0, type 0xB: busy 32/64-bit TSS
FLAT_LIMIT = 0xFFFFF   # with G=1: 4 GiB

BOOT_CS = 0x10         # selector of the code segment (GDT entry 2)
BOOT_DS = 0x18         # selector of the data segment (GDT entry 3)
BOOT_TSS = 0x20        # selector of the TSS (GDT entry 4)


def gdt_entry(flags: int, base: int, limit: int) -> int:
    """Pack one 8-byte segment descriptor (SDM Vol. 3A, Figure 3-8)."""
    return (((base & 0xFF000000) << 32) | ((flags & 0xF0FF) << 40) |
            ((limit & 0xF0000) << 32) | ((base & 0x00FFFFFF) << 16) | (limit & 0xFFFF))


def boot_gdt(long_mode: bool) -> list[tuple[int, int, int]]:
    """The boot GDT as (flags, base, limit) per entry: null, null, code, data, TSS."""
    code = CODE64_FLAGS if long_mode else CODE32_FLAGS
    return [(0, 0, 0), (0, 0, 0), (code, 0, FLAT_LIMIT), (DATA_FLAGS, 0, FLAT_LIMIT),
            (TSS_FLAGS, 0, 0x67)]


def gdt_bytes(entries: list[tuple[int, int, int]]) -> bytes:
    """The GDT as the CPU reads it from memory."""
    return b"".join(struct.pack("<Q", gdt_entry(*e)) for e in entries)


def kvm_segment(segment, selector: int, flags: int, base: int, limit: int) -> None:
    """Fill a `struct kvm_segment` with the hidden state the CPU would load for this descriptor."""
    granular = (flags >> 15) & 1
    segment.base = base
    segment.limit = (limit << 12) | 0xFFF if granular else limit
    segment.selector = selector
    segment.type = flags & 0xF
    segment.s = (flags >> 4) & 1
    segment.dpl = (flags >> 5) & 3
    segment.present = (flags >> 7) & 1
    segment.avl = (flags >> 12) & 1
    segment.l = (flags >> 13) & 1
    segment.db = (flags >> 14) & 1
    segment.g = granular
    segment.unusable = 0 if segment.present else 1
