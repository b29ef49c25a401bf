"""The real-mode interrupt vector table a PC BIOS leaves, with stub handlers behind it.

Spec: Intel SDM Vol. 3A 20.1.4 "Interrupt and Exception Handling" (real-address
mode): vector n's handler is the far pointer (offset, then segment; 16 bits
each) at physical address 4 * n.  A BIOS fills all 256 entries: its services
(INT 10h, 13h, 15h ...), its hardware interrupt handlers (INT 08h-0Fh and
70h-77h, where pic.py sends IRQs) and, for everything else, a lone IRET.
pykvm has no BIOS services, so every vector points at one of three stubs in
the BIOS area (layout.BIOS_STUBS):

    IRET                     software interrupts and exceptions: return at once
    EOI to the master, IRET  IRQ 0-7 (INT 08h-0Fh)
    EOI to both, IRET        IRQ 8-15 (INT 70h-77h): the slave, then the master

SeaBIOS's own handlers (src/romlayout.S entry_hwpic1/entry_hwpic2) do the
same for IRQs it has no driver for; its timer handler also counts ticks in
the BIOS Data Area, which the stubs do not.  A kernel that sets its own IDT
or IVT entries (Linux, kvm-unit-tests' realmode) replaces what it uses.
"""
from __future__ import annotations

import struct

from pykvm.vm.arch.x86 import pic

__all__ = ["bios_ivt", "bios_stubs", "VECTORS", "IVT_SIZE"]

VECTORS = 256
ENTRY_SIZE = 4                 # offset:segment, 16 bits each
IVT_SIZE = VECTORS * ENTRY_SIZE
OCW2_EOI = 0x20                # OCW2: non-specific end of interrupt
MASTER_COMMAND = 0x20          # the master 8259A's command port
SLAVE_COMMAND = 0xA0           # the slave's

IRET = bytes([0xCF])                                           # iret
MASTER_EOI = bytes([0x50,                                      # push ax
                    0xB0, OCW2_EOI,                            # mov al, 20h
                    0xE6, MASTER_COMMAND,                      # out 20h, al
                    0x58]) + IRET                              # pop ax; iret
SLAVE_EOI = bytes([0x50,                                       # push ax
                   0xB0, OCW2_EOI,                             # mov al, 20h
                   0xE6, SLAVE_COMMAND,                        # out 0a0h, al
                   0xE6, MASTER_COMMAND,                       # out 20h, al
                   0x58]) + IRET                               # pop ax; iret
IRET_OFFSET = 0                                 # each stub's offset in the stubs' segment
MASTER_EOI_OFFSET = IRET_OFFSET + len(IRET)
SLAVE_EOI_OFFSET = MASTER_EOI_OFFSET + len(MASTER_EOI)


def bios_stubs() -> bytes:
    """The three stubs, to be written at the start of the stubs' segment."""
    return IRET + MASTER_EOI + SLAVE_EOI


def bios_ivt(stubs_address: int) -> bytes:
    """The 1 KiB table for physical address 0, every vector pointing at a stub at `stubs_address`
    (a multiple of 16, below 1 MiB: real mode's segment:offset reaches it as segment:0)."""
    assert stubs_address % 16 == 0 and stubs_address < 1 << 20, hex(stubs_address)
    segment = stubs_address >> 4
    master = {pic.irq_vector(irq) for irq in range(8)}
    slave = {pic.irq_vector(irq) for irq in range(8, 16)}
    table = bytearray()
    for vector in range(VECTORS):
        offset = (MASTER_EOI_OFFSET if vector in master else
                  SLAVE_EOI_OFFSET if vector in slave else IRET_OFFSET)
        table += struct.pack("<HH", offset, segment)
    return bytes(table)
