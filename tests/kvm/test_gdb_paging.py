"""pykvm's page-table walk (pykvm.vm.gdb.paging) against KVM's own, KVM_TRANSLATE.

The tiny kernel is stopped by a breakpoint in its syscall handler while a user
program runs (a DR0 breakpoint where KVM honours one, else an int3: the probes
in hwdebug.py), so CR3 holds that
program's PML4: the kernel's supervisor-only identity map (PML4 entry 0, with
page 0 left out) and the program's user pages at 512 GiB (PML4 entry 1).
For each address both walks must agree on whether it is mapped and where.
(KVM_TRANSLATE's writeable and usermode fields are constants on x86, 1 and
0, so only `valid` and the physical address are compared.)
"""
import pytest

from pykvm.vm.gdb.debugregs import EXEC, DebugRegisters
from pykvm.vm.gdb.paging import PagingState, UnmappedAddress, translate
from pykvm.vm.gdb.swbreak import INT3
from pykvm.vm.kvm import Debug, IoIn, IoOut
from pykvm.vm.kvm.bindings import lib
from pykvm.vm.machine import Machine, MachineConfig
from gdbsession import symbol
from hwdebug import hardware_breakpoint_problem, int3_breakpoint_problem
from tinyvm import build_tiny

pytestmark = pytest.mark.kvm


@pytest.fixture(autouse=True)
def breakpoints_stop_guests():
    """stop_at below uses DR0 or int3: where KVM stops a guest neither way, this test cannot run."""
    if hardware_breakpoint_problem() is not None and int3_breakpoint_problem() is not None:
        pytest.skip(f"{hardware_breakpoint_problem()}; and {int3_breakpoint_problem()}")

USER_BASE = 0x0000_0080_0000_0000        # guests/tiny/memlayout.h
MAX_EXITS = 2_000_000


def stop_at(machine: Machine, address: int) -> None:
    """Run until the vCPU reaches kernel `address` (DR0 or int3), serving port I/O on the way."""
    if hardware_breakpoint_problem() is None:
        slots = DebugRegisters()
        slots.insert(address, EXEC, 1)
        machine.vcpu.set_guest_debug(lib.KVM_GUESTDBG_ENABLE | lib.KVM_GUESTDBG_USE_HW_BP,
                                     slots.debugreg())
    else:                                       # the kernel is identity-mapped: virtual = physical
        machine.memory.write(address, bytes([INT3]))
        machine.vcpu.set_guest_debug(lib.KVM_GUESTDBG_ENABLE | lib.KVM_GUESTDBG_USE_SW_BP)
    for _ in range(MAX_EXITS):
        exit = machine.vcpu.run()
        match exit:
            case Debug(pc=pc):
                assert pc == address, f"stopped at {pc:#x}, not {address:#x}"
                machine.vcpu.set_guest_debug(0)
                return
            case IoOut(port=port, size=size, value=value):
                machine.pio.write(port, size, value)
            case IoIn(port=port, size=size):
                exit.reply(machine.pio.read(port, size))
        assert machine.exit_status is None, f"the guest ended (status {machine.exit_status}) first"
    raise AssertionError(f"no breakpoint hit in {MAX_EXITS} exits")


def test_walk_agrees_with_kvm_translate():
    elf = build_tiny()
    console = []
    config = MachineConfig(kernel=elf, cmdline="run=run hello;poweroff", output=console.append)
    with Machine(config) as machine:
        stop_at(machine, symbol(elf, "syscall"))
        paging = PagingState.of(machine.vcpu)
        ram_top = machine.memory.size
        addresses = [0x0, 0x800, 0x1000, symbol(elf, "ticks"), symbol(elf, "kmain"),
                     ram_top - 8, ram_top + 0x1000, USER_BASE, USER_BASE + 0x10,
                     USER_BASE + 0x1F_F000, USER_BASE + 0x40_0000, 0xFFFF_FFFF_8000_0000]
        mapped = 0
        for address in addresses:
            kvm = machine.vcpu.translate(address)
            try:
                ours = translate(machine.memory, paging, address)
            except UnmappedAddress:
                ours = None
            assert (ours is not None) == bool(kvm.valid), (
                f"{address:#x}: pykvm says {'mapped' if ours else 'unmapped'}, KVM_TRANSLATE valid={kvm.valid}")
            if ours is not None:
                mapped += 1
                assert ours.physical == kvm.physical_address, (
                    f"{address:#x}: pykvm {ours.physical:#x}, KVM {kvm.physical_address:#x}")
        assert mapped >= 5, "too few mapped addresses to compare"
        assert translate(machine.memory, paging, USER_BASE).user, "user pages carry U/S"
        assert not translate(machine.memory, paging, symbol(elf, "kmain")).user, "kernel pages do not"
