"""One place that configures a vCPU for its first instruction (Firecracker's KvmVcpu::configure).

The machine's recipe calls configure_vcpu once per vCPU, after the loader has
put the kernel in memory and said where it starts (an Entry).  In this order:

  1. CPUID (cpuid.guest_cpuid): its own APIC id, one package of `cpus` CPUs.
     First, because KVM checks MSRs (and XSAVE state) against the CPUID a
     vCPU was given and refuses what it does not announce.
  2. The MSRs a PC firmware leaves set (msrs.boot_msrs): fast strings on,
     MTRRs on with write-back memory.
  3. On the bootstrap processor (vCPU 0), the LAPIC's LINT0 = ExtINT and
     LINT1 = NMI (lapic.virtual_wire), as a firmware wires the 8259 PIC.
     Before the registers, as KVM_SET_LAPIC rewrites the APIC page whole.
  4. The bootstrap processor's segment, control and general registers for
     the entry (boot_state.set_entry_registers).  Every other vCPU waits for
     INIT and a start-up IPI (KVM_MP_STATE_INIT_RECEIVED), as the
     application processors of a PC do; the guest's SIPI starts it.

A raw flat binary is the bare-metal case: it gets CPUID and its registers,
not the firmware's MSRs and LAPIC wiring (`firmware=False`).  A restored VM
needs none of this: its vCPUs get the snapshot's state (pykvm.vm.snapshot).
"""
from __future__ import annotations

from pykvm.vm.arch.x86 import cpuid, lapic, msrs
from pykvm.vm.arch.x86.boot_state import Entry, set_entry_registers
from pykvm.vm.kvm.bindings import lib

__all__ = ["configure_vcpu", "BOOTSTRAP_PROCESSOR"]

BOOTSTRAP_PROCESSOR = 0      # the vCPU that starts at the entry; the others wait for a SIPI


def configure_vcpu(vcpu, memory, entry: Entry, *, cpus: int, supported_cpuid,
                   firmware: bool = True) -> None:
    """Steps 1-4 of the module docstring for `vcpu` (its APIC id is vcpu.id) of a `cpus`-vCPU VM.

    `supported_cpuid`: cpuid.supported_by(kvm), read once for every vCPU.
    `firmware`: whether the kernel expects what a PC firmware leaves (steps 2 and 3).
    """
    vcpu.set_cpuid(cpuid.guest_cpuid(supported_cpuid, vcpu.id, cpus))         # 1
    if firmware:
        vcpu.set_msrs(msrs.boot_msrs())                                      # 2
    if vcpu.id != BOOTSTRAP_PROCESSOR:
        vcpu.set_mp_state(lib.KVM_MP_STATE_INIT_RECEIVED)                    # 4: wait for a SIPI
        return
    if firmware:
        vcpu.set_lapic(lapic.virtual_wire(vcpu.get_lapic()))                 # 3
    set_entry_registers(vcpu, memory, entry)                                 # 4
