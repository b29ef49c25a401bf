"""The host CPU facts a snapshot depends on: what its guest was told CPUID has.

A guest reads CPUID once, at boot, and from then on uses what it found: a
kernel that saw AVX2 in CPUID.7.0:EBX[5] saves YMM registers and runs AVX2
code.  Restored on a CPU without AVX2, it would fault at its next vpaddd.  So
the header keeps the CPU vendor and the feature registers of the CPUID the
vCPU was given, and a restore refuses a host whose KVM would not give a guest
every one of those bits (Intel SDM Vol. 2A, "CPUID"; AMD APM Vol. 3, E.3).
"""
from __future__ import annotations

from pykvm.errors import SnapshotError
from pykvm.vm.arch.x86 import cpuid
from pykvm.vm.kvm.bindings import ffi
from pykvm.vm.kvm.system import CpuidEntry

__all__ = ["facts", "check_host", "entries_from_bytes", "offered_cpuid", "FEATURE_REGISTERS"]

LEAF_VENDOR = 0x0               # EBX, EDX, ECX: "GenuineIntel", "AuthenticAMD"
# (leaf, subleaf, register): the registers whose bits are features a guest may rely on
FEATURE_REGISTERS = [
    (0x1, 0, "ecx"), (0x1, 0, "edx"),                       # SSE3..AVX, x87..SSE2
    (0x7, 0, "ebx"), (0x7, 0, "ecx"), (0x7, 0, "edx"),      # structured extended features
    (0xD, 0, "eax"), (0xD, 1, "eax"),                       # XCR0 components; XSAVEOPT/XSAVEC/XSAVES
    (0x80000001, 0, "ecx"), (0x80000001, 0, "edx"),         # LAHF, LZCNT..; NX, 1 GiB pages, long mode
]
# bits the VMM itself sets, not the host CPU: CPUID.1:ECX[31] "running under a hypervisor"
VMM_BITS = {(0x1, 0, "ecx"): cpuid.FEATURE_ECX_HYPERVISOR}


def entries_from_bytes(data: bytes) -> list[CpuidEntry]:
    """The entries of a `struct kvm_cpuid2` as KVM_GET_CPUID2 returned it."""
    header, entry = ffi.sizeof("struct kvm_cpuid2"), ffi.sizeof("struct kvm_cpuid_entry2")
    table = ffi.cast("struct kvm_cpuid2 *", ffi.from_buffer(data))
    if len(data) < header or len(data) != header + table.nent * entry:
        raise SnapshotError(f"a CPUID table of {len(data)} bytes does not hold whole entries")
    return [CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
            for e in table.entries[0:table.nent]]


def offered_cpuid(kvm, cpus: int = 1) -> list[CpuidEntry]:
    """The CPUID vCPU 0 of a `cpus`-vCPU VM on this host ends up with: pykvm's table set on a
    throwaway vCPU and read back (KVM_GET_CPUID2).  Not KVM_GET_SUPPORTED_CPUID alone: a KVM
    may fill in more itself (PVM gives guests the host's own feature bits, as their user mode
    runs on the host CPU).  Built for `cpus` vCPUs because the topology bits among the feature
    registers (CPUID.1:EDX[28] HTT, AMD's CPUID.80000001H:ECX[1] CmpLegacy) are set by pykvm
    for a VM of more than one vCPU, whatever the host."""
    with kvm.create_vm() as vm:
        vcpu = vm.create_vcpu(0)
        vcpu.set_cpuid(cpuid.guest_cpuid(cpuid.supported_by(kvm), vcpu.id, cpus))
        return entries_from_bytes(vcpu.get_cpuid())


def _register(entries, leaf: int, subleaf: int, register: str) -> int:
    for e in entries:
        if e.function == leaf and e.index == subleaf:
            return getattr(e, register)
    return 0


def _vendor(entries) -> str:
    words = [_register(entries, LEAF_VENDOR, 0, r) for r in ("ebx", "edx", "ecx")]
    return b"".join(w.to_bytes(4, "little") for w in words).decode("ascii", "replace")


def facts(entries) -> dict:
    """The header's "host" section: the vendor and feature registers of a guest's CPUID."""
    return {"cpu_vendor": _vendor(entries),
            "cpuid_features": {f"{leaf:#x}.{sub}.{reg}": f"{_register(entries, leaf, sub, reg):#010x}"
                               for leaf, sub, reg in FEATURE_REGISTERS}}


def check_host(saved: dict, host_entries) -> None:
    """Refuse a host whose KVM cannot give a guest what the snapshot's guest was told."""
    vendor = _vendor(host_entries)
    if saved.get("cpu_vendor") != vendor:
        raise SnapshotError(f"the snapshot was taken on a {saved.get('cpu_vendor')} CPU and this host "
                            f"has a {vendor} one: its guest cannot run here")
    features = saved.get("cpuid_features", {})
    for leaf, sub, reg in FEATURE_REGISTERS:
        key = f"{leaf:#x}.{sub}.{reg}"
        wanted = int(features.get(key, "0"), 16) & ~VMM_BITS.get((leaf, sub, reg), 0)
        missing = wanted & ~_register(host_entries, leaf, sub, reg)
        if missing:
            raise SnapshotError(f"this host's CPU (as KVM offers it) lacks CPUID {key} bits {missing:#x} "
                                "that the snapshot's guest was told it has")
