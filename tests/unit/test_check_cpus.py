"""--cpus against KVM's two limits (machine.check_cpus): recommended warns, maximum refuses.  No KVM."""
from __future__ import annotations

import pytest

from pykvm.errors import ConfigError
from pykvm.vm.machine import MAX_CPUS, check_cpus


def test_up_to_the_recommended_count_says_nothing():
    assert check_cpus(1, recommended=2, maximum=1024) is None
    assert check_cpus(2, recommended=2, maximum=1024) is None


def test_above_the_recommended_count_is_a_warning_as_in_qemu():
    warning = check_cpus(3, recommended=2, maximum=1024)
    assert "--cpus 3" in warning and "(2, KVM_CAP_NR_VCPUS" in warning and "\n" not in warning


def test_above_kvms_maximum_is_an_error():
    with pytest.raises(ConfigError, match=r"at most 4 vCPUs per VM \(KVM_CAP_MAX_VCPUS\)"):
        check_cpus(5, recommended=2, maximum=4)
    assert check_cpus(4, recommended=2, maximum=4) is not None


def test_without_kvm_cap_max_vcpus_the_recommendation_is_the_limit():
    """Kernels before KVM_CAP_MAX_VCPUS answer 0 for it (api.rst 4.7: then NR_VCPUS is the maximum)."""
    with pytest.raises(ConfigError, match="at most 2 vCPUs"):
        check_cpus(3, recommended=2, maximum=0)


@pytest.mark.parametrize("cpus", [0, -1, MAX_CPUS + 1])
def test_pykvms_own_bounds_come_first(cpus):
    with pytest.raises(ConfigError, match=f"choose 1 to {MAX_CPUS}"):
        check_cpus(cpus, recommended=4096, maximum=4096)
