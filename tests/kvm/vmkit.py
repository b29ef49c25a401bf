"""Tiny guests for the KVM tests: a bare VM, or pykvm's whole Machine.

bare_vm: memory, one vCPU, no irqchip, no devices.  Like the kernel's KVM
selftests, each test loads a few instructions and asserts on the exits they
cause, one `vcpu.run()` at a time.  The code runs at FLAT_LOAD, in real mode
(bits=16) or in flat 32-bit protected mode (bits=32).

run_guest: the same kind of code booted as a raw binary on a Machine (in-kernel
irqchip and PIT, UART, debug-exit, ACPI power-off), run until it stops.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

from guestasm import assemble
from pykvm.vm.arch.x86.boot_state import CpuMode, Entry, set_entry_registers
from pykvm.vm import layout
from pykvm.vm.kvm import Kvm
from pykvm.vm.machine import Machine, MachineConfig
from pykvm.vm.memory import GuestMemory

MEMORY = 2 << 20
DEADLINE_STATUS = 99       # run_guest's status when the host had to stop the guest
POWER_OFF = """
    mov $0x604, %dx           # ACPI PM1a control
    mov $0x2000, %ax          # SLP_EN, sleep type 0 (S5: off)
    out %ax, %dx
"""


@contextmanager
def bare_vm(source: str, bits: int = 16, memory: int = MEMORY):
    """Yields (vm, vcpu, memory) with `source` assembled and loaded at FLAT_LOAD, ready to run."""
    code = assemble(source, bits=bits)
    with Kvm() as kvm, kvm.create_vm() as vm, GuestMemory(memory) as mem:
        mem.register(vm)
        vcpu = vm.create_vcpu(0)
        mem.write(layout.FLAT_LOAD, code)
        mode = CpuMode.REAL if bits == 16 else CpuMode.PROTECTED
        set_entry_registers(vcpu, mem, Entry(mode, layout.FLAT_LOAD))
        yield vm, vcpu, mem


def run_guest(tmp_path, source: str, feed: list[bytes] = (), bits: int = 16,
              deadline: float | None = None, **config):
    """Boot `source` as a raw binary; feed host input in chunks; return (status, output).

    `deadline`: after that many seconds the host stops the VM with status
    DEADLINE_STATUS, so a guest that never stops fails its test instead of
    hanging it.  `config` sets further MachineConfig fields.
    """
    kernel = tmp_path / "guest.bin"
    kernel.write_bytes(assemble(source, bits=bits))
    output = bytearray()
    config = MachineConfig(kernel=kernel, kernel_format="raw", output=output.extend, **config)
    with Machine(config) as machine:
        if feed:
            machine.serial.receive(feed[0])

            def later():
                for chunk in feed[1:]:
                    machine.serial.wait_for_room(1.0)
                    machine.serial.receive(chunk)
            threading.Timer(0.2, later).start()
        timer = threading.Timer(deadline, machine.stop, (DEADLINE_STATUS,)) if deadline else None
        if timer:
            timer.start()
        try:
            status = machine.run()
        finally:
            if timer:
                timer.cancel()
    return status, bytes(output)
