"""QEMU's pc-testdev: the ISA test device kvm-unit-tests drives (`-device pc-testdev`).

Source: QEMU hw/misc/pc-testdev.c ("QEMU x86 ISA testdev", Avi Kivity,
Gerd Hoffmann, Marcelo Tosatti, 2012).  It has no datasheet: its registers
exist so a test can make the VMM do things on cue.

    port 0xe0-0xe3   a 32-bit scratch register: any width, any offset (emulator, realmode: I/O)
    port 0xe4-0xe7   flush page: a 32-bit write of a guest-physical address makes the host
                     unmap and remap that page (mprotect), so KVM must fault it in again
                     (eventinj: an exception while the IDT's page is not mapped)
    port 0xe8-0xeb   the same scratch register, accessed byte by byte
    port 0x2000-0x2017  IRQ lines: writing V to 0x2000 + N sets ISA IRQ N to (V != 0)
                     (realmode, apic, ioapic: interrupts on cue)
    MMIO 0xff000000  64 KiB of scratch memory that is not RAM: every access exits
                     (emulator: string I/O and moves into MMIO)

Three parts, three bus insertions: PORTS (0xe0, 12 ports), IRQ_LINES (0x2000, 24
ports) and IOMEM (MMIO).  Each sees offsets from its own base.
"""
from __future__ import annotations

import ctypes
import logging
import mmap
from typing import Callable

from pykvm.vm.devices.bus import BusDevice

__all__ = ["ScratchPorts", "IrqLinePorts", "ScratchMemory", "PORTS_BASE", "PORTS_LENGTH",
           "IRQ_LINES_BASE", "IRQ_LINES_LENGTH", "IOMEM_LENGTH", "remap_page"]

log = logging.getLogger("pykvm.vm.devices.pc_testdev")

PORTS_BASE = 0xE0           # scratch register, flush page, byte-wise scratch register
PORTS_LENGTH = 12
SCRATCH = 0x0               # offsets from PORTS_BASE
FLUSH_PAGE = 0x4
SCRATCH_BYTES = 0x8
REGISTER_SIZE = 4
IRQ_LINES_BASE = 0x2000     # one port per ISA IRQ line
IRQ_LINES_LENGTH = 24
IOMEM_LENGTH = 0x10000      # MMIO scratch window (IOMEM_LEN in QEMU), at layout.PC_TESTDEV_IOMEM
PAGE_MASK = ~0xFFF


class ScratchPorts(BusDevice):
    """Ports 0xe0-0xeb: the scratch register twice and, between them, the flush-page port."""

    def __init__(self, flush_page: Callable[[int], None]):
        self.data = 0                       # the 32-bit scratch register
        self._flush_page = flush_page

    def read(self, offset: int, size: int) -> int:
        if FLUSH_PAGE <= offset < SCRATCH_BYTES:
            return super().read(offset, size)        # write-only port
        shift = 8 * (offset % REGISTER_SIZE)
        return (self.data >> shift) & ((1 << 8 * size) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        if FLUSH_PAGE <= offset < SCRATCH_BYTES:
            if size == REGISTER_SIZE:
                self._flush_page(value & PAGE_MASK)
            return
        shift = 8 * (offset % REGISTER_SIZE)
        mask = ((1 << 8 * size) - 1) << shift & 0xFFFFFFFF
        self.data = (self.data & ~mask) | ((value << shift) & mask)


class IrqLinePorts(BusDevice):
    """Ports 0x2000 + N: set ISA IRQ line N to the written value's truth."""

    def __init__(self, irq_line: Callable[[int, int], None]):
        self._irq_line = irq_line

    def write(self, offset: int, size: int, value: int) -> None:
        self._irq_line(offset, 1 if value else 0)


class ScratchMemory(BusDevice):
    """64 KiB of memory behind MMIO exits; accesses are little-endian, any width."""

    def __init__(self):
        self.buffer = bytearray(IOMEM_LENGTH)

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.buffer[offset:offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        self.buffer[offset:offset + size] = value.to_bytes(size, "little")


# The C library is already in the process: CDLL(None) finds mprotect there.  (Not
# ctypes.util.find_library("c"), which runs `ldconfig -p` in a child process, at every
# import.)
_libc = ctypes.CDLL(None, use_errno=True)
PROT_NONE = 0


def remap_page(memory, address: int) -> None:
    """QEMU's test_flush_page: mprotect the page away and back; KVM's MMU notifier drops it.

    `address` comes from the guest: outside guest RAM it does nothing (QEMU maps nothing).
    """
    if not memory.contains(address, mmap.PAGESIZE):
        log.info("flush-page of %#x: not guest RAM, ignored", address)
        return
    view = memory.view(address, mmap.PAGESIZE)
    try:
        first_byte = ctypes.c_char.from_buffer(view)
        host = ctypes.addressof(first_byte)
        del first_byte                     # drop the buffer export before view.release()
        _libc.mprotect(ctypes.c_void_p(host), mmap.PAGESIZE, PROT_NONE)
        _libc.mprotect(ctypes.c_void_p(host), mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        view.release()
