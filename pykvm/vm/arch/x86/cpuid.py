"""The CPUID a guest sees: what KVM supports, normalized for this VM's vCPUs.

KVM_GET_SUPPORTED_CPUID gives every leaf KVM can virtualize, including the
KVM leaves at 0x40000000 ("KVMKVMKVM" hypervisor signature).  Its topology
fields are the *host's*: how many logical CPUs share a package, how many
cores share each cache, this core's APIC id.  A guest that believed them
would look for CPUs that do not exist (or miss ones that do), so a VMM
rewrites them for the machine it builds, as Firecracker's cpuid normalize
does.  pykvm describes one package of `cpus` cores, one thread per core,
APIC id = vCPU index (Intel SDM Vol. 2A, CPUID; AMD APM Vol. 3, appendix E):

- leaf 1, EBX[31:24]: this vCPU's initial APIC id; EBX[23:16]: logical
  processors per package; EDX[28] HTT: set when that count is > 1;
  ECX[31]: "running under a hypervisor" (reserved for that use);
- leaf 4 (Intel caches), EAX[31:26]: cores per package - 1; EAX[25:14]:
  logical processors sharing this cache - 1 (1 for a per-core cache, all
  for the last level);
- leaves 0xB and 0x1F (x2APIC topology): sub-leaf 0 the SMT level (1 thread),
  sub-leaf 1 the core level (`cpus` cores), then the invalid level; EDX: this
  vCPU's x2APIC id;
- AMD leaf 0x80000001 ECX[1] CmpLegacy (set when > 1 core); 0x80000008
  ECX[7:0] NC (cores - 1) and ECX[15:12] ApicIdSize; 0x8000001D (AMD's
  leaf 4) EAX[25:14], cache sharing as for leaf 4; 0x8000001E: the extended
  APIC id and one thread per core.

One feature is KVM's, not the CPU's, so KVM_GET_SUPPORTED_CPUID of older
kernels leaves it out: the TSC-deadline mode of the local APIC timer
(CPUID.1:ECX[24]; Intel SDM Vol. 3A, 11.5.4.1 "TSC-Deadline Mode").  KVM's
in-kernel LAPIC has it and says so with KVM_CAP_TSC_DEADLINE_TIMER; QEMU sets
the bit when it has both the in-kernel irqchip and that capability
(target/i386/kvm/kvm.c, kvm_arch_get_supported_cpuid), Firecracker always
(docs/cpu_templates/cpuid-normalization.md).  supported_by(kvm) adds it.
Without it Linux runs its timer in one-shot mode, an x2APIC initial-count
write per tick, and first calibrates that timer against the PIT: hundreds of
PIT interrupts, each several exits, in every boot.
"""
from __future__ import annotations

__all__ = ["guest_cpuid", "supported_by", "with_tsc_deadline", "HYPERVISOR_LEAF"]

HYPERVISOR_LEAF = 0x40000000   # hypervisor vendor leaf: EBX,ECX,EDX = signature
LEAF_FEATURES = 0x1            # version and feature information
LEAF_CACHE_PARAMS = 0x4        # Intel deterministic cache parameters, one sub-leaf per cache
LEAF_EXT_TOPOLOGY = 0xB        # extended topology enumeration
LEAF_V2_EXT_TOPOLOGY = 0x1F    # V2 extended topology enumeration
LEAF_EXT_FEATURES = 0x80000001  # AMD: extended feature flags
LEAF_ADDRESS_SIZES = 0x80000008  # AMD: address sizes and core count
LEAF_AMD_CACHE_PARAMS = 0x8000001D  # AMD: cache topology, leaf 4's layout without EAX[31:26]
LEAF_EXT_APIC_ID = 0x8000001E  # AMD: extended APIC id, compute unit / core id

FEATURE_ECX_HYPERVISOR = 1 << 31   # CPUID.1:ECX[31], set by hypervisors
FEATURE_ECX_TSC_DEADLINE = 1 << 24  # CPUID.1:ECX[24], the LAPIC timer's TSC-deadline mode
FEATURE_EDX_HTT = 1 << 28          # CPUID.1:EDX[28], EBX[23:16] is valid (more than one logical CPU)
EBX_APIC_ID_SHIFT = 24             # CPUID.1:EBX[31:24] initial APIC id
EBX_LOGICAL_COUNT_SHIFT = 16       # CPUID.1:EBX[23:16] logical processors per package
EBX_LOW_BITS = 0xFFFF              # CPUID.1:EBX[15:0] brand index, CLFLUSH size: kept

CACHE_TYPE_MASK = 0x1F             # CPUID.4:EAX[4:0], 0 = no more caches
CACHE_LEVEL_SHIFT = 5              # CPUID.4:EAX[7:5] cache level
CACHE_CORES_SHIFT = 26             # CPUID.4:EAX[31:26] cores per package - 1
CACHE_SHARING_SHIFT = 14           # CPUID.4:EAX[25:14] logical CPUs sharing this cache - 1
CACHE_KEEP_MASK = (1 << CACHE_SHARING_SHIFT) - 1   # EAX[13:0]: type, level, flags: kept
LAST_PER_CORE_CACHE_LEVEL = 2      # L1 and L2 belong to one core; L3 to the package

LEVEL_TYPE_SMT = 1                 # CPUID.0BH:ECX[15:8] level type: SMT
LEVEL_TYPE_CORE = 2                # ... core
LEVEL_TYPE_SHIFT = 8

AMD_CMP_LEGACY = 1 << 1            # CPUID.80000001H:ECX[1]: core multi-processing legacy mode
AMD_NC_MASK = 0xFF                 # CPUID.80000008H:ECX[7:0]: number of cores - 1
AMD_APIC_ID_SIZE_SHIFT = 12        # CPUID.80000008H:ECX[15:12]: APIC id bits for the core
AMD_ECX_KEEP = ~0xF0FF & 0xFFFFFFFF


def supported_by(kvm):
    """The CPUID KVM can offer a guest: KVM_GET_SUPPORTED_CPUID, plus the TSC-deadline timer
    when KVM_CAP_TSC_DEADLINE_TIMER says the in-kernel LAPIC has it (pykvm always uses
    the in-kernel irqchip)."""
    return with_tsc_deadline(kvm.supported_cpuid(),
                             kvm.check_extension("KVM_CAP_TSC_DEADLINE_TIMER") > 0)


def with_tsc_deadline(supported, available: bool):
    """`supported` with CPUID.1:ECX[24] set when `available` (the module docstring says why)."""
    if not available:
        return list(supported)
    return [e._replace(ecx=e.ecx | FEATURE_ECX_TSC_DEADLINE) if e.function == LEAF_FEATURES else e
            for e in supported]


def guest_cpuid(supported, vcpu_id: int, cpus: int = 1):
    """The CPUID entries for vCPU `vcpu_id` of a `cpus`-vCPU VM, from KVM's supported list."""
    normalize = {
        LEAF_FEATURES: _features,
        LEAF_CACHE_PARAMS: _cache_params,
        LEAF_EXT_FEATURES: _amd_ext_features,
        LEAF_ADDRESS_SIZES: _amd_core_count,
        LEAF_AMD_CACHE_PARAMS: _amd_cache_params,
        LEAF_EXT_APIC_ID: _amd_ext_apic_id,
    }
    entries = []
    for e in supported:
        if e.function in (LEAF_EXT_TOPOLOGY, LEAF_V2_EXT_TOPOLOGY):
            if e.index == 0:          # KVM may list only sub-leaf 0: write all three levels
                entries.extend(_ext_topology(e, level, vcpu_id, cpus) for level in range(3))
            continue
        fix = normalize.get(e.function)
        entries.append(fix(e, vcpu_id, cpus) if fix else e)
    return entries


def id_bits(count: int) -> int:
    """How many APIC-id bits number `count` things: ceil(log2(count))."""
    return (count - 1).bit_length()


def _features(e, vcpu_id: int, cpus: int):
    ebx = (e.ebx & EBX_LOW_BITS) | (vcpu_id << EBX_APIC_ID_SHIFT) | (cpus << EBX_LOGICAL_COUNT_SHIFT)
    edx = e.edx | FEATURE_EDX_HTT if cpus > 1 else e.edx & ~FEATURE_EDX_HTT
    return e._replace(ebx=ebx, ecx=e.ecx | FEATURE_ECX_HYPERVISOR, edx=edx)


def _cache_sharing(eax: int, cpus: int) -> int:
    """EAX[25:14] for a cache described by `eax`: 0 for a core's own (L1, L2), cpus-1 for the last level."""
    level = (eax >> CACHE_LEVEL_SHIFT) & 0x7
    sharing = 1 if level <= LAST_PER_CORE_CACHE_LEVEL else cpus
    return (sharing - 1) << CACHE_SHARING_SHIFT


def _cache_params(e, vcpu_id: int, cpus: int):
    if e.eax & CACHE_TYPE_MASK == 0:
        return e
    eax = (e.eax & CACHE_KEEP_MASK) | ((cpus - 1) << CACHE_CORES_SHIFT) | _cache_sharing(e.eax, cpus)
    return e._replace(eax=eax)


def _amd_cache_params(e, vcpu_id: int, cpus: int):
    if e.eax & CACHE_TYPE_MASK == 0:
        return e
    return e._replace(eax=(e.eax & CACHE_KEEP_MASK) | _cache_sharing(e.eax, cpus))


def _ext_topology(e, level: int, vcpu_id: int, cpus: int):
    """Sub-leaf `level`: 0 the SMT level (1 thread per core), 1 the core level, 2 invalid.

    EAX: bits to shift the x2APIC id right to reach the next level's id;
    EBX: logical CPUs at this level; ECX: level type << 8 | level number.
    """
    if level == 0:
        eax, ebx, ecx = 0, 1, LEVEL_TYPE_SMT << LEVEL_TYPE_SHIFT
    elif level == 1:
        eax, ebx, ecx = id_bits(cpus), cpus, (LEVEL_TYPE_CORE << LEVEL_TYPE_SHIFT) | 1
    else:
        eax, ebx, ecx = 0, 0, level
    return e._replace(index=level, eax=eax, ebx=ebx, ecx=ecx, edx=vcpu_id)


def _amd_ext_features(e, vcpu_id: int, cpus: int):
    ecx = e.ecx | AMD_CMP_LEGACY if cpus > 1 else e.ecx & ~AMD_CMP_LEGACY
    return e._replace(ecx=ecx)


def _amd_core_count(e, vcpu_id: int, cpus: int):
    ecx = (e.ecx & AMD_ECX_KEEP) | (id_bits(cpus) << AMD_APIC_ID_SIZE_SHIFT) | (cpus - 1)
    return e._replace(ecx=ecx)


def _amd_ext_apic_id(e, vcpu_id: int, cpus: int):
    """EAX: extended APIC id; EBX[7:0] compute unit (core) id, EBX[15:8] threads per unit - 1."""
    return e._replace(eax=vcpu_id, ebx=vcpu_id & 0xFF, ecx=e.ecx & ~0x7FF)
