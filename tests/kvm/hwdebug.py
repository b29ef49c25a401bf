"""Which of KVM's ways to stop a guest work on this /dev/kvm?  Probes, for the gdb tests.

KVM_SET_GUEST_DEBUG (api.rst 4.54) stops a guest three ways, each reported as
KVM_EXIT_DEBUG:
  * USE_HW_BP loads pykvm's DR0-DR7 while the guest runs; an instruction fetch
    at DR0's address raises #DB;
  * SINGLESTEP sets the trap flag: #DB after every instruction;
  * USE_SW_BP catches the #BP of an int3 written over the code.
Hardware KVM does all three.  PVM-backed KVM does the first two (probed with a
real-mode guest) but hangs on int3, so pykvm's gdb stub uses debug registers
there and int3 elsewhere (pykvm.vm.gdb.stub).  Nested KVM under QEMU's TCG, the
hardware lane, does not stop on DR0: the probes tell, and each gdb test asks
for the ones it needs.
"""
from __future__ import annotations

import functools

from pykvm.vm import layout
from pykvm.vm.gdb.debugregs import EXEC, DebugRegisters
from pykvm.vm.gdb.swbreak import BP_VECTOR
from pykvm.vm.kvm import Debug
from pykvm.vm.kvm.bindings import lib
from pykvm.vm.kvm.system import kvm_backend
from vmkit import bare_vm

__all__ = ["hardware_breakpoint_problem", "single_step_problem", "int3_breakpoint_problem",
           "gdb_breakpoint_problem", "gdb_watchpoint_problem"]

PROBE = """
    nop
    nop
target:                     /* FLAT_LOAD + 2: DR0 points here */
    mov $0x42, %al
    out %al, $0x10
    hlt
"""
TARGET = layout.FLAT_LOAD + 2


@functools.cache
def hardware_breakpoint_problem() -> str | None:
    """None when a DR0 execute breakpoint stops a guest here, else why it does not."""
    slots = DebugRegisters()
    slots.insert(TARGET, EXEC, 1)
    with bare_vm(PROBE, bits=32) as (vm, vcpu, mem):
        vcpu.set_guest_debug(lib.KVM_GUESTDBG_ENABLE | lib.KVM_GUESTDBG_USE_HW_BP, slots.debugreg())
        exit = vcpu.run()
    if isinstance(exit, Debug) and exit.pc == TARGET:
        return None
    return (f"this KVM does not stop a guest on a hardware breakpoint (DR0 at {TARGET:#x}): "
            f"KVM_RUN returned {exit!r}")


STEPPED = """
    nop
    nop
    mov $0x42, %al
    out %al, $0x10
    hlt
"""
STEPS = [layout.FLAT_LOAD + 1, layout.FLAT_LOAD + 2, layout.FLAT_LOAD + 4]   # rip after each step

TRAPPED = """
    nop
    int3                    /* FLAT_LOAD + 1 */
    mov $0x42, %al
    out %al, $0x10
    hlt
"""


@functools.cache
def single_step_problem() -> str | None:
    """None when KVM_GUESTDBG_SINGLESTEP gives a debug exit after each instruction here."""
    seen = []
    with bare_vm(STEPPED, bits=32) as (vm, vcpu, mem):
        vcpu.set_guest_debug(lib.KVM_GUESTDBG_ENABLE | lib.KVM_GUESTDBG_SINGLESTEP)
        for _ in STEPS:
            exit = vcpu.run()
            if not isinstance(exit, Debug):
                break
            seen.append(exit.pc)
    if seen == STEPS:
        return None
    return (f"this KVM does not single-step a guest: debug exits at {[hex(pc) for pc in seen]}, "
            f"then KVM_RUN returned {exit!r}")


@functools.cache
def int3_breakpoint_problem() -> str | None:
    """None when KVM_GUESTDBG_USE_SW_BP turns a guest's int3 into a debug exit here."""
    if kvm_backend().startswith("PVM"):
        return "PVM's instruction emulator cannot run int3 in guest kernel mode (the vCPU hangs)"
    with bare_vm(TRAPPED, bits=32) as (vm, vcpu, mem):
        vcpu.set_guest_debug(lib.KVM_GUESTDBG_ENABLE | lib.KVM_GUESTDBG_USE_SW_BP)
        exit = vcpu.run()
    if isinstance(exit, Debug) and exit.exception == BP_VECTOR and exit.pc == layout.FLAT_LOAD + 1:
        return None
    return f"this KVM does not stop a guest on int3 (KVM_GUESTDBG_USE_SW_BP): KVM_RUN returned {exit!r}"


def gdb_breakpoint_problem() -> str | None:
    """Why `break` and `stepi` in gdb cannot work with pykvm's stub here, or None.

    The stub's breakpoints are debug registers on PVM and int3 elsewhere;
    gdb steps over a breakpoint it continues from, so stepping is needed too.
    """
    breakpoints = (hardware_breakpoint_problem() if kvm_backend().startswith("PVM")
                   else int3_breakpoint_problem())
    return breakpoints or single_step_problem()


def gdb_watchpoint_problem() -> str | None:
    """Why `watch` cannot work with pykvm's stub here: it single-steps on PVM, else uses a DR."""
    if kvm_backend().startswith("PVM"):
        return single_step_problem()
    return hardware_breakpoint_problem()
