"""The CPUID a guest sees: what KVM supports, adjusted per vCPU.

KVM_GET_SUPPORTED_CPUID gives every leaf KVM can virtualize, including the
KVM leaves at 0x40000000 ("KVMKVMKVM" hypervisor signature).  A VMM then
fills in what only it knows (Intel SDM Vol. 2A, CPUID):
- leaf 1, EBX[31:24]: this vCPU's initial APIC id;
- leaf 1, ECX[31]: "running under a hypervisor" (reserved for that use);
- leaves 0xB and 0x1F, EDX: this vCPU's x2APIC id.
"""
from __future__ import annotations

__all__ = ["guest_cpuid", "HYPERVISOR_LEAF"]

HYPERVISOR_LEAF = 0x40000000   # hypervisor vendor leaf: EBX,ECX,EDX = signature
LEAF_FEATURES = 0x1            # version and feature information
LEAF_EXT_TOPOLOGY = 0xB        # extended topology enumeration
LEAF_V2_EXT_TOPOLOGY = 0x1F    # V2 extended topology enumeration
FEATURE_ECX_HYPERVISOR = 1 << 31  # CPUID.1:ECX[31], set by hypervisors


def guest_cpuid(supported, vcpu_id: int):
    """The CPUID entries for vCPU `vcpu_id`, from KVM's supported list."""
    entries = []
    for e in supported:
        if e.function == LEAF_FEATURES:
            e = e._replace(ebx=(e.ebx & 0x00FFFFFF) | (vcpu_id << 24),
                           ecx=e.ecx | FEATURE_ECX_HYPERVISOR)
        elif e.function in (LEAF_EXT_TOPOLOGY, LEAF_V2_EXT_TOPOLOGY):
            e = e._replace(edx=vcpu_id)
        entries.append(e)
    return entries
