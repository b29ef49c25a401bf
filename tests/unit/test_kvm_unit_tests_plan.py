"""The kvm-unit-tests runner's translation of unittests.cfg (tests/kvm_unit_tests.py).  No KVM."""
from __future__ import annotations

import os

import pytest

import kvm_unit_tests as kut      # tests/ is on sys.path (conftest.py)
from tiers import NESTED_TCG_ENV

CFG = """
# a comment
[plain]
file = plain.flat

[args]
file = plain.flat
test_args = 'cpuid'
qemu_params = -cpu max,host-phys-bits -m 2g -enable-kvm

[two_cpus]
file = plain.flat
smp = 2

[model]
file = plain.flat
qemu_params = -cpu qemu64,+x2apic

[flags]
file = plain.flat
qemu_params = -cpu max,+vmx

[machine]
file = plain.flat
qemu_params = -machine vmport=on -cpu max

[old]
file = old.flat
arch = i386

[missing]
file = missing.flat

[optional]
file = plain.flat
groups = vmx nodefault

[host_check]
file = plain.flat
check = {absent}=Y

[clock]
file = plain.flat
test_args = "10000000 `date +%s`"

[no_pit]
file = plain.flat
qemu_params = -machine pit=off

[slow]
file = plain.flat
timeout = 180

[minutes]
file = plain.flat
timeout = 2m
"""


@pytest.fixture
def plans(tmp_path) -> dict[str, kut.Plan]:
    (tmp_path / "plain.flat").write_bytes(b"")
    (tmp_path / "old.flat").write_bytes(b"")
    cfg = tmp_path / "unittests.cfg"
    cfg.write_text(CFG.format(absent=tmp_path / "no-such-parameter"))
    return {c.name: kut.plan(c, tmp_path) for c in kut.read_configs(cfg)}


def test_a_plain_test_runs_with_the_defaults(plans):
    p = plans["plain"]
    assert (p.skip, p.mem_mib, p.append, p.qemu_extra) == ("", kut.MEM_MIB, "", [])


def test_arguments_memory_and_the_host_cpu_model_are_translated(plans):
    p = plans["args"]
    assert (p.skip, p.mem_mib, p.append) == ("", 2048, "cpuid")
    assert p.qemu_extra == ["-cpu", "max,host-phys-bits"]
    assert "--mem" in kut.pykvm_command(p) and "2048M" in kut.pykvm_command(p)
    assert kut.qemu_command(p)[-2:] == ["-append", "cpuid"]


@pytest.mark.parametrize("name, reason", [
    ("two_cpus", "needs 2 CPUs"),
    ("model", "CPU model -cpu qemu64,+x2apic"),
    ("flags", "CPU model -cpu max,+vmx"),
    ("machine", "QEMU-only option -machine vmport=on"),
    ("old", "i386"),
    ("missing", "missing.flat is not built"),
    ("optional", "nodefault"),
    ("host_check", "no-such-parameter=Y fails (it is absent)"),
])
def test_what_pykvm_cannot_honour_is_skipped_with_its_reason(plans, name, reason):
    assert reason in plans[name].skip


def test_a_cpu_count_is_passed_on_once_pykvm_has_an_option_for_it(tmp_path):
    (tmp_path / "plain.flat").write_bytes(b"")
    config = kut.Config("smp", "plain.flat", smp=3)
    assert "needs 3 CPUs" in kut.plan(config, tmp_path).skip
    p = kut.plan(config, tmp_path, cpus_option="--cpus")
    assert p.skip == "" and kut.pykvm_command(p)[8:10] == ["--cpus", "3"]
    assert kut.qemu_command(p)[kut.qemu_command(p).index("-smp") + 1] == "3"


def test_a_test_that_aborts_the_lanes_outer_qemu_is_skipped_there_alone(tmp_path, monkeypatch):
    (tmp_path / "emulator.flat").write_bytes(b"")
    config = kut.Config("emulator", "emulator.flat")
    monkeypatch.delenv(NESTED_TCG_ENV, raising=False)
    assert kut.plan(config, tmp_path).skip == ""                       # on the host's KVM: it runs
    monkeypatch.setenv(NESTED_TCG_ENV, "1")                         # in L1, under the lane's TCG
    assert "aborts the lane's outer QEMU" in kut.plan(config, tmp_path).skip


def test_machine_pit_off_becomes_no_pit(plans):
    p = plans["no_pit"]
    assert p.skip == "" and "--no-pit" in kut.pykvm_command(p)
    command = kut.qemu_command(p)
    assert command[command.index("-kernel") - 2:command.index("-kernel")] == ["-machine", "pit=off"]


def test_a_tests_own_timeout_is_scaled_as_the_default_is(plans):
    """The suite gives a test without `timeout` 90 s: --timeout 30 scales every limit by a third."""
    assert kut.time_limit(plans["plain"], 30) == 30
    assert kut.time_limit(plans["slow"], 30) == 60
    assert kut.time_limit(plans["minutes"], 45) == 60
    assert plans["plain"].config.timeout_s is None


def test_the_shell_date_in_test_args_becomes_a_number(plans):
    first, second = plans["clock"].append.split()
    assert first == "10000000" and second.isdigit()


@pytest.mark.parametrize("status, stderr, result", [
    (1, "", "PASS"), (3, "", "FAIL"), (77, "", "SKIP"), (None, "", "TIMEOUT"),
    (1, "pykvm: error: VM stopped: triple fault\n", "ERROR"), (-6, "", "ERROR -6"),
])
def test_results_from_exit_statuses(status, stderr, result):
    assert kut.result_of(status, stderr) == result


def test_summary_names_what_qemu_passes_and_pykvm_does_not(plans):
    ok, bad = kut.Outcome("PASS", 1, ""), kut.Outcome("FAIL", 1, "")
    text, regressions = kut.summary([(plans["plain"], {"qemu": ok, "pykvm": bad}),
                                     (plans["args"], {"qemu": bad, "pykvm": ok}),
                                     (plans["two_cpus"], {})])
    assert regressions == ["plain"]
    assert "2 run, 1 skipped" in text and "QEMU 1, under pykvm 1" in text


def test_the_suite_folder_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(kut.ENV_DIR, str(tmp_path))
    assert kut.suite_dir() is None                          # no x86/unittests.cfg inside
    (tmp_path / "x86").mkdir()
    (tmp_path / "x86" / "unittests.cfg").write_text("")
    assert kut.suite_dir() == tmp_path


def test_an_error_line_says_why():
    p = kut.Plan(kut.Config("t", "t.flat"), None)
    qemu = kut.Outcome("ERROR -6", 1, "", kut.first_error("warning: x\nqemu: error: failed to set MSR 0x10a\n"))
    ours = kut.Outcome("ERROR", 1, "", kut.first_error("pykvm: error: VM stopped: KVM internal error\n"))
    line = kut.report_line(p, {"qemu": qemu, "pykvm": ours})
    assert line.endswith("qemu: error: failed to set MSR 0x10a; pykvm: VM stopped: KVM internal error")


def test_the_console_is_in_the_log_while_the_test_still_runs(tmp_path):
    """A test that takes the machine down with it leaves what it printed: the log is
    written as the console prints, not when the VMM ends.  (The command copies its own
    log while it runs.)"""
    log, copy = tmp_path / "t.qemu.log", tmp_path / "copy"
    outcome = kut.run(["sh", "-c", f"echo console-line; cp {log} {copy}; echo oops >&2; exit 3"], 30, log)
    assert "console-line" in copy.read_text()
    assert copy.read_text().startswith("sh -c ")                      # the command comes first
    assert log.read_text().endswith("console-line\noops\n")            # then stderr, at the end
    assert outcome.result == "FAIL" and outcome.log == log.read_text()


def test_a_vmm_that_does_not_go_after_sigkill_is_left_behind(tmp_path, monkeypatch):
    """A VMM whose KVM_RUN never returns cannot die; the run goes on to the next test.
    (Here a child that left the process group keeps the output pipe open instead.)"""
    monkeypatch.setattr(kut, "KILL_WAIT_S", 1)
    escaped = tmp_path / "escaped.pid"
    outcome = kut.run(["sh", "-c", f"setsid sleep 30 & echo $! > {escaped}; sleep 30"], 0.5, tmp_path / "t.log")
    os.kill(int(escaped.read_text()), 9)
    assert outcome.result == "TIMEOUT" and "still running 1 s after SIGKILL" in outcome.log
