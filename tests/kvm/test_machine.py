"""The whole machine: in-kernel irqchip, UART, debug-exit, ACPI power-off, run loop."""
import threading

import pytest

from guestasm import assemble, pvh_elf
from pykvm.errors import GuestError
from pykvm.vm.machine import Machine, MachineConfig

pytestmark = pytest.mark.kvm

POWER_OFF = """
    mov $0x604, %dx           # ACPI PM1a control
    mov $0x2000, %ax          # SLP_EN, sleep type 0 (S5: off)
    out %ax, %dx
"""


def run_guest(tmp_path, source: str, feed: list[bytes] = (), bits: int = 16):
    """Boot `source` as a raw binary; feed host input in chunks; return (status, output)."""
    kernel = tmp_path / "guest.bin"
    kernel.write_bytes(assemble(source, bits=bits))
    output = bytearray()
    config = MachineConfig(kernel=kernel, kernel_format="raw", output=output.extend)
    with Machine(config) as machine:
        if feed:
            machine.serial.receive(feed[0])

            def later():
                for chunk in feed[1:]:
                    machine.serial.wait_for_room(1.0)
                    machine.serial.receive(chunk)
            threading.Timer(0.2, later).start()
        status = machine.run()
    return status, bytes(output)


def test_debug_exit_sets_the_exit_status(tmp_path):
    status, _ = run_guest(tmp_path, """
        mov $3, %al
        out %al, $0xf4            # QEMU isa-debug-exit: status (3 << 1) | 1
    """)
    assert status == 7


def test_acpi_power_off_is_status_zero(tmp_path):
    status, _ = run_guest(tmp_path, POWER_OFF)
    assert status == 0


def test_polled_serial_output(tmp_path):
    status, output = run_guest(tmp_path, """
        mov $msg, %si
    next:
        lodsb
        test %al, %al
        jz off
        mov %al, %bl
        mov $0x3fd, %dx           # LSR
    wait:
        in %dx, %al
        test $0x20, %al           # THRE
        jz wait
        mov $0x3f8, %dx           # THR
        mov %bl, %al
        out %al, %dx
        jmp next
    off:
    """ + POWER_OFF + """
    msg: .asciz "polled hello\\n"
    """)
    assert (status, output) == (0, b"polled hello\n")


# A guest that takes the UART's receive interrupt through the in-kernel 8259 PIC
# and echoes every byte; 'q' powers it off.  The host feeds the second chunk from
# another thread while the guest sits in HLT: the interrupt must wake it.
ECHO_GUEST = """
    cli
    mov $0x11, %al; out %al, $0x20    # PIC ICW1: edge, cascade, ICW4 follows
    mov $0x20, %al; out %al, $0x21    # ICW2: IRQ 0-7 -> vectors 0x20-0x27
    mov $0x04, %al; out %al, $0x21    # ICW3: slave on IRQ 2
    mov $0x01, %al; out %al, $0x21    # ICW4: 8086 mode
    mov $0xEF, %al; out %al, $0x21    # OCW1: unmask IRQ 4 only
    mov $0xFF, %al; out %al, $0xA1    # slave: all masked
    movw $handler, 0x90               # IVT[0x24] = 0000:handler
    movw $0, 0x92
    mov $0x3f9, %dx; mov $1, %al; out %al, %dx    # IER: received data available
    mov $0x3fc, %dx; mov $8, %al; out %al, %dx    # MCR: OUT2
    sti
idle:
    hlt
    jmp idle
handler:
    mov $0x3fd, %dx
    in %dx, %al
    test $1, %al                      # LSR.DR: a byte is waiting
    jz eoi
    mov $0x3f8, %dx
    in %dx, %al                       # RBR
    out %al, %dx                      # THR: echo it
    cmp $'q', %al
    jne handler
""" + POWER_OFF + """
eoi:
    mov $0x20, %al; out %al, $0x20    # EOI to the master PIC
    iret
"""


def test_receive_interrupt_echo(tmp_path):
    status, output = run_guest(tmp_path, ECHO_GUEST, feed=[b"hello ", b"world q"])
    assert status == 0
    assert output == b"hello world q", output


# A PVH guest (32-bit protected mode) with an IDT of limit 0: any exception is a triple fault.
FAULTING_GUEST = """
    lidt idt
    {instruction}
idt: .word 0
     .long 0
"""


def stopped_with_error(source: str, tmp_path) -> str:
    """Boot `source` as a PVH guest; it must stop with a GuestError, whose message is returned."""
    kernel = pvh_elf(source, tmp_path / "guest.elf")
    with pytest.raises(GuestError) as info:
        with Machine(MachineConfig(kernel=kernel, output=lambda data: None)) as machine:
            machine.run()
    return str(info.value)


def test_triple_fault_stops_the_vm_with_a_register_dump(tmp_path):
    message = stopped_with_error(FAULTING_GUEST.format(instruction="ud2"), tmp_path)
    assert "triple fault" in message
    assert "rip=" in message and "cr0=" in message, message


def test_unmapped_port_reads_all_ones_and_the_guest_goes_on(tmp_path, caplog):
    status, _ = run_guest(tmp_path, """
        in $0x80, %al             # nothing at port 0x80
        out %al, $0x80            # same address: not logged again
        out %al, $0x80
        out %al, $0xf4            # debug-exit with what we read
    """)
    assert status == (0xFF << 1) | 1
    unmapped = [r for r in caplog.records if "unmapped" in r.getMessage()]
    assert len(unmapped) == 1, [r.getMessage() for r in unmapped]  # once per address


def test_emulation_failure_names_the_instruction(tmp_path):
    """int3 in guest kernel mode: PVM's instruction emulator cannot run it (DEVELOPERS.md);
    hardware KVM delivers #BP, which with no IDT becomes a triple fault.  Either way the VM
    stops with the reason and the registers, and on PVM with the instruction's bytes."""
    from tiers import kvm_flavour

    message = stopped_with_error(FAULTING_GUEST.format(instruction="int3"), tmp_path)
    assert "rip=" in message, message
    if kvm_flavour() == "pvm":
        assert "emulation failure" in message and "cc" in message, message
    else:
        assert "triple fault" in message, message
