"""Unit tests of the L1 lane's parts: the cpio writer, module order, stage tracking.

The cpio archive is checked by the system `cpio`, a second implementation of the
format; the stage tracker reads a real child process's output.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

import lane_initramfs
import lane_kernel
import lane
from lane_error import LaneError


def test_static_elf_check_tells_busybox_static_from_a_dynamic_program():
    if not lane.BUSYBOX.exists():
        pytest.skip(f"no {lane.BUSYBOX}: apt-get install busybox-static")
    assert lane_initramfs.is_static_elf(lane.BUSYBOX.read_bytes())
    assert not lane_initramfs.is_static_elf(Path("/usr/bin/env").read_bytes())
    assert not lane_initramfs.is_static_elf(b"#!/bin/sh\n")


def test_modinfo_depends_reads_the_depends_field():
    image = b"\x7fELF...\0license=GPL\0depends=fuse,virtio,virtio_ring\0vermagic=6.1\0"
    assert lane_kernel.modinfo_depends(image) == ["fuse", "virtio", "virtio_ring"]
    assert lane_kernel.modinfo_depends(b"license=GPL\0depends=\0intree=Y\0") == []


def test_load_order_puts_dependencies_first_once():
    deps = {"kvm_amd": ["kvm"], "kvm": ["irqbypass"], "irqbypass": [],
            "virtiofs": ["fuse", "virtio"], "fuse": [], "virtio": ["virtio_ring"],
            "virtio_ring": [], "virtio_pci": ["virtio_ring", "virtio"]}
    order = lane_kernel.load_order(["virtio_pci", "virtiofs", "kvm_amd"], deps.__getitem__)
    assert order == ["virtio_ring", "virtio", "virtio_pci", "fuse", "virtiofs",
                     "irqbypass", "kvm", "kvm_amd"]


def test_load_order_names_missing_modules_and_cycles():
    with pytest.raises(LaneError, match="module nope is not in the kernel package"):
        lane_kernel.load_order(["a"], {"a": ["nope"]}.__getitem__)
    with pytest.raises(LaneError, match="a -> b -> a"):
        lane_kernel.load_order(["a"], {"a": ["b"], "b": ["a"]}.__getitem__)


def test_outermost_drops_trees_inside_others(tmp_path):
    inner = tmp_path / "checkout" / ".cache" / "hw"
    inner.mkdir(parents=True)
    trees = lane.outermost([tmp_path / "checkout", inner, Path("/usr"), Path("/usr/lib")])
    assert trees == [tmp_path / "checkout", Path("/usr")]


def test_init_script_loads_modules_in_order_and_mounts_shares():
    script = lane_initramfs.init_script(["kvm", "kvm_amd"], [("share0", "/usr", True),
                                                        ("share1", "/work/x", False)],
                                   "/work/x", "python -m pytest")
    assert "for m in kvm kvm_amd; do" in script
    assert "mount -t virtiofs -o ro share0 /usr" in script
    assert "mount -t virtiofs share1 /work/x" in script
    assert script.index("modules-loaded") < script.index("python -m pytest") < \
        script.index("tests-done status=$?")


def test_junit_summary_counts(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text('<testsuites><testsuite name="pytest" tests="5" failures="1" errors="0" '
                     'skipped="2"/></testsuites>')
    assert lane.junit_summary(junit) == "2 passed, 1 failed, 0 errors, 2 skipped"
    assert lane.junit_summary(tmp_path / "missing.xml").startswith("no junit results")


@pytest.fixture
def console_of(tmp_path):
    """A SerialConsole on a real child's output (a stand-in for QEMU's serial port)."""
    started = []

    def start(script: str) -> lane.SerialConsole:
        proc = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE)
        started.append((proc, lane.SerialConsole(proc, tmp_path / "serial.log")))
        return started[-1][1]

    yield start
    for proc, console in started:
        proc.kill()
        proc.wait()
        console.close()             # closes proc.stdout too


def test_follow_ends_the_stage_at_its_event(console_of, tmp_path):
    console = console_of('echo "kernel noise"; echo "@@lane tests-done status=3"')
    stage, result = lane.Stage("tests", "tests-done", timeout=10), {}
    lane.follow(console, stage, echo=False, result=result)
    assert result["status"] == "3"
    # Each line is in the log before follow() sees it.
    assert "kernel noise" in (tmp_path / "serial.log").read_text()


def test_follow_names_the_stage_that_failed_in_l1(console_of):
    console = console_of('echo "@@lane failed insmod kvm_amd"')
    with pytest.raises(LaneError, match="stage 'module load' failed in L1: insmod kvm_amd"):
        lane.follow(console, lane.Stage("module load", "modules-loaded", 10), False, {})


def test_follow_names_the_stage_that_timed_out(console_of):
    console = console_of("exec sleep 5")
    start = time.monotonic()
    with pytest.raises(LaneError, match="stage 'L1 boot' timed out after 0 s"):
        lane.follow(console, lane.Stage("L1 boot", "init", 0.2), False, {})
    assert time.monotonic() - start < 4


def test_follow_reports_qemu_exiting_early(console_of):
    console = console_of("echo Kernel panic")
    with pytest.raises(LaneError, match="stage 'L1 boot' failed: QEMU exited"):
        lane.follow(console, lane.Stage("L1 boot", "init", 10), False, {})


def test_heartbeat_fails_only_after_it_started_and_stopped(tmp_path):
    beat = lane.Heartbeat(tmp_path / "heartbeat", limit=0.1)
    time.sleep(0.2)
    beat.check("L1 boot")                       # not started yet: boot has its own timeout
    beat.path.write_bytes(b".")
    beat.check("tests")                         # a new dot
    time.sleep(0.2)
    with pytest.raises(LaneError, match="stage 'tests' failed: L1 stopped responding"):
        beat.check("tests")


def test_a_hung_l1_is_booted_afresh_once(tmp_path, capsys):
    import argparse

    from lane_error import L1Hung

    args = argparse.Namespace(cache=tmp_path)
    calls = []

    def hangs_then_passes(args, pytest_args):
        calls.append(pytest_args)
        (tmp_path / "serial.log").write_text("first boot")
        if len(calls) == 1:
            raise L1Hung("stage 'tests' failed: L1 stopped responding")
        return 0

    assert lane.run_l1_retrying_a_hang(args, ["-x"], run=hangs_then_passes) == 0
    assert calls == [["-x"], ["-x"]]
    assert (tmp_path / "serial.hung-1.log").read_text() == "first boot"
    assert "booting a fresh L1" in capsys.readouterr().err


def test_a_second_hang_or_another_failure_fails_the_lane(tmp_path):
    import argparse

    from lane_error import L1Hung

    args = argparse.Namespace(cache=tmp_path)

    def always_hangs(args, pytest_args):
        raise L1Hung("hung")

    def fails(args, pytest_args):
        raise LaneError("stage 'module load' failed")

    with pytest.raises(L1Hung):
        lane.run_l1_retrying_a_hang(args, [], run=always_hangs)
    calls = []
    with pytest.raises(LaneError, match="module load"):
        lane.run_l1_retrying_a_hang(args, [], run=lambda a, p: calls.append(1) or fails(a, p))
    assert calls == [1]
