"""KVM_GET_STATS_FD: KVM's own counters for a vCPU, read through pykvm.vm.kvm.stats."""
import pytest

from pykvm.vm.kvm import IoOut, MmioWrite
from vmkit import bare_vm

pytestmark = pytest.mark.kvm


def test_counters_grow_with_the_exits_a_guest_makes():
    with bare_vm("""
        movl $1, 0xd0000000
        movl $2, 0xd0000000
        mov $'A', %al
        out %al, $0x10
        hlt
    """, bits=32) as (vm, vcpu, mem):
        if not vm.kvm.check_extension("KVM_CAP_BINARY_STATS_FD"):
            pytest.skip("this KVM has no KVM_CAP_BINARY_STATS_FD")
        before = vcpu.stats()
        assert {"exits", "mmio_exits", "halt_exits"} <= set(before), sorted(before)
        assert isinstance(vcpu.run(), MmioWrite) and isinstance(vcpu.run(), MmioWrite)
        assert isinstance(vcpu.run(), IoOut)
        after = vcpu.stats()
    assert after["exits"] >= before["exits"] + 3, (before["exits"], after["exits"])
    assert all(isinstance(v, int) and v >= 0 for v in after.values())
