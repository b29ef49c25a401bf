"""What a PC's firmware leaves behind for any kernel it boots, whatever the protocol.

A kernel started by SeaBIOS or OVMF finds more than its own image in memory:
ACPI tables describing the machine, MSRs with their boot values, and a local
APIC wired to the legacy PIC.  pykvm has no firmware, so the loader leaves the
same state itself, before the first instruction, for both ways it boots a
kernel (bzImage and PVH); Firecracker does the same for every boot
(src/vmm/src/arch/x86_64: regs.rs setup_msrs, interrupts.rs set_lint).

  1. ACPI tables (RSDP, XSDT, FADT, FACS, DSDT, MADT) at layout.ACPI_TABLES, in
     the BIOS area where Linux also scans for "RSD PTR " (ACPI 6.5, 5.2.5.1):
     the FADT names the PM1a control port, which is how `poweroff` reaches
     pykvm; the MADT lists one local APIC per vCPU.
  2. Boot MSRs (pykvm.vm.arch.x86.msrs.boot_msrs) on every vCPU, after CPUID is set.
  3. The bootstrap processor's LAPIC: LINT0 = ExtINT (the 8259's output),
     LINT1 = NMI, the "virtual wire" mode of the MultiProcessor Specification
     1.4, 3.6.2.2.  The application processors keep KVM's reset LAPIC (LVTs
     masked), as a PC's firmware leaves them: the OS's INIT resets them anyway.

A raw flat binary gets none of this: it is the bare-metal case, on purpose.
"""
from __future__ import annotations

from pykvm.vm.arch.x86 import acpi, lapic, msrs
from pykvm.vm import layout

__all__ = ["leave_firmware_state"]


def leave_firmware_state(memory, vcpus: list) -> int:
    """Steps 1-3 of the module docstring for `vcpus` (vCPU 0 first); the RSDP's address."""
    memory.write(layout.ACPI_TABLES, acpi.acpi_tables(layout.ACPI_TABLES, len(vcpus)))
    for vcpu in vcpus:
        vcpu.set_msrs(msrs.boot_msrs())
    bsp = vcpus[0]
    bsp.set_lapic(lapic.virtual_wire(bsp.get_lapic()))
    return layout.ACPI_TABLES
