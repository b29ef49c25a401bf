"""The tiny kernel on two CPUs: it finds them in the MADT, starts the AP, runs programs on both.

The same ELF and script on pykvm (`--cpus 2`) and on QEMU (`-smp 2 -accel kvm`, `slow`).
The kernel's `cpus` command counts, at every timer tick that finds a user
program running, whether another CPU is running one too ("TOGETHER"): more
than zero is two programs computing at the same moment, which one CPU cannot do.
"""
from __future__ import annotations

import functools
import re

import pytest

from tinyvm import Run, boot, build_tiny, vmm_problem

pytestmark = pytest.mark.kvm

VMMS = [pytest.param("pykvm", id="pykvm"), pytest.param("qemu", id="qemu", marks=pytest.mark.slow)]
# Two busy programs in the background; the shell runs `sleeper` meanwhile (300 ms), so
# by `ps` both have run somewhere; `run busy busy` then waits for two more to finish.
SESSION = "cpus;run busy busy &;run sleeper;ps;run busy busy;cpus;poweroff"


@functools.cache
def session(vmm: str, cpus: int) -> Run:
    problem = vmm_problem(vmm)
    if problem:
        pytest.skip(problem)
    build_tiny()
    return boot(vmm, "run=" + SESSION, cpus=cpus)


def output_of(run: Run, command: str, nth: int = 0) -> list[str]:
    """The lines the nth `command` printed, up to the next prompt."""
    lines = run.lines
    start = [i for i, line in enumerate(lines) if line == f"tiny$ {command}"][nth] + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("tiny$ ")), len(lines))
    return lines[start:end]


def cpu_rows(lines: list[str]) -> dict[int, dict]:
    """The `cpus` table: CPU index -> its columns."""
    rows = {}
    for line in lines:
        m = re.fullmatch(r"\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\S+) \(pid (\d+)\)", line)
        if m:
            cpu, apic, ticks, user, together, switches, name, pid = m.groups()
            rows[int(cpu)] = {"apic": int(apic), "user": int(user), "together": int(together),
                              "running": name}
    return rows


@pytest.fixture(params=VMMS)
def vmm(request) -> str:
    return request.param


def test_the_kernel_finds_and_starts_both_cpus(vmm):
    run = session(vmm, 2)
    assert re.fullmatch(r"tiny 1\.0: \d+ MiB RAM, 2 CPUs, timer 100 Hz, 8 user programs\. Type 'help'\.",
                        run.lines[1]), run.lines[:3]
    first = output_of(run, "cpus")
    assert first[0] == "2 CPUs in the ACPI MADT, 2 running", first
    rows = cpu_rows(first)
    assert [rows[i]["apic"] for i in (0, 1)] == [0, 1], first
    assert rows[0]["running"] == "shell" and rows[1]["running"] == "idle", first
    assert run.status == 0, run.console[-500:]


def test_ps_shows_the_cpu_of_each_program(vmm):
    """After 300 ms of `sleeper`, a background `busy` still alive has run: ps names its CPU.
    (On a fast host both may be done already: then ps lists the shell alone.)"""
    ps = output_of(session(vmm, 2), "ps")
    assert ps[:2] == ["PID  STATE     CPU  NAME", "  0  running     0  shell"], ps
    # (a background busy may print a round between the rows)
    busy = [line.split() for line in ps[2:] if re.fullmatch(r" *\d+  +[a-z]+ +(\d+|-)  \w+", line)]
    assert all(name == "busy" and cpu in ("0", "1") for _, _, cpu, name in busy), ps


# The host decides when each vCPU thread runs.  With both of its cores busy elsewhere
# (seen once, QEMU's threads beside the L1 lane), the two threads can be given a CPU in
# turn for the whole of a `busy` pair and lose most of their timer ticks meanwhile, so one
# session may sample no tick with both programs running.  Two CPUs that never run two
# programs at once find none in any session.
SESSIONS_FOR_TOGETHER = 3


def test_two_programs_run_at_the_same_time_on_two_cpus(vmm):
    run = session(vmm, 2)
    rows = cpu_rows(output_of(run, "cpus", 1))
    assert rows[1]["user"] > 0, rows                                 # the AP ran user code
    tries = [rows]
    while sum(r["together"] for r in rows.values()) == 0 and len(tries) < SESSIONS_FOR_TOGETHER:
        rows = cpu_rows(output_of(boot(vmm, "run=" + SESSION, cpus=2), "cpus", 1))
        tries.append(rows)
    assert sum(r["together"] for r in rows.values()) > 0, tries
    rounds = [line for line in run.lines if line.startswith("busy ")]
    assert len(rounds) == 4 * 4, rounds
    cpus_seen = {line.rsplit(" ", 1)[1] for line in rounds}
    assert "1" in cpus_seen and cpus_seen <= {"0", "1"}, rounds     # the AP ran programs
    assert run.status == 0


def test_one_cpu_never_runs_two_programs_at_once():
    """The control: the same session on one vCPU counts no tick with two programs running."""
    run = session("pykvm", 1)
    rows = cpu_rows(output_of(run, "cpus", 1))
    assert list(rows) == [0] and rows[0]["together"] == 0, rows
    assert output_of(run, "cpus")[0] == "1 CPU in the ACPI MADT, 1 running"
