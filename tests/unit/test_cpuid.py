"""CPUID normalization: the topology a guest sees is its own VM's, not the host's.

The supported list below is this kind of host's (an AMD EPYC with 2 logical
CPUs, as KVM_GET_SUPPORTED_CPUID reports it), plus an Intel-style leaf 4 with
an L1 and an L3: what KVM passes through before a VMM normalizes it.
"""
from __future__ import annotations

import pytest

from pykvm.vm.arch.x86 import cpuid
from pykvm.vm.kvm.system import CpuidEntry

SIGNIFICANT_INDEX = 1
HOST = [
    CpuidEntry(0x1, 0, 0, 0xa10f11, 0x00_10_0800 | (5 << 24), 0x81202000, 0x178bfbff),
    CpuidEntry(0x4, 0, SIGNIFICANT_INDEX, (15 << 26) | (1 << 14) | (1 << 5) | 1, 0, 0, 0),  # L1 data
    CpuidEntry(0x4, 1, SIGNIFICANT_INDEX, (15 << 26) | (31 << 14) | (3 << 5) | 3, 0, 0, 0),  # L3
    CpuidEntry(0x4, 2, SIGNIFICANT_INDEX, 0, 0, 0, 0),                                     # no more
    CpuidEntry(0xB, 0, SIGNIFICANT_INDEX, 1, 2, 0x100, 5),
    CpuidEntry(0x80000001, 0, 0, 0xa10f11, 0x40000000, 0x400393, 0x23d3fbff),
    CpuidEntry(0x80000008, 0, 0, 0x3030, 0x50020005, 0x7007, 0),
    CpuidEntry(0x8000001D, 0, SIGNIFICANT_INDEX, (1 << 14) | (1 << 5) | 1, 0, 0, 0),     # L1 data
    CpuidEntry(0x8000001D, 1, SIGNIFICANT_INDEX, (15 << 14) | (3 << 5) | 3, 0, 0, 0),    # L3
    CpuidEntry(0x8000001E, 0, 0, 5, 0x105, 0x3, 0),
]


def leaf(entries, function, index=0):
    found = [e for e in entries if e.function == function and e.index == index]
    assert len(found) == 1, (hex(function), index, found)
    return found[0]


@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_leaf_1_counts_the_vms_cpus_and_names_each_apic_id(cpus):
    for vcpu_id in range(cpus):
        e = leaf(cpuid.guest_cpuid(HOST, vcpu_id, cpus), 0x1)
        assert e.ebx >> 24 == vcpu_id, hex(e.ebx)
        assert (e.ebx >> 16) & 0xFF == cpus, hex(e.ebx)
        assert e.ebx & 0xFFFF == 0x0800                       # CLFLUSH size kept
        assert bool(e.edx & (1 << 28)) == (cpus > 1), hex(e.edx)   # HTT
        assert e.ecx & (1 << 31)                              # hypervisor present


def test_leaf_4_describes_cores_and_cache_sharing_of_the_vm():
    entries = cpuid.guest_cpuid(HOST, 0, 2)
    l1, l3 = leaf(entries, 0x4, 0), leaf(entries, 0x4, 1)
    assert l1.eax >> 26 == 1 and l3.eax >> 26 == 1            # 2 cores per package
    assert (l1.eax >> 14) & 0xFFF == 0                        # L1: one core's own
    assert (l3.eax >> 14) & 0xFFF == 1                        # L3: shared by both
    assert l1.eax & 0x3FFF == HOST[1].eax & 0x3FFF            # type and level kept
    assert leaf(entries, 0x4, 2).eax == 0


@pytest.mark.parametrize("cpus,shift", [(1, 0), (2, 1), (3, 2), (4, 2)])
def test_leaf_0xb_has_an_smt_and_a_core_level(cpus, shift):
    entries = cpuid.guest_cpuid(HOST, cpus - 1, cpus)
    smt, core, end = (leaf(entries, 0xB, i) for i in range(3))
    assert (smt.eax, smt.ebx, smt.ecx >> 8) == (0, 1, 1)
    assert (core.eax, core.ebx, core.ecx) == (shift, cpus, 0x201)
    assert (end.ebx, (end.ecx >> 8) & 0xFF) == (0, 0)          # level type 0: the end
    assert {e.edx for e in (smt, core, end)} == {cpus - 1}    # this vCPU's x2APIC id


def test_amd_cache_topology_names_the_vms_sharing():
    entries = cpuid.guest_cpuid(HOST, 0, 2)
    assert (leaf(entries, 0x8000001D, 0).eax >> 14) & 0xFFF == 0
    assert (leaf(entries, 0x8000001D, 1).eax >> 14) & 0xFFF == 1
    assert leaf(entries, 0x8000001D, 1).eax & 0x3FFF == HOST[8].eax & 0x3FFF


def test_amd_core_count_and_apic_id():
    entries = cpuid.guest_cpuid(HOST, 1, 2)
    assert leaf(entries, 0x80000008).ecx & 0xFF == 1
    assert (leaf(entries, 0x80000008).ecx >> 12) & 0xF == 1
    assert leaf(entries, 0x80000001).ecx & 2
    assert leaf(entries, 0x8000001E).eax == 1
    single = cpuid.guest_cpuid(HOST, 0, 1)
    assert leaf(single, 0x80000008).ecx & 0xF0FF == 0
    assert not leaf(single, 0x80000001).ecx & 2


def test_other_leaves_pass_through():
    extra = CpuidEntry(0x7, 0, SIGNIFICANT_INDEX, 0, 0x219c07ab, 0, 0)
    assert extra in cpuid.guest_cpuid(HOST + [extra], 0, 2)


# KVM_GET_SUPPORTED_CPUID's leaf 1 as an older kernel reports it (Linux 6.1 on an AMD EPYC, the lane's L1):
# ECX[24], the TSC-deadline timer, clear, although the in-kernel LAPIC has it.
OLDER_KVM_LEAF_1 = CpuidEntry(0x1, 0, 0, 0xa10f11, 0x00_10_0800, 0x80202000, 0x178bfbff)


def test_the_tsc_deadline_timer_is_offered_when_kvm_has_it():
    offered = leaf(cpuid.with_tsc_deadline([OLDER_KVM_LEAF_1], available=True), 0x1)
    assert offered.ecx == OLDER_KVM_LEAF_1.ecx | (1 << 24), hex(offered.ecx)
    guest = leaf(cpuid.guest_cpuid([offered], 0, 1), 0x1)
    assert guest.ecx & (1 << 24), hex(guest.ecx)                 # normalization keeps it


def test_the_tsc_deadline_timer_is_not_invented_without_the_capability():
    offered = leaf(cpuid.with_tsc_deadline([OLDER_KVM_LEAF_1], available=False), 0x1)
    assert not offered.ecx & (1 << 24), hex(offered.ecx)
