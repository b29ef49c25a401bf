"""Does this /dev/kvm stop a guest on a hardware breakpoint?  A probe, for the gdb tests.

KVM_SET_GUEST_DEBUG with KVM_GUESTDBG_USE_HW_BP loads pykvm's DR0-DR7 while the guest
runs; an instruction fetch at DR0's address raises #DB, which KVM reports as
KVM_EXIT_DEBUG (api.rst 4.54).  Hardware KVM and this project's PVM-backed KVM do
(probed with a real-mode guest).  Whether nested KVM under QEMU's TCG does depends on
TCG's model of the debug registers for the nested guest: the probe tells.
"""
from __future__ import annotations

import functools

from pykvm.vm import layout
from pykvm.vm.gdb.debugregs import EXEC, DebugRegisters
from pykvm.vm.kvm import Debug
from pykvm.vm.kvm.bindings import lib
from vmkit import bare_vm

__all__ = ["hardware_breakpoint_problem"]

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
