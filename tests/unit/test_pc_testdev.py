"""QEMU's pc-testdev registers (hw/misc/pc-testdev.c), without a VM."""
from __future__ import annotations

import mmap

from pykvm.vm.devices.pc_testdev import (FLUSH_PAGE, SCRATCH, SCRATCH_BYTES, ScratchMemory, IrqLinePorts,
                                      ScratchPorts, remap_page)
from pykvm.vm.memory import GuestMemory


def test_scratch_register_any_width_any_offset_both_windows():
    flushed = []
    dev = ScratchPorts(flushed.append)
    dev.write(SCRATCH, 4, 0x11223344)
    assert dev.read(SCRATCH, 4) == 0x11223344
    assert dev.read(SCRATCH + 1, 1) == 0x33 and dev.read(SCRATCH + 2, 2) == 0x1122
    dev.write(SCRATCH + 1, 2, 0xAABB)
    assert dev.read(SCRATCH, 4) == 0x11AABB44
    assert dev.read(SCRATCH_BYTES + 3, 1) == 0x11                  # the byte-wise window
    dev.write(SCRATCH_BYTES, 1, 0x99)
    assert dev.read(SCRATCH, 4) == 0x11AABB99
    assert flushed == []


def test_flush_page_takes_a_32_bit_write_and_passes_the_page():
    flushed = []
    dev = ScratchPorts(flushed.append)
    dev.write(FLUSH_PAGE, 4, 0x12345678)
    dev.write(FLUSH_PAGE, 1, 0x12)                                  # wrong width: ignored (QEMU)
    assert flushed == [0x12345000]
    assert dev.read(FLUSH_PAGE, 4) == 0xFFFFFFFF                    # write-only


def test_irq_lines_follow_the_written_value():
    lines = []
    dev = IrqLinePorts(lambda irq, level: lines.append((irq, level)))
    dev.write(11, 1, 1)
    dev.write(11, 1, 0)
    dev.write(4, 4, 0x100)
    assert lines == [(11, 1), (11, 0), (4, 1)]


def test_iomem_is_little_endian_scratch_memory():
    dev = ScratchMemory()
    dev.write(0x10, 8, 0x0807060504030201)
    assert dev.read(0x12, 2) == 0x0403 and dev.read(0x10, 1) == 1


def test_remap_page_keeps_the_contents_and_ignores_addresses_outside_ram():
    with GuestMemory(4 << 20) as mem:
        mem.write(0x200000, b"kept")
        remap_page(mem, 0x200000)
        assert mem.read(0x200000, 4) == b"kept"
        remap_page(mem, 0xFFFFF000)                                 # not RAM: nothing happens
        remap_page(mem, (4 << 20) - mmap.PAGESIZE)
