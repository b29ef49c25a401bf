"""Unit tests of the L1 lane's parts: the cpio writer, module order, stage tracking.

The cpio archive is checked by the system `cpio`, a second implementation of the
format; the stage tracker reads a real child process's output.
"""
from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import lane_initramfs
import lane_kernel
import lane
import lane_vmcb
from lane_error import L1Died, LaneError


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


def test_a_linux_guest_older_than_its_sources_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(lane, "ROOT", tmp_path)
    sources, built = tmp_path / "guests" / "linux", tmp_path / ".cache" / "linux" / "initramfs.cpio"
    sources.mkdir(parents=True)
    (sources / "init").write_text("#!/bin/sh\n")
    (sources / "container-init.c").write_text("int main(void) { return 0; }\n")
    assert lane.stale_linux_guest() is None                  # not built: its tests skip
    built.parent.mkdir(parents=True)
    built.write_bytes(b"")
    os.utime(sources / "init", (1000, 1000))
    os.utime(sources / "container-init.c", (1000, 1000))
    assert lane.stale_linux_guest() is None
    os.utime(sources / "container-init.c", (time.time() + 60,) * 2)
    assert lane.stale_linux_guest() == "container-init.c"


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


def test_follow_reports_l1_dying_during_the_tests_as_a_death_to_retry(console_of):
    console = console_of("echo 'collected 191 items'; echo 'tests/linux/test_linux_boot.py '")
    with pytest.raises(L1Died, match="stage 'tests' failed: QEMU exited while L1 ran the tests"):
        lane.follow(console, lane.Stage("tests", "tests-done", 10), False, {})


def test_heartbeat_fails_only_after_it_started_and_stopped(tmp_path):
    beat = lane.Heartbeat(tmp_path / "heartbeat", limit=0.1)
    time.sleep(0.2)
    beat.check("L1 boot")                       # not started yet: boot has its own timeout
    beat.path.write_bytes(b".")
    beat.check("tests")                         # a new dot
    time.sleep(0.2)
    with pytest.raises(LaneError, match="stage 'tests' failed: L1 stopped responding"):
        beat.check("tests")


def _hung_l1(cache: Path, lines: str, serial: str):
    """What run_l1 leaves behind when L1 hangs: its test log, serial log, registers."""
    from lane_error import L1Hung
    with open(cache / lane.TEST_LOG, "a") as log:
        log.write(lines)
    (cache / lane.SERIAL_LOG).write_text(serial)
    (cache / lane.HUNG_REGISTERS).write_text("RIP=...")
    return L1Hung("stage 'tests' failed: L1 stopped responding (no heartbeat)"
                  "\n  wake-up test: an NMI did not wake L1 (no heartbeat for 20 s after it)"
                  "\n  L1 CPU 0's LAPIC: LVTT 0x000000ec; IRR 236 251"
                  "\n  L1's vCPU registers, LAPICs and IOAPIC: registers.hung.txt")


def test_a_hung_l1_is_followed_by_a_fresh_one_for_the_unfinished_tests(tmp_path, capsys):
    import argparse

    args = argparse.Namespace(cache=tmp_path)
    (tmp_path / lane.TEST_LOG).write_text("passed\tstale::from_an_earlier_run\n")
    calls = []

    def hangs_then_passes(args, pytest_args):
        calls.append(pytest_args)
        if len(calls) == 1:
            raise _hung_l1(tmp_path, "start\ta::one\npassed\ta::one\nstart\ta::two\n",
                           "first boot")
        # the fresh L1 sees what the hung one finished (TestLog leaves those out)
        assert lane.finished_tests(lane.read_test_log(tmp_path / lane.TEST_LOG)) == \
            {"a::one": "passed"}
        with open(tmp_path / lane.TEST_LOG, "a") as log:
            log.write("start\ta::two\nskipped\ta::two\nstart\ta::three\npassed\ta::three\n")
        return 0

    assert lane.run_l1_retrying_a_hang(args, ["-x"], run=hangs_then_passes) == 0
    assert calls == [["-x"], ["-x"]]
    assert (tmp_path / "serial.hung-1.log").read_text() == "first boot"
    assert (tmp_path / "registers.hung-1.txt").read_text() == "RIP=..."
    out, err = capsys.readouterr()
    assert "booting a fresh L1 for the tests after the 1 that finished (attempt 2 of 5)" in err
    # what the hung L1 showed, on the lines CI's log keeps
    assert "lane: wake-up test: an NMI did not wake L1 (no heartbeat for 20 s after it)\n" in err
    assert "lane: L1 CPU 0's LAPIC: LVTT 0x000000ec; IRR 236 251\n" in err
    assert "lane: over 2 L1 boots: 2 passed, 0 failed, 1 skipped; status 0" in out


def test_a_test_that_failed_before_the_hang_fails_the_lane(tmp_path):
    import argparse

    args = argparse.Namespace(cache=tmp_path)
    calls = []

    def fails_a_test_then_hangs(args, pytest_args):
        calls.append(1)
        if len(calls) == 1:
            raise _hung_l1(tmp_path, "start\ta::one\nfailed\ta::one\nstart\ta::two\n", "")
        with open(tmp_path / lane.TEST_LOG, "a") as log:
            log.write("start\ta::two\npassed\ta::two\n")
        return 0

    assert lane.run_l1_retrying_a_hang(args, [], run=fails_a_test_then_hangs) == 1


def test_a_fifth_hang_or_another_failure_fails_the_lane(tmp_path):
    import argparse

    from lane_error import L1Hung

    args = argparse.Namespace(cache=tmp_path)
    calls = []

    def always_hangs(args, pytest_args):
        calls.append(1)
        raise _hung_l1(tmp_path, "", "")

    def fails(args, pytest_args):
        raise LaneError("stage 'module load' failed")

    with pytest.raises(L1Hung):
        lane.run_l1_retrying_a_hang(args, [], run=always_hangs)
    assert len(calls) == lane.L1_ATTEMPTS == 5
    calls = []
    with pytest.raises(LaneError, match="module load"):
        lane.run_l1_retrying_a_hang(args, [], run=lambda a, p: calls.append(1) or fails(a, p))
    assert calls == [1]


def test_the_test_log_records_outcomes_and_a_second_run_skips_what_finished(tmp_path):
    """TestLog in a real pytest run: a passing, a failing, a skipped test, and an
    error in setup; then a run with the same log runs only what had not finished."""
    import sys
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "@pytest.fixture\n"
        "def broken():\n    raise RuntimeError('setup')\n"
        "def test_ok(): pass\n"
        "def test_bad(): assert False\n"
        "def test_skip(): pytest.skip('why')\n"
        "def test_error(broken): pass\n"
        "def test_later(): pass\n")
    log = tmp_path / "tests.log"
    log.write_text("start\ttest_sample.py::test_later\n"      # began in a hung L1
                   "passed\ttest_sample.py::test_ok\n")       # finished in it
    script = ("import sys, pytest; sys.path.insert(0, sys.argv[1]); import lane; "
              "from pathlib import Path; "
              "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-c', '/dev/null', "
              "'--rootdir', sys.argv[2], sys.argv[2]], plugins=[lane.TestLog(Path(sys.argv[3]))]))")
    run = subprocess.run([sys.executable, "-c", script, str(Path(lane.__file__).parent),
                          str(tmp_path), str(log)], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 deselected" in run.stdout, run.stdout
    state = lane.read_test_log(log)
    assert state == {"test_sample.py::test_ok": "passed", "test_sample.py::test_bad": "failed",
                     "test_sample.py::test_skip": "skipped", "test_sample.py::test_error": "failed",
                     "test_sample.py::test_later": "passed"}
    assert lane.log_summary(state) == "2 passed, 2 failed, 1 skipped"
    reports = {r.nodeid: r.text for r in lane.failure_reports(log)}
    assert sorted(reports) == ["test_sample.py::test_bad", "test_sample.py::test_error"], reports
    assert reports["test_sample.py::test_bad"].startswith("call: ") and \
        "assert False" in reports["test_sample.py::test_bad"], reports
    assert reports["test_sample.py::test_error"].startswith("setup: ") and \
        "RuntimeError: setup" in reports["test_sample.py::test_error"], reports
    assert log.read_text().count("start\ttest_sample.py::test_ok") == 0


def test_a_test_that_started_and_never_finished_reads_as_running(tmp_path):
    log = tmp_path / "tests.log"
    log.write_text("start\ta::b[x y]\npassed\ta::b[x y]\nstart\ta::c\ngarbage line\n")
    assert lane.read_test_log(log) == {"a::b[x y]": "passed", "a::c": "running"}
    assert lane.finished_tests(lane.read_test_log(log)) == {"a::b[x y]": "passed"}
    assert lane.read_test_log(tmp_path / "missing") == {}


def test_the_qemu_monitor_answers_with_the_vcpu_registers(tmp_path):
    """qemu_monitor against a real QEMU, stopped before its first instruction (-S)."""
    import shutil
    if shutil.which(lane.QEMU) is None:
        pytest.skip(f"{lane.QEMU} not installed: apt-get install qemu-system-x86")
    socket = tmp_path / "monitor.sock"
    qemu = subprocess.Popen([lane.QEMU, "-accel", "tcg", "-display", "none", "-nodefaults",
                             "-S", "-monitor", f"unix:{socket},server=on,wait=off"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        out = lane.qemu_monitor(socket, "info registers -a")
    finally:
        qemu.kill()
        qemu.wait()
    assert "CPU#0" in out and "EIP=0000fff0" in out, out[:500]   # the reset vector
    assert "\x1b" not in out                                     # no echo of the command
    assert lane.qemu_monitor(tmp_path / "gone.sock", "info registers").startswith("(no answer")


def test_every_l1s_failure_reports_are_kept_and_printed_at_the_end(tmp_path, capsys):
    """A test fails in the first L1, which then hangs in another; the second L1 fails a third.
    Both tracebacks and the hang are printed after the lane's summary, and the first L1's
    junit XML is kept beside the second's."""
    import argparse

    args = argparse.Namespace(cache=tmp_path)
    calls = []

    def fails_hangs_then_fails(args, pytest_args):
        calls.append(1)
        log = tmp_path / lane.TEST_LOG
        if len(calls) == 1:
            lane.append_test_log(log, "start", "a::one")
            lane.append_test_log(log, "report", "a::one", "call: AssertionError: first L1\n  line 2")
            (tmp_path / "junit.xml").write_text("<first/>")
            raise _hung_l1(tmp_path, "failed\ta::one\nstart\ta::two\n", "first boot")
        lane.append_test_log(log, "start", "a::two")
        lane.append_test_log(log, "passed", "a::two")
        lane.append_test_log(log, "start", "a::three[x\ty]")
        lane.append_test_log(log, "report", "a::three[x\ty]", "setup: OSError: second L1")
        lane.append_test_log(log, "failed", "a::three[x\ty]")
        (tmp_path / "junit.xml").write_text("<second/>")
        return 1

    assert lane.run_l1_retrying_a_hang(args, [], run=fails_hangs_then_fails) == 1
    assert (tmp_path / "junit.hung-1.xml").read_text() == "<first/>"
    assert (tmp_path / "junit.xml").read_text() == "<second/>"
    reports = lane.failure_reports(tmp_path / lane.TEST_LOG)
    # ... and the tests that failed get two more L1s (boots 3 and 4), where a::three fails again
    assert [(r.boot, r.nodeid) for r in reports] == [(1, "a::one"), (1, "a::two"), (2, "a::three[x\ty]"),
                                                      (3, "a::three[x\ty]"), (4, "a::three[x\ty]")]
    assert reports[0].text == "call: AssertionError: first L1\n  line 2"
    out = capsys.readouterr().out
    summary = out.index("lane: over 4 L1 boots: 1 passed, 2 failed, 0 skipped; status 1")
    assert out.index("lane: 5 failure report(s) of this run") > summary, out
    assert "---- L1 boot 1: a::one ----\ncall: AssertionError: first L1\n  line 2\n" in out
    assert "---- L1 boot 1: a::two ----\nL1 hung while this test ran" in out
    assert "---- L1 boot 2: a::three[x\ty] ----\nsetup: OSError: second L1\n" in out


def test_a_fifth_hang_still_prints_the_reports(tmp_path, capsys):
    import argparse

    from lane_error import L1Hung

    def hangs(args, pytest_args):
        raise _hung_l1(tmp_path, "start\ta::slow\n", "")

    with pytest.raises(L1Hung):
        lane.run_l1_retrying_a_hang(argparse.Namespace(cache=tmp_path), [], run=hangs)
    reports = lane.failure_reports(tmp_path / lane.TEST_LOG)
    assert [(r.boot, r.nodeid) for r in reports] == [(n, "a::slow") for n in range(1, 6)]
    assert "lane: 5 failure report(s)" in capsys.readouterr().out


def test_a_report_cut_short_by_a_hang_still_names_its_test(tmp_path):
    (tmp_path / "tests.log").write_text('report\ta::b\t"call: Trace\n')
    assert lane.failure_reports(tmp_path / "tests.log")[0].nodeid.startswith("a::b")


def test_the_test_log_makes_its_folder(tmp_path):
    """A fresh clone has no .cache/hw: the lane's first log line must not fail on it."""
    path = tmp_path / "fresh" / ".cache" / "hw" / "tests.log"
    lane.append_test_log(path, "boot", "1")
    assert path.read_text() == "boot\t1\n"


@pytest.mark.kvm
def test_the_static_key_holders_are_two_vms_with_a_vcpu_each_until_released():
    def kvm_fds(kind: str) -> int:
        return sum(os.readlink(f"/proc/self/fd/{fd}") == f"anon_inode:kvm-{kind}"
                   for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}"))

    before = kvm_fds("vm"), kvm_fds("vcpu:0")
    with lane.hold_kvm_static_keys():
        assert kvm_fds("vm") == before[0] + 2 and kvm_fds("vcpu:0") > before[1]
    assert (kvm_fds("vm"), kvm_fds("vcpu:0")) == before


def test_a_test_that_fails_once_gets_one_fresh_l1_and_passes_the_lane_if_it_passes_there(tmp_path, capsys):
    import argparse

    args = argparse.Namespace(cache=tmp_path)
    runs = []

    def fails_then_passes(args, pytest_args):
        log = tmp_path / lane.TEST_LOG
        runs.append(sorted(lane.finished_tests(lane.read_test_log(log))))   # what TestLog leaves out
        (tmp_path / lane.SERIAL_LOG).write_text(f"console of L1 boot {len(runs)}\n")
        outcome = "failed" if len(runs) == 1 else "passed"
        for nodeid in (["a::one", "a::two"] if len(runs) == 1 else ["a::one"]):
            lane.append_test_log(log, "start", nodeid)
            lane.append_test_log(log, "passed" if nodeid == "a::two" else outcome, nodeid)
        return 1 if len(runs) == 1 else 0

    assert lane.run_l1_retrying_a_hang(args, [], run=fails_then_passes) == 0
    assert runs == [[], ["a::two"]], "the fresh L1 runs only the test that failed"
    assert "running them once more in a fresh L1" in capsys.readouterr().err
    assert lane.read_test_log(tmp_path / lane.TEST_LOG) == {"a::one": "passed", "a::two": "passed"}
    # The failing L1's console (its dmesg at the end) is kept; the next one has serial.log.
    assert (tmp_path / "serial.failed-1.log").read_text() == "console of L1 boot 1\n"
    assert (tmp_path / lane.SERIAL_LOG).read_text() == "console of L1 boot 2\n"


def _suite(tmp_path) -> Path:
    suite = tmp_path / "kvm-unit-tests"
    (suite / "x86").mkdir(parents=True)
    (suite / "x86" / "unittests.cfg").write_text("")
    return suite


def test_l1_gets_the_kvm_unit_tests_share_when_the_host_has_the_suite(tmp_path, monkeypatch):
    suite = _suite(tmp_path)
    monkeypatch.setenv("KVM_UNIT_TESTS_DIR", str(suite))
    assert suite.resolve() in lane.shared_trees(tmp_path / "cache")
    monkeypatch.setenv("KVM_UNIT_TESTS_DIR", str(tmp_path / "absent"))
    assert not any("absent" in str(tree) for tree in lane.shared_trees(tmp_path / "cache"))


def test_the_kvm_unit_tests_mode_passes_the_words_after_the_dashes_to_the_runner(tmp_path, monkeypatch):
    args, rest = lane.parse_args(["--kvm-unit-tests", "--", "--only", "setjmp"])
    calls = []
    monkeypatch.setattr(lane.subprocess, "call", lambda argv: calls.append(argv) or 0)
    assert lane.run_instead_of_tests(args, rest) == 0
    assert calls[0][1].endswith("kvm_unit_tests.py") and calls[0][-2:] == ["--only", "setjmp"]
    assert calls[0][2:4] == ["--timeout", str(lane.KUT_LANE_TIMEOUT_S)]   # before ARGS: they win
    plain, _ = lane.parse_args([])
    assert lane.run_instead_of_tests(plain, []) is None


def test_l1_has_room_for_the_largest_kvm_unit_tests_guest_unless_told_otherwise():
    """asyncpf boots a 2 GiB guest: in an L1 of 2 GiB neither VMM can give it that."""
    assert lane.parse_args(["--kvm-unit-tests"])[0].memory > 2048 + 1024
    assert lane.parse_args([])[0].memory == lane.L1_MEM_MIB
    assert lane.parse_args(["--kvm-unit-tests", "--memory", "3000"])[0].memory == 3000


def test_the_bench_mode_passes_the_words_after_the_dashes_to_the_script(monkeypatch):
    args, rest = lane.parse_args(["--bench", "vm_network", "--", "--guest", "linux", "--runs", "10"])
    calls = []
    monkeypatch.setattr(lane.subprocess, "call", lambda argv: calls.append(argv) or 0)
    assert lane.run_instead_of_tests(args, rest) == 0
    assert calls[0][1].endswith("run.py")
    assert calls[0][2:] == ["vm_network", "--", "--guest", "linux", "--runs", "10"]


def test_the_kvm_unit_tests_mode_skips_with_its_reason_without_the_suite(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KVM_UNIT_TESTS_DIR", str(tmp_path / "absent"))
    assert lane.main(["--kvm-unit-tests"]) == 0
    assert "kvm-unit-tests: skipped: no built suite" in capsys.readouterr().out


@pytest.fixture
def idle_qemu(tmp_path):
    """A real QEMU (TCG, no guest at all: its CPUs sit in reset) with an HMP monitor socket."""
    qemu = lane.QEMU
    if not shutil.which(qemu):
        pytest.skip(f"{qemu} is not installed")
    monitor = tmp_path / "monitor.sock"
    proc = subprocess.Popen([qemu, "-accel", "tcg", "-smp", "2", "-display", "none", "-S",
                             "-serial", "none", "-nodefaults", "-monitor", f"unix:{monitor},server=on,wait=off"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not monitor.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield monitor
    finally:
        proc.kill()
        proc.wait()


def test_a_hung_l1_report_names_each_lapic_timer_and_what_each_wake_up_test_did(idle_qemu, tmp_path):
    summary = lane.lapic_summary(lane.qemu_monitor(idle_qemu, "info lapic 1"))
    assert summary.startswith("LVTT ") and "; Timer " in summary and "; ISR " in summary, summary
    heartbeat = lane.Heartbeat(tmp_path / "heartbeat", 60)
    # A stopped QEMU (-S) writes no heartbeat: the NMI goes in and nothing beats; then its
    # vCPU threads, waiting in their loops, answer `stop` and `cont`.
    assert lane.wake_experiments(idle_qemu, heartbeat, wait=1) == [
        "an NMI did not wake L1 (no heartbeat for 1 s after it)",
        "every vCPU thread acknowledged `stop` and `cont`: they run, and refuse interrupts"]


def test_a_wake_up_test_that_brings_the_heartbeat_back_ends_the_experiments(idle_qemu, tmp_path):
    heartbeat = lane.Heartbeat(tmp_path / "heartbeat", 60)
    beat = threading.Timer(0.5, lambda: heartbeat.path.write_bytes(b"."))
    beat.start()
    try:
        lines = lane.wake_experiments(idle_qemu, heartbeat, wait=5)
    finally:
        beat.cancel()
    assert len(lines) == 1 and lines[0].startswith("an NMI woke L1: its heartbeat went on within "), lines


def test_the_l1_command_line_asks_for_the_periodic_tick_that_init_reports():
    """A lost interrupt request costs one tick only where the LAPIC timer is periodic; /init
    reports each CPU's tick mode from /proc/timer_list, which the lane prints."""
    assert {"nohz=off", "highres=off"} <= set(lane.L1_CMDLINE.split())
    script = lane_initramfs.init_script([], [], "/work", "true")
    program = script.split("tick=$(awk '", 1)[1].split("' /proc/timer_list", 1)[0]
    timer_list = ("Tick Device: mode:     1\nBroadcast device\nClock Event Device: hpet\n"
                  " mode:           1\n"
                  "Tick Device: mode:     0\nPer CPU device: 0\nClock Event Device: lapic\n"
                  " max_delta_ns:   1\n mode:           2\n"
                  "Tick Device: mode:     1\nPer CPU device: 1\nClock Event Device: lapic\n"
                  " mode:           3\n")
    awk = [str(lane.BUSYBOX), "awk"] if lane.BUSYBOX.exists() else ["awk"]   # L1 runs busybox's
    out = subprocess.run([*awk, program], input=timer_list, capture_output=True, text=True, check=True)
    assert out.stdout == "periodic,oneshot"


def test_sigterm_runs_the_lanes_cleanup(tmp_path):
    """After exit_on_sigterm, a SIGTERM unwinds like an exception: `finally` (and so each
    `with` that stops QEMU or virtiofsd) runs, and the status says which signal."""
    marker = tmp_path / "cleaned-up"
    program = ("import sys, time; sys.path[:0] = sys.argv[1:3]; import lane; lane.exit_on_sigterm()\n"
               "try:\n    print('ready', flush=True); time.sleep(60)\n"
               f"finally:\n    open({str(marker)!r}, 'w').close()\n")
    here = Path(lane.__file__).parent
    proc = subprocess.Popen([sys.executable, "-c", program, str(here), str(here.parent)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert marker.exists()


def test_l1_keeps_its_kvm_symbols_named_for_the_boot_that_the_test_log_numbers(tmp_path):
    """A RIP in module space is named only with the symbols of the L1 that printed it."""
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text("ffffffffad000000 T _text\n"
                        "ffffffffc05d1000 t svm_vcpu_run\t[kvm_amd]\n"
                        "ffffffffc0400000 T kvm_vcpu_ioctl\t[kvm]\n"
                        "ffffffffc0100000 t virtio_fs_probe\t[virtiofs]\n")
    log = tmp_path / lane.TEST_LOG
    lane.append_test_log(log, "boot", "1")
    lane.append_test_log(log, "boot", "3")
    saved = lane.save_kvm_symbols(log, kallsyms)
    assert saved == tmp_path / "l1-kallsyms-3.txt"
    assert saved.read_text() == ("ffffffffc05d1000 t svm_vcpu_run\t[kvm_amd]\n"
                                 "ffffffffc0400000 T kvm_vcpu_ioctl\t[kvm]\n")


def _vmcb_page(*, control: dict[int, tuple[str, int]], save: dict[int, tuple[str, int]]) -> bytearray:
    page = bytearray(lane_vmcb.PAGE)
    for offset, (fmt, value) in {**control, **save}.items():
        struct.pack_into(fmt, page, offset, value)
    return page


def test_a_hung_l1s_ram_is_searched_for_vmcbs_and_an_l1_rip_in_a_guest_vmcb_is_named(tmp_path):
    """The pages a VMRUN reads and writes, found by their layout (APM vol. 2, appendix B)."""
    v = lane_vmcb
    kernel_state = {v.EFER: ("<Q", 0x1D01), v.CS_SELECTOR: ("<H", 0x10), v.RSP: ("<Q", 0xFFFFB0E2C0A3FE00)}
    guest = _vmcb_page(control={v.INTERCEPT_VEC4: ("<I", 1), v.ASID: ("<I", 3), v.NP_ENABLE: ("<Q", 1),
                                v.EXIT_CODE: ("<Q", 0x7B), v.IOPM_BASE: ("<Q", 0x2C000000),
                                v.MSRPM_BASE: ("<Q", 0x2C004000)},
                       save={**kernel_state, v.RIP: ("<Q", 0xFFFFFFFFC05EDDCC), v.CR3: ("<Q", 0x76C30000)})
    host = _vmcb_page(control={}, save={**kernel_state, v.RIP: ("<Q", 0xFFFFFFFFC05EDD00),
                                        v.CR3: ("<Q", 0x5A000000)})
    lookalike = _vmcb_page(control={v.ASID: ("<I", 1)}, save={v.EFER: ("<Q", 0x1000), v.RIP: ("<Q", 0x1000)})
    data = _vmcb_page(control={v.INTERCEPT_VEC4: ("<I", 1), v.ASID: ("<I", 29), v.NP_ENABLE: ("<Q", 1),
                               v.EXIT_CODE: ("<Q", 0x41ED0011), v.IOPM_BASE: ("<Q", 0x1000),
                               v.MSRPM_BASE: ("<Q", 0x2000)}, save={v.EFER: ("<Q", 0x1000)})
    ram = bytes(lane_vmcb.PAGE) + guest + lookalike + host + data
    symbols = tmp_path / "l1-kallsyms-1.txt"
    symbols.write_text("ffffffffc05edd00 t __svm_vcpu_run\t[kvm_amd]\n"
                       "ffffffffc0400000 T kvm_vcpu_ioctl\t[kvm]\n")
    lines = lane_vmcb.scan(ram, lane_vmcb.kvm_symbols(symbols))
    assert lines == [
        "guest VMCB at 0x1000: asid 3, exit code 0x7b, cs 0x10 cpl 0, rip 0xffffffffc05eddcc "
        "(__svm_vcpu_run+0xcc [kvm_amd]), rsp 0xffffb0e2c0a3fe00, cr3 0x76c30000"
        "  <- L1's KVM code in a guest's saved state",
        "host save at 0x3000: asid 0, exit code 0x0, cs 0x10 cpl 0, rip 0xffffffffc05edd00 "
        "(__svm_vcpu_run+0x0 [kvm_amd]), rsp 0xffffb0e2c0a3fe00, cr3 0x5a000000"]
    assert lane_vmcb.scan(ram) == [line.replace(" (__svm_vcpu_run+0xcc [kvm_amd])", "")
                                   .replace("  <- L1's KVM code in a guest's saved state", "")
                                   .replace(" (__svm_vcpu_run+0x0 [kvm_amd])", "") for line in lines]


def test_reading_the_ram_of_a_process_without_a_memfd_is_one_line_not_an_exception():
    assert lane.vmcbs_in_ram(os.getpid(), Path("/nonexistent")) == [
        f"no RAM memfd among QEMU {os.getpid()}'s files"]
    assert lane.vmcbs_in_ram(2 ** 22 + 1, Path("/nonexistent"))[0].startswith("could not read L1's RAM: ")


@pytest.mark.parametrize("failures, status", [(2, 0), (3, 1)])
def test_a_failing_test_gets_two_fresh_l1s_and_fails_the_lane_only_if_it_fails_in_all_three(
        tmp_path, capsys, failures, status):
    import argparse

    args = argparse.Namespace(cache=tmp_path)
    runs = []

    def fails(args, pytest_args):
        runs.append(1)
        log = tmp_path / lane.TEST_LOG
        lane.append_test_log(log, "start", "a::flaky")
        lane.append_test_log(log, "failed" if len(runs) <= failures else "passed", "a::flaky")
        return 1 if len(runs) <= failures else 0

    assert lane.run_l1_retrying_a_hang(args, [], run=fails) == status
    assert len(runs) == min(failures + 1, 1 + lane.FAILED_TEST_RETRIES)
    err = capsys.readouterr().err
    assert "(retry 1 of 2, attempt 2 of 5)" in err and "(retry 2 of 2, attempt 3 of 5)" in err
    assert lane.read_test_log(tmp_path / lane.TEST_LOG) == {"a::flaky": "passed" if status == 0 else "failed"}
