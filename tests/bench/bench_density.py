#!/usr/bin/env python3
"""Benchmark: N tiny VMs at once, `pykvm boot` vs QEMU -M microvm: host memory per VM and time.

Each run starts N VMMs back to back (default 50), each booting guests/tiny with
cmdline "run=info" and the same memory size, and reads all their consoles
through one selector.  When every guest idles at its shell prompt, the PSS of
each VMM process and its descendants (/proc/PID/smaps_rollup; a page shared by
k processes counts 1/k in each, so the sum is what the N cost the host) is
summed and divided by N; bench_vmm_memory.py splits one VM's memory into guest
RAM and the VMM's own.  Then "poweroff" goes to every console, and "all-done"
is the time from the first spawn to the last VMM's exit (it includes the pause
to read the memory, printed too).  An idle guest is not free: its 100 Hz timer
costs its VMM a few percent of a CPU, so N of them can keep a small host busy.
Every wait has a deadline; a VM that does not reach its prompt or does not
power off is reported with what it printed, never hidden, and the leftovers are
killed.  Prints min/median/max per VMM and ratios pykvm / QEMU of the medians.

    .venv/bin/python tests/bench/bench_density.py [--vms 50] [--runs 3] [--deadline 600]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "kvm")]
import tinyvm  # noqa: E402  (tests/kvm/tinyvm.py: the VMM command lines)
from hostmem import KIB, process_tree, rollup  # noqa: E402  (tests/hostmem.py)
from vmmfleet import TINY_PROMPT, Vmm, kill_all, spawn_all, tiny_idle, wait_all  # noqa: E402

CMDLINE = "run=info"
POWEROFF_ECHO = TINY_PROMPT + b"poweroff"


@dataclass
class Fleet:
    """One run of N VMs under one VMM: what it took, and what went wrong."""

    at_prompt: float = 0.0          # s, first spawn to the last guest at its prompt
    all_done: float = 0.0           # s, first spawn to the last VMM's exit
    pause: float = 0.0              # s, reading memory between the two
    pss: float = 0.0                # kB per VM at its prompt
    powered_off: int = 0
    failures: list[str] = field(default_factory=list)


def pss_per_vm(vmms: list[Vmm]) -> float:
    """PSS (kB) per VM over every VMM process tree.  smaps_rollup only: the whole smaps of
    fifty processes takes seconds to read on a host the idle guests keep busy."""
    return sum(rollup(pid)["Pss"] for vm in vmms for pid in process_tree(vm.pid)) / len(vmms)


def failure(vm: Vmm, what: str) -> str:
    return f"pid {vm.pid}: {what} (exit {vm.proc.poll()}): {vm.tail()}"


def run_fleet(argv: list[str], count: int, status: int, deadline_s: float) -> Fleet:
    """Boot `count` VMs under one VMM, measure them idle, power them all off."""
    fleet = Fleet()
    start = time.monotonic()
    vmms = spawn_all(argv, count)
    try:
        late = wait_all(vmms, tiny_idle, time.monotonic() + deadline_s)
        fleet.at_prompt = time.monotonic() - start
        fleet.failures += [failure(vm, "no idle prompt") for vm in late]
        idle = [vm for vm in vmms if vm not in late]
        paused = time.monotonic()
        if idle:
            fleet.pss = pss_per_vm(idle)
        fleet.pause = time.monotonic() - paused
        for vm in idle:
            vm.send(b"poweroff\n")
        running = wait_all(idle, lambda vm: vm.ended is not None, time.monotonic() + deadline_s)
        fleet.all_done = time.monotonic() - start
        fleet.failures += [failure(vm, "still running after poweroff") for vm in running]
        for vm in idle:
            if vm.ended is not None and vm.proc.returncode == status and POWEROFF_ECHO in vm.console:
                fleet.powered_off += 1
            elif vm.ended is not None:
                fleet.failures.append(failure(vm, f"did not power off with status {status}"))
        return fleet
    finally:
        kill_all(vmms)


def summary(name: str, values: list[float], unit: str) -> str:
    return (f"  {name:<32} {min(values):8.2f} {statistics.median(values):8.2f} "
            f"{max(values):8.2f} {unit}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=600, help="seconds each phase may take")
    args = parser.parse_args()
    for vmm in ("pykvm", "qemu"):
        if problem := tinyvm.vmm_problem(vmm):
            raise SystemExit(f"not measured: {problem}")
    elf = tinyvm.build_tiny()
    sides = {"pykvm boot": (tinyvm.pykvm_command(elf, CMDLINE), 0),
             "qemu -M microvm": (tinyvm.microvm_command(elf, CMDLINE, []), tinyvm.MICROVM_POWEROFF)}
    fleets: dict[str, list[Fleet]] = {name: [] for name in sides}
    for name, (argv, status) in sides.items():          # warm-up: page cache, bytecode
        run_fleet(argv, 1, status, args.deadline)
    for _ in range(args.runs):      # interleaved, so both sides see the same machine noise
        for name, (argv, status) in sides.items():
            fleets[name].append(run_fleet(argv, args.vms, status, args.deadline))

    print(f"{args.vms} tiny VMs at once, cmdline {CMDLINE!r}, {tinyvm.MEM_MIB} MiB each, "
          f"{args.runs} runs per VMM")
    print(f"{'':<34} {'min':>8} {'median':>8} {'max':>8}")
    medians: dict[str, dict[str, float]] = {}
    for name, runs in fleets.items():
        figures = {"PSS per VM": [f.pss / KIB for f in runs],
                   "all at the prompt": [f.at_prompt for f in runs],
                   "all-done (spawn to last exit)": [f.all_done for f in runs],
                   "  of which reading memory": [f.pause for f in runs]}
        medians[name] = {what: statistics.median(values) for what, values in figures.items()}
        print(name)
        for what, values in figures.items():
            print(summary(what, values, "MiB" if "PSS" in what else "s"))
        powered = [f.powered_off for f in runs]
        print(f"  powered off {min(powered)}..{max(powered)} of {args.vms} per run")
        for f in runs:
            for line in f.failures:
                print(f"  FAILED: {line}")
    for what in ("PSS per VM", "all-done (spawn to last exit)"):
        ours, theirs = medians["pykvm boot"][what], medians["qemu -M microvm"][what]
        ratio = f"{ours / theirs:.2f}x" if theirs else "n/a (nothing measured)"
        print(f"median ratio pykvm / qemu -M microvm, {what}: {ratio}")


if __name__ == "__main__":
    main()
