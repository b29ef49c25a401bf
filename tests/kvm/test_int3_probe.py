"""The L1 lane's proof that it runs on hardware-style KVM: int3 in guest kernel mode.

A breakpoint (int3, opcode CC) raises #BP, vector 3, delivered through the IDT
(Intel SDM vol. 3A, 6.4.2 "Software-Generated Exceptions"; 6.11 "IDT
Descriptors" for the interrupt gate).  The guest runs at CPL 0 in flat 32-bit
protected mode with an IDT of its own: its #BP handler writes a byte to one
port and returns with iret, then the main code writes to a second port and
halts.

On hardware KVM (SVM or VMX, also in the L1 lane, `make test-hw`) the CPU
delivers #BP itself and both writes arrive.  On PVM, guest kernel mode runs in
KVM's instruction emulator, which cannot emulate int3: KVM_RUN stops with
KVM_EXIT_INTERNAL_ERROR (emulation failure) before the handler runs.  So the
first test passes only where VM tests get hardware semantics, and the second
shows the probe tells the two apart (docs/contributing-test-lanes.md).
"""
import pytest

from tiers import kvm_flavour
from pykvm.vm.arch.x86 import gdt
from pykvm.vm.kvm import Hlt, InternalError, IoOut
from vmkit import bare_vm

pytestmark = pytest.mark.kvm

HANDLER_PORT, HANDLER_BYTE = 0x10, 0x33   # written by the #BP handler
AFTER_PORT, AFTER_BYTE = 0x11, 0x44       # written once iret has returned
STACK_TOP = 0x8000                        # int3 pushes EFLAGS, CS, EIP here
INT3 = b"\xcc"

PROBE = f"""
    mov ${STACK_TOP:#x}, %esp
    lidt idtr
    int3                            /* #BP at CPL 0 */
    mov ${AFTER_BYTE:#x}, %al
    out %al, ${AFTER_PORT:#x}
    hlt
handler:
    mov ${HANDLER_BYTE:#x}, %al
    out %al, ${HANDLER_PORT:#x}
    iret
    .balign 8
idt:                                /* SDM 6.11: 8-byte gates; vectors 0-2 not present */
    .fill 3, 8, 0
    .word handler, {gdt.BOOT_CS:#x}  /* vector 3: offset 15..0, code segment selector */
    .byte 0, 0x8e                   /* P=1, DPL=0, type 1110b: 32-bit interrupt gate */
    .word 0                         /* offset 31..16: the handler is below 64 KiB */
idtr:
    .word 4 * 8 - 1
    .long idt
"""


def run_probe():
    """Run the probe: (port writes as (port, bytes), the exit that stopped it)."""
    writes = []
    with bare_vm(PROBE, bits=32) as (vm, vcpu, mem):
        while isinstance(exit := vcpu.run(), IoOut) and len(writes) < 8:
            writes.append((exit.port, bytes(exit.data)))
    return writes, exit


def test_int3_in_kernel_mode_reaches_its_handler():
    flavour = kvm_flavour()
    if flavour not in ("svm", "vmx"):
        pytest.skip(f"needs hardware-style KVM, this is {flavour}: PVM's emulator cannot "
                    "run int3 in kernel mode; `make test-hw` runs this in the L1 lane")
    writes, exit = run_probe()
    assert writes == [(HANDLER_PORT, bytes([HANDLER_BYTE])), (AFTER_PORT, bytes([AFTER_BYTE]))], \
        f"port writes {writes}, then {exit}"
    assert isinstance(exit, Hlt), exit


def test_pvm_cannot_emulate_int3_in_kernel_mode():
    if kvm_flavour() != "pvm":
        pytest.skip(f"shows a limit of PVM only; this is {kvm_flavour()}")
    writes, exit = run_probe()
    assert writes == [], f"the handler ran on PVM: writes {writes}"
    assert isinstance(exit, InternalError) and exit.description == "emulation failure", exit
    # KVM names the instruction it could not emulate, when it reports the bytes.
    assert exit.insn_bytes[:1] in (b"", INT3), f"instruction bytes {exit.insn_bytes.hex()}"
