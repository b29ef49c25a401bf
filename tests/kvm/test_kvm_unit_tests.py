"""A fast subset of kvm-unit-tests: every one QEMU passes here must pass under pykvm too.

The whole suite, with QEMU's result beside pykvm's for each test, is
`make kvm-unit-tests` (tests/kvm_unit_tests.py); this file runs the tests in
kvm_unit_tests.SUBSET, each of which ends in seconds under both VMMs.  Both
VMMs run in the same session, so "QEMU passes" means: on this machine, now.
"""
from __future__ import annotations

import shutil

import pytest

import kvm_unit_tests as kut

pytestmark = pytest.mark.kvm

TIMEOUT_S = 60


def subset_plans():
    suite = kut.suite_dir()
    if suite is None:
        return [pytest.param(None, id=name, marks=pytest.mark.skip(
            reason=f"kvm-unit-tests not found (set {kut.ENV_DIR} or put the built suite at "
                   "shared/kvm-unit-tests beside the checkout)")) for name in kut.SUBSET]
    configs = {c.name: c for c in kut.read_configs(suite / "x86" / "unittests.cfg")}
    return [pytest.param(kut.plan(configs[name], suite / "x86", kut.pykvm_cpus_option()), id=name) for name in kut.SUBSET]


@pytest.mark.parametrize("plan", subset_plans())
def test_what_qemu_passes_pykvm_passes(plan):
    if plan.skip:
        pytest.skip(plan.skip)
    if shutil.which(kut.QEMU) is None:
        pytest.skip(f"{kut.QEMU} is not installed (.ci/packages installs qemu-system-x86)")
    limit = kut.time_limit(plan, TIMEOUT_S)
    qemu = kut.run(kut.qemu_command(plan), limit)
    if qemu.result != "PASS":
        pytest.skip(f"QEMU does not pass {plan.config.name} here: {qemu.result}")
    ours = kut.run(kut.pykvm_command(plan), limit)
    assert ours.result == "PASS", f"{plan.config.name} under pykvm: {ours.result}\n{ours.log[-3000:]}"
