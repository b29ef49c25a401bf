"""The lane, end to end with real QEMU, failing on purpose: it must name the stage.

An L1 CPU without SVM boots fine but cannot load kvm_amd, so the lane must stop
at "module load", say which module, keep the serial log and exit with 2.
This runs on the host (not inside L1): `make test` on any machine with QEMU.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import lane

pytestmark = [pytest.mark.slow, pytest.mark.root]


def test_an_l1_without_svm_fails_at_module_load(tmp_path):
    if shutil.which(lane.QEMU) is None:
        pytest.skip(f"{lane.QEMU} not installed: apt-get install qemu-system-x86")
    kernels = lane.DEFAULT_CACHE / "kernel"
    if kernels.is_dir():                       # reuse the lane's download
        (tmp_path / "kernel").symlink_to(kernels)
    run = subprocess.run([sys.executable, lane.__file__, "--force-l1", "--cache", str(tmp_path),
                          "--cpu", "qemu64,-svm", "--boot-timeout", "300"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 2, f"status {run.returncode}:\n{run.stdout}\n{run.stderr}"
    assert "lane: error: stage 'module load' failed in L1: insmod kvm_amd" in run.stderr, run.stderr
    assert "serial log:" in run.stderr and "svm not available" in run.stderr, run.stderr
    log = (tmp_path / "serial.log").read_text()
    assert "@@lane init" in log and "@@lane failed insmod kvm_amd" in log, log[-2000:]
    assert not os.path.exists(tmp_path / "junit.xml")
