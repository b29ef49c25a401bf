"""What the firmware step leaves in the legacy chips and the IVT (arch/x86 pic.py, pit.py, ivt.py).  No KVM."""
from __future__ import annotations

import struct
import subprocess

import pytest

from pykvm.vm import layout
from pykvm.vm.arch.x86 import ivt, pic, pit
from pykvm.vm.kvm.bindings import ffi


def _pic_after(slave: bool):
    cold = ffi.new("struct kvm_irqchip *")          # as KVM resets a PIC: base 0, nothing masked
    warm = ffi.new("struct kvm_irqchip *")
    ffi.buffer(warm)[:] = pic.bios_state(bytes(ffi.buffer(cold)), slave)
    return warm.chip.pic


def test_the_master_pic_sends_irq_0_to_7_to_int_08h_with_the_timer_and_cascade_unmasked():
    master = _pic_after(slave=False)
    assert (master.irq_base, master.imr, master.init_state, master.elcr) == (0x08, 0xFA, 0, 0)


def test_the_slave_pic_sends_irq_8_to_15_to_int_70h_with_the_rtc_and_fpu_unmasked():
    slave = _pic_after(slave=True)
    assert (slave.irq_base, slave.imr, slave.init_state, slave.elcr) == (0x70, 0xDE, 0, 0)


@pytest.mark.parametrize("irq, vector", [(0, 0x08), (7, 0x0F), (8, 0x70), (11, 0x73), (15, 0x77)])
def test_irq_vectors_are_the_bioss(irq, vector):
    assert pic.irq_vector(irq) == vector


def test_the_pit_channel_0_is_a_rate_generator_with_the_full_count():
    cold = ffi.new("struct kvm_pit_state2 *")
    cold.channels[2].gate = 0
    warm = ffi.new("struct kvm_pit_state2 *")
    ffi.buffer(warm)[:] = pit.bios_state(bytes(ffi.buffer(cold)))
    timer = warm.channels[0]
    assert (timer.mode, timer.count, timer.rw_mode, timer.gate) == (2, 0, 3, 1)
    assert warm.channels[2].gate == 0                # the speaker's channel is left alone


def _vector(table: bytes, n: int) -> tuple[int, int]:
    offset, segment = struct.unpack_from("<HH", table, 4 * n)
    return segment, offset


def test_every_vector_points_into_the_stubs_and_irqs_end_their_interrupt():
    table, stubs = ivt.bios_ivt(layout.BIOS_STUBS), ivt.bios_stubs()
    assert len(table) == 1024
    segment = layout.BIOS_STUBS >> 4
    assert {_vector(table, n)[0] for n in range(256)} == {segment}
    assert stubs[_vector(table, 0x10)[1]:][:1] == b"\xcf"                          # INT 10h: iret
    assert stubs[_vector(table, 0x08)[1]:].startswith(ivt.MASTER_EOI)              # IRQ 0
    assert stubs[_vector(table, 0x73)[1]:].startswith(ivt.SLAVE_EOI)               # IRQ 11


def test_the_stubs_disassemble_to_eoi_and_iret(tmp_path):
    """objdump decodes the hand-encoded 16-bit stubs: each ends in iret, the EOIs out 0x20."""
    binary = tmp_path / "stubs.bin"
    binary.write_bytes(ivt.bios_stubs())
    try:
        listing = subprocess.run(["objdump", "-D", "-b", "binary", "-m", "i8086", str(binary)],
                                 capture_output=True, text=True, check=True).stdout
    except FileNotFoundError:
        pytest.skip("objdump (binutils) is not installed")
    instructions = [line.split("\t")[-1].strip() for line in listing.splitlines() if ":\t" in line]
    assert instructions == ["iret",
                            "push   %ax", "mov    $0x20,%al", "out    %al,$0x20", "pop    %ax", "iret",
                            "push   %ax", "mov    $0x20,%al", "out    %al,$0xa0", "out    %al,$0x20",
                            "pop    %ax", "iret"], listing
