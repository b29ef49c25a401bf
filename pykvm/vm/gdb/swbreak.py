"""Software breakpoints: int3 written over the guest's code, where KVM can see it.

gdb's Z0 packet asks for a "software breakpoint" (GDB manual, "Packets", Z0):
the stub replaces the instruction's first byte with int3 (opcode 0xCC, Intel SDM
Vol. 2A, "INT n/INTO/INT3/INT1"), and the CPU raises #BP, vector 3, when it
gets there.  Under KVM_SET_GUEST_DEBUG with KVM_GUESTDBG_USE_SW_BP, KVM catches
that #BP before the guest's IDT sees it and returns KVM_EXIT_DEBUG with
exception 3 and pc at the int3 itself (rip not advanced: VMX and SVM both
report the faulting instruction for an intercepted #BP).

Unlike the four debug registers there is no limit on how many, and they cost
nothing while the guest runs.  The price is that the guest's memory holds
0xCC while a breakpoint is in: every memory read for gdb shows the saved byte
instead (`shadow`), as gdbserver does.  gdb takes breakpoints out whenever the
guest stops and puts them back when it resumes, stepping over the one it stopped
at first, so the stub never has to step over an int3 itself.

On PVM-backed KVM the guest kernel runs in KVM's instruction emulator, which
cannot execute int3 (the vCPU hangs instead of exiting): there Z0 goes into a
debug register (debugregs.py), and this module is not used.

The byte is saved by guest-physical address, found once at insertion through
the page walk of the vCPU gdb has selected, so taking the breakpoint out
restores the same byte even if the guest has switched page tables since.
"""
from __future__ import annotations

from dataclasses import dataclass

from pykvm.vm.gdb.paging import PagingState, UnmappedAddress, translate

__all__ = ["SoftwareBreakpoints", "Inserted", "INT3", "BP_VECTOR", "give_back_to_guest"]

INT3 = 0xCC
BP_VECTOR = 3                # #BP: KVM_EXIT_DEBUG's exception for an int3


@dataclass(frozen=True)
class Inserted:
    """One breakpoint: where gdb asked (virtual), where the byte is (physical), the byte."""

    address: int
    physical: int
    saved: int


class SoftwareBreakpoints:
    """The int3 bytes the stub has written into guest memory, and what they replaced."""

    def __init__(self, memory) -> None:
        self.memory = memory
        self.inserted: dict[int, Inserted] = {}     # guest-virtual address -> breakpoint

    def insert(self, paging: PagingState, address: int) -> None:
        """Write int3 at `address` (raises UnmappedAddress); inserting twice is one breakpoint."""
        if address in self.inserted:
            return
        physical = translate(self.memory, paging, address).physical
        if not self.memory.contains(physical):
            raise UnmappedAddress(address, f"physical {physical:#x} is outside guest memory")
        saved = self.memory.read(physical, 1)[0]
        self.memory.write(physical, bytes([INT3]))
        self.inserted[address] = Inserted(address, physical, saved)

    def remove(self, address: int) -> bool:
        """Put the saved byte back; False if there was no breakpoint at `address`."""
        bp = self.inserted.pop(address, None)
        if bp is None:
            return False
        self.memory.write(bp.physical, bytes([bp.saved]))
        return True

    def clear(self) -> None:
        for address in list(self.inserted):
            self.remove(address)

    def __bool__(self) -> bool:
        return bool(self.inserted)

    def __contains__(self, address: int) -> bool:
        return address in self.inserted

    def rewritten(self, address: int, data: bytes) -> None:
        """gdb wrote `data` at `address`: what lands on a breakpoint becomes its saved byte."""
        for bp in list(self.inserted.values()):
            offset = bp.address - address
            if 0 <= offset < len(data):
                self.inserted[bp.address] = Inserted(bp.address, bp.physical, data[offset])
                self.memory.write(bp.physical, bytes([INT3]))

    def shadow(self, address: int, data: bytes) -> bytes:
        """`data` read at `address`, with each int3 of ours shown as the byte it replaced."""
        out = bytearray(data)
        for bp in self.inserted.values():
            offset = bp.address - address
            if 0 <= offset < len(out):
                out[offset] = bp.saved
        return bytes(out)


# struct kvm_vcpu_events (<asm/kvm.h>, api.rst KVM_GET_VCPU_EVENTS) begins with
# the exception KVM will deliver on the next entry: injected, nr,
# has_error_code, pending (one byte each), then a 32-bit error code.
EVENT_EXCEPTION_INJECTED, EVENT_EXCEPTION_NR, EVENT_EXCEPTION_HAS_ERROR_CODE = 0, 1, 2
EVENT_EXCEPTION_PENDING = 3
EVENT_FLAGS = 20             # after exception (8 bytes), interrupt (4), nmi (4), sipi_vector (4)


def give_back_to_guest(vcpu) -> None:
    """Deliver an int3 that was not one of gdb's to the guest's own #BP handler.

    KVM_GUESTDBG_USE_SW_BP catches every #BP, the guest's own too (Linux
    patches its code with int3).  Injecting vector 3 through
    KVM_SET_VCPU_EVENTS hands it back as if no debugger were there; KVM
    treats #BP as a software exception and moves rip past the int3 (QEMU's
    gdbstub does the same).  Flags 0: the NMI, SIPI and SMM parts stay as
    they are.
    """
    events = bytearray(vcpu.get_vcpu_events())
    events[EVENT_EXCEPTION_INJECTED] = 1
    events[EVENT_EXCEPTION_NR] = BP_VECTOR
    events[EVENT_EXCEPTION_HAS_ERROR_CODE] = 0
    events[EVENT_EXCEPTION_PENDING] = 0
    events[EVENT_FLAGS:EVENT_FLAGS + 4] = bytes(4)
    vcpu.set_vcpu_events(bytes(events))
