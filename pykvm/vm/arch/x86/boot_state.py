"""The vCPU's state at the guest's first instruction, for each way a guest starts.

A loader (pykvm.vm.boot) decides *where* a guest starts and in which CPU mode,
and returns it as an Entry; this module sets the registers that mode needs:

- REAL: 16-bit real mode, CS base 0 (raw flat binaries; the CPU's reset mode).
- PROTECTED: 32-bit protected mode, paging off, flat 4 GiB segments: the PVH
  entry state (xen docs/misc/pvh.pandoc: CR0.PE=1, CR0.PG=0, CR4=0, flat
  CS/DS/ES/SS, a valid TR, EFLAGS.IF=0) and the Linux 32-bit boot protocol.
- LONG: 64-bit mode with an identity map of the first 1 GiB: the Linux 64-bit
  boot protocol (boot.rst, "64-bit BOOT PROTOCOL").

Bit names: Intel SDM Vol. 3A, 2.5 "Control Registers", and 2.2.1 for EFER.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from pykvm.vm.arch.x86 import gdt
from pykvm.vm import layout

__all__ = ["CpuMode", "Entry", "set_entry_registers", "write_identity_map", "wake_in_real_mode"]

CR0_PE = 1 << 0        # protection enable
CR0_ET = 1 << 4        # extension type (always 1 on modern CPUs)
CR0_PG = 1 << 31       # paging
CR4_PAE = 1 << 5       # physical address extension (required for long mode)
EFER_LME = 1 << 8      # long mode enable
EFER_LMA = 1 << 10     # long mode active
RFLAGS_RESERVED = 1 << 1  # bit 1 of RFLAGS is always 1
REAL_MODE_LIMIT = 0xFFFF  # 64 KiB segments
REAL_MODE_IVT_LIMIT = 0x3FF  # 256 four-byte vectors at address 0
SEGMENT_DATA = 0x3        # read/write, accessed
SEGMENT_CODE = 0xB        # execute/read, accessed

PTE_PRESENT = 1 << 0   # page-table entry: present
PTE_WRITE = 1 << 1     # writable
PTE_HUGE = 1 << 7      # page directory entry maps a 2 MiB page


class CpuMode(enum.Enum):
    REAL = "real"
    PROTECTED = "protected"
    LONG = "long"


@dataclass
class Entry:
    """Where and how a loaded guest starts: mode, first instruction, and registers to preset."""

    mode: CpuMode
    rip: int
    registers: dict[str, int] = field(default_factory=dict)  # e.g. {"rbx": start_info}
    protocol: str = ""   # a name for messages and `info`: "PVH", "Linux boot protocol 2.15", ...


def set_entry_registers(vcpu, memory, entry: Entry) -> None:
    """Set `vcpu`'s segment, control and general registers for `entry`.

    The last step of configuring a vCPU (pykvm.vm.arch.x86.vcpu.configure_vcpu);
    on its own, all a bare vCPU needs to run a few bytes of code.

    Order matters: special registers (mode) first, then general registers,
    because KVM_SET_REGS' RIP is interpreted in the mode already set.
    """
    sregs = vcpu.get_sregs()
    if entry.mode is CpuMode.REAL:
        _real_mode(sregs)
    else:
        _protected_or_long_mode(sregs, memory, long_mode=entry.mode is CpuMode.LONG)
    vcpu.set_sregs(sregs)

    regs = vcpu.get_regs()
    regs.rip = entry.rip
    regs.rflags = RFLAGS_RESERVED
    for name, value in entry.registers.items():
        setattr(regs, name, value)
    vcpu.set_regs(regs)


def _real_mode(sregs) -> None:
    """Reset state, but with CS base 0 so RIP is a plain physical address."""
    sregs.cs.base = 0
    sregs.cs.selector = 0


def wake_in_real_mode(vcpu, address: int) -> None:
    """Restart `vcpu` where firmware resumes an OS from S3: real mode at `address`.

    ACPI 6.5, 5.2.10 (FACS, Firmware Waking Vector): "the BIOS ... transfers
    control to this address in real mode: for 0x12345, CS = 0x1234, IP = 0x0005".
    Paging, protection and long mode are off; the interrupt table is the IVT.
    """
    sregs = vcpu.get_sregs()
    for segment in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        _real_mode_segment(segment, 0, SEGMENT_DATA)
    _real_mode_segment(sregs.cs, address >> 4, SEGMENT_CODE)
    sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer = CR0_ET, 0, 0, 0
    sregs.idt.base, sregs.idt.limit = 0, REAL_MODE_IVT_LIMIT
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rip, regs.rflags = address & 0xF, RFLAGS_RESERVED
    vcpu.set_regs(regs)


def _real_mode_segment(segment, selector: int, kind: int) -> None:
    segment.selector, segment.base, segment.limit = selector, selector << 4, REAL_MODE_LIMIT
    segment.type, segment.s, segment.present, segment.unusable = kind, 1, 1, 0
    segment.dpl = segment.db = segment.l = segment.g = segment.avl = 0


def _protected_or_long_mode(sregs, memory, long_mode: bool) -> None:
    entries = gdt.boot_gdt(long_mode)
    memory.write(layout.BOOT_GDT, gdt.gdt_bytes(entries))
    sregs.gdt.base = layout.BOOT_GDT
    sregs.gdt.limit = len(entries) * 8 - 1
    code, data, tss = entries[2], entries[3], entries[4]
    gdt.kvm_segment(sregs.cs, gdt.BOOT_CS, *code)
    for segment in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        gdt.kvm_segment(segment, gdt.BOOT_DS, *data)
    gdt.kvm_segment(sregs.tr, gdt.BOOT_TSS, *tss)
    sregs.cr0 = CR0_PE | CR0_ET
    sregs.cr4 = 0
    sregs.efer = 0
    if long_mode:
        write_identity_map(memory)
        sregs.cr3 = layout.PML4_START
        sregs.cr4 |= CR4_PAE
        sregs.cr0 |= CR0_PG
        sregs.efer |= EFER_LME | EFER_LMA


def write_identity_map(memory) -> None:
    """Page tables mapping the first 1 GiB virtual = physical with 2 MiB pages.

    PML4[0] -> PDPT; PDPT[0] -> PD; PD[i] -> i * 2 MiB (SDM Vol. 3A, 4.5 "4-Level Paging").
    """
    memory.write(layout.PML4_START, struct.pack("<Q", layout.PDPTE_START | PTE_PRESENT | PTE_WRITE))
    memory.write(layout.PDPTE_START, struct.pack("<Q", layout.PDE_START | PTE_PRESENT | PTE_WRITE))
    pd = b"".join(struct.pack("<Q", (i << 21) | PTE_PRESENT | PTE_WRITE | PTE_HUGE) for i in range(512))
    memory.write(layout.PDE_START, pd)
