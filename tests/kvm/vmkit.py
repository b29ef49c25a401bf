"""A bare VM for the KVM-layer tests: memory, one vCPU, no irqchip, no devices.

Like the kernel's KVM selftests, each test loads a few instructions and
asserts on the exits they cause, one `vcpu.run()` at a time.  The code runs
at FLAT_LOAD, in real mode (bits=16) or in flat 32-bit protected mode (bits=32).
"""
from __future__ import annotations

from contextlib import contextmanager

from guestasm import assemble
from pykvm.vm.arch.x86.boot_state import CpuMode, Entry, configure_vcpu
from pykvm.vm import layout
from pykvm.vm.kvm import Kvm
from pykvm.vm.memory import GuestMemory

MEMORY = 2 << 20


@contextmanager
def bare_vm(source: str, bits: int = 16, memory: int = MEMORY):
    """Yields (vm, vcpu, memory) with `source` assembled and loaded at FLAT_LOAD, ready to run."""
    code = assemble(source, bits=bits)
    with Kvm() as kvm, kvm.create_vm() as vm, GuestMemory(memory) as mem:
        mem.register(vm)
        vcpu = vm.create_vcpu(0)
        mem.write(layout.FLAT_LOAD, code)
        mode = CpuMode.REAL if bits == 16 else CpuMode.PROTECTED
        configure_vcpu(vcpu, mem, Entry(mode, layout.FLAT_LOAD))
        yield vm, vcpu, mem
