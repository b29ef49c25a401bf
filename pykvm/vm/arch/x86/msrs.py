"""Model-specific registers a firmware leaves set before it starts an OS.

Spec: Intel SDM Vol. 4 "Model-Specific Registers" (chapter 2, architectural
MSRs) and Vol. 3A 11.11 "Memory Type Range Registers".  Firecracker's
arch/x86_64/msr.rs and QEMU's firmware-less boot set the same list.

Order: KVM checks some MSRs against the vCPU's CPUID, so KVM_SET_CPUID2
must come before KVM_SET_MSRS (as configure_vcpu in vcpu.py does).
"""
from __future__ import annotations

__all__ = ["boot_msrs", "IA32_MISC_ENABLE", "IA32_MTRR_DEF_TYPE"]

IA32_TSC = 0x10                  # time-stamp counter
IA32_SYSENTER_CS = 0x174         # sysenter target CS
IA32_SYSENTER_ESP = 0x175        # sysenter target stack
IA32_SYSENTER_EIP = 0x176        # sysenter target RIP
IA32_MISC_ENABLE = 0x1A0         # miscellaneous feature enables
IA32_MTRR_DEF_TYPE = 0x2FF       # default memory type and MTRR enable
IA32_STAR = 0xC0000081           # syscall/sysret segment selectors
IA32_LSTAR = 0xC0000082          # 64-bit syscall target
IA32_CSTAR = 0xC0000083          # compatibility-mode syscall target
IA32_FMASK = 0xC0000084          # RFLAGS mask on syscall
IA32_KERNEL_GS_BASE = 0xC0000102  # swapgs exchange value

MISC_ENABLE_FAST_STRING = 1 << 0  # rep movs/stos may use fast-string operation
MTRR_DEF_TYPE_E = 1 << 11         # MTRRs enabled
MTRR_TYPE_WRITEBACK = 6           # memory type WB (SDM Vol. 3A, table 11-8)


def boot_msrs() -> dict[int, int]:
    """MSR number -> value for a vCPU about to enter an OS kernel.

    The syscall/sysenter MSRs start at zero (the kernel programs them);
    fast strings on; MTRRs enabled with write-back as the default type, so
    all of RAM is cacheable as on a PC after its firmware ran.
    """
    return {
        IA32_SYSENTER_CS: 0,
        IA32_SYSENTER_ESP: 0,
        IA32_SYSENTER_EIP: 0,
        IA32_STAR: 0,
        IA32_CSTAR: 0,
        IA32_KERNEL_GS_BASE: 0,
        IA32_FMASK: 0,
        IA32_LSTAR: 0,
        IA32_TSC: 0,
        IA32_MISC_ENABLE: MISC_ENABLE_FAST_STRING,
        IA32_MTRR_DEF_TYPE: MTRR_DEF_TYPE_E | MTRR_TYPE_WRITEBACK,
    }
