"""A kernel finds the legacy chips as a BIOS leaves them (boot/firmware.py, step 4), a raw binary does not.

The guest is a PVH ELF (32-bit protected mode, interrupts off): it prints the
two PICs' interrupt masks (OCW1, read at ports 0x21 and 0xa1), points IDT
vector 08h at a handler and waits with `sti; hlt`.  The BIOS tick (PIT
channel 0, IRQ 0) must arrive on vector 08h, where a BIOS-programmed master
PIC sends IRQ 0; any other vector hits an empty gate and triple-faults.  The
same ELF runs under QEMU, whose SeaBIOS leaves the tick running too.
"""
from __future__ import annotations

import errno
import shutil
import subprocess
import threading

import pytest

from guestasm import pvh_elf
from pykvm.errors import KvmIoctlError
from pykvm.vm.kvm.bindings import ffi
from pykvm.vm.kvm.vm import IRQCHIP_PIC_MASTER, IRQCHIP_PIC_SLAVE
from pykvm.vm.machine import Machine, MachineConfig

pytestmark = pytest.mark.kvm

QEMU = "qemu-system-x86_64"
TIMER_VECTOR = 0x08
POWER_OFF = """
    mov $0x604, %dx                   # ACPI PM1a control: SLP_EN, S5
    mov $0x2000, %ax
    out %ax, %dx
"""
NO_TICK_S = 60              # a bound, not a measurement: 18.2 ticks a second are due
NO_TICK_STATUS = 99
WAIT_FOR_THE_TICK = f"""
    mov $stack_top, %esp              # PVH gives no stack; the interrupt pushes onto this one
    mov $0x3f8, %dx
    in $0x21, %al
    out %al, %dx                      # the master's interrupt mask
    in $0xa1, %al
    out %al, %dx                      # the slave's
    mov $tick, %eax
    mov %ax, idt + 8 * {TIMER_VECTOR}          # 32-bit interrupt gate: offset 15..0
    mov %cs, %bx
    mov %bx, idt + 8 * {TIMER_VECTOR} + 2      # selector: this code segment
    movw $0x8E00, idt + 8 * {TIMER_VECTOR} + 4 # present, DPL 0, interrupt gate
    shr $16, %eax
    mov %ax, idt + 8 * {TIMER_VECTOR} + 6      # offset 31..16
    lidt idtr
    sti
1:  hlt
    jmp 1b
tick:
    mov $0x3f8, %dx
    mov $'T', %al
    out %al, %dx
    mov $0x604, %dx                   # ACPI PM1a control: SLP_EN, S5
    mov $0x2000, %ax
    out %ax, %dx
2:  jmp 2b
idtr: .word 256 * 8 - 1
      .long idt
idt:  .fill 256 * 8, 1, 0
      .fill 256, 1, 0
stack_top:
"""


def test_the_bios_tick_arrives_on_int_08h_and_the_masks_are_the_bioss(tmp_path):
    kernel = pvh_elf(WAIT_FOR_THE_TICK, tmp_path / "tick.elf")
    output = bytearray()
    with Machine(MachineConfig(kernel=kernel, output=output.extend)) as machine:
        no_tick = threading.Timer(NO_TICK_S, machine.stop, (NO_TICK_STATUS,))   # without one, HLT waits forever
        no_tick.start()
        try:
            status = machine.run()
        finally:
            no_tick.cancel()
    # master: IRQ 0 (timer) and 2 (cascade) open; slave: IRQ 8 (RTC) and 13 (FPU) open
    assert (status, bytes(output)) == (0, b"\xfa\xdeT"), (status, bytes(output))


def test_qemu_also_leaves_the_tick_on_int_08h(tmp_path):
    """The reference: SeaBIOS before QEMU's PVH boot (its masks open more lines: its disk, keyboard)."""
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} is not installed (.ci/packages installs qemu-system-x86)")
    kernel = pvh_elf(WAIT_FOR_THE_TICK, tmp_path / "tick.elf")
    result = subprocess.run([QEMU, "-nodefaults", "-display", "none", "-machine", "pc,accel=kvm",
                             "-m", "128", "-serial", "stdio", "-kernel", str(kernel)],
                            capture_output=True, timeout=120)
    assert result.stdout.endswith(b"T"), (result.stdout, result.stderr[-500:])


def _pic_state(machine, chip):
    state = ffi.new("struct kvm_irqchip *")
    ffi.buffer(state)[:] = machine.vm.get_irqchip(chip)
    return state.chip.pic


def test_kvm_holds_the_bios_vector_bases_for_a_kernel_and_reset_ones_for_a_raw_binary(tmp_path):
    kernel = pvh_elf(WAIT_FOR_THE_TICK, tmp_path / "tick.elf")
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"\xf4")                                        # hlt
    with Machine(MachineConfig(kernel=kernel)) as machine:
        bases = [_pic_state(machine, chip).irq_base for chip in (IRQCHIP_PIC_MASTER, IRQCHIP_PIC_SLAVE)]
    assert bases == [0x08, 0x70]
    with Machine(MachineConfig(kernel=raw, kernel_format="raw")) as machine:
        bases = [_pic_state(machine, chip).irq_base for chip in (IRQCHIP_PIC_MASTER, IRQCHIP_PIC_SLAVE)]
    assert bases == [0, 0]                 # no firmware: the 8259As as KVM resets them


def test_without_a_pit_kvm_has_none_the_guest_still_boots_and_a_snapshot_is_refused(tmp_path, capfd):
    """pit=False (--no-pit, QEMU's -machine pit=off): no in-kernel 8254 is made or programmed."""
    kernel = pvh_elf(POWER_OFF, tmp_path / "off.elf")
    with Machine(MachineConfig(kernel=kernel, pit=False, snapshot_dir=tmp_path / "snap")) as machine:
        with pytest.raises(KvmIoctlError) as raised:
            machine.vm.get_pit2()
        assert raised.value.errno == errno.ENXIO, raised.value
        machine.request_snapshot()
        assert machine.run() == 0
    assert "without a PIT (--no-pit)" in capfd.readouterr().err
    assert not (tmp_path / "snap").exists()
