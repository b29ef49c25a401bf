#!/usr/bin/env python3
"""Benchmark: the same CPU-bound user work on 1 and on 2 vCPUs, pykvm and QEMU side by side.

The tiny kernel runs two `busy` programs (4 rounds of user-mode arithmetic
each), three times, between two `uptime`s; the guest's own clock (the 8254 PIT, 100 Hz,
which KVM drives from host time) gives the seconds the work took, without
the VMM's start-up or the kernel's boot.  Same ELF, same script, on
`pykvm boot --cpus N` and `qemu-system-x86_64 -smp N -accel kvm`.
Prints min/median/max seconds per VMM and CPU count, and each VMM's
speed-up (median on 1 vCPU / median on 2).  The goal, where the host has
two free cores: >= 1.7x.  On a loaded host the vCPU threads share the cores
with everything else, and the figure says so.  A host control runs beside
them, interleaved: two host processes of plain arithmetic, one after the other
and then at once, whose speed-up is what this machine's two CPUs can give.

Starting a program is kernel work, which PVM's /dev/kvm emulates at about a
million instructions a second, and the shell starts the programs one after the
other: that part cannot get faster on two CPUs.  The bench measures it with
the same script running `hello` in place of `busy`, and reports the speed-up
of the user work alone ((busy - hello) on 1 vCPU / the same on 2) beside the
raw one.  `--tcg` adds QEMU's software CPU with one host thread per vCPU
(MTTCG) as a control: it shows how well the guest itself scales, whatever
/dev/kvm does.

    .venv/bin/python tests/bench/bench_smp.py [--runs 3] [--no-qemu] [--tcg]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent.parent / "kvm")]
import tinyvm  # noqa: E402  (tests/kvm/tinyvm.py: the VMM command lines)

SCRIPT = "run=uptime;run busy busy;run busy busy;run busy busy;uptime;poweroff"
# The same programs started and ended without the work: what the shell and kernel cost.
BASELINE = SCRIPT.replace("busy", "hello")
# The host's own control: the same shape of work as two host processes, one after the other
# and then at once.  A machine whose two CPUs are themselves shared (a VM on an overcommitted
# host) gives less than 2x here, and no VMM can give its guest more than the host has.
SPIN = "n = 0\nfor _ in range(6_000_000):\n    n += 1"
UPTIME = re.compile(r"^up \d+\.\d\d s \((\d+) ticks at (\d+) Hz\)", re.M)


def work_seconds(argv: list[str]) -> float:
    """Guest seconds between the two uptimes of one boot."""
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=tinyvm.TIMEOUT_S)
    text = proc.stdout.decode(errors="replace")
    found = UPTIME.findall(text)
    if proc.returncode != 0 or len(found) != 2:
        raise SystemExit(f"{argv[0]} exited with {proc.returncode}:\n{text[-800:]}"
                         f"{proc.stderr.decode(errors='replace')[-400:]}")
    (t0, hz), (t1, _) = found
    return (int(t1) - int(t0)) / int(hz)


def host_seconds(together: bool) -> float:
    """Wall seconds for two host processes of SPIN, one after the other or at once."""
    argv = [sys.executable, "-c", SPIN]
    start = time.monotonic()
    if together:
        for proc in [subprocess.Popen(argv) for _ in range(2)]:
            proc.wait()
    else:
        for _ in range(2):
            subprocess.run(argv, check=True)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-qemu", action="store_true", help="measure pykvm only")
    parser.add_argument("--tcg", action="store_true", help="also QEMU -accel tcg,thread=multi")
    args = parser.parse_args()

    elf = tinyvm.build_tiny()
    vmms = {"pykvm": lambda n, script: tinyvm.pykvm_command(elf, script, n)}
    if not args.no_qemu and tinyvm.vmm_problem("qemu") is None:
        vmms["qemu -accel kvm"] = lambda n, script: tinyvm.qemu_command(elf, script, cpus=n)
        if args.tcg:
            vmms["qemu -accel tcg"] = lambda n, script: tinyvm.qemu_command(
                elf, script, accel="tcg,thread=multi", cpus=n)
    load = os.getloadavg()[0]
    print(f"two `busy` programs three times, {args.runs} runs each, interleaved, guest seconds "
          f"(host processes: wall seconds); host: {os.cpu_count()} CPUs, "
          f"load average {load:.1f}")
    print(f"{'vmm':<18} {'vCPUs':>5} {'min':>7} {'median':>7} {'max':>7}")
    sides = {"host processes": lambda cpus: host_seconds(together=cpus == 2),
             **{name: (lambda cpus, argv_for=argv_for: work_seconds(argv_for(cpus, SCRIPT)))
                for name, argv_for in vmms.items()}}
    times = {(name, cpus): [] for name in sides for cpus in (1, 2)}
    baseline = {(name, cpus): [] for name in vmms for cpus in (1, 2)}
    for _ in range(args.runs):                  # interleaved: load changes fall on every side
        for name, measure in sides.items():
            for cpus in (1, 2):
                times[name, cpus].append(measure(cpus))
                if name in vmms:
                    baseline[name, cpus].append(work_seconds(vmms[name](cpus, BASELINE)))
    speedups = {}
    for name in sides:
        medians = {cpus: statistics.median(times[name, cpus]) for cpus in (1, 2)}
        for cpus in (1, 2):
            t = times[name, cpus]
            print(f"{name:<18} {cpus:>5} {min(t):7.2f} {medians[cpus]:7.2f} {max(t):7.2f}")
        speedups[name] = medians[1] / medians[2]
        print(f"{name:<18} speed-up 1 -> 2: {speedups[name]:.2f}x"
              + ("" if name == "host processes" else " (goal >= 1.7x with 2 free host cores)"))
    for name in vmms:
        print(f"{name} speed-up / the host's own: {speedups[name] / speedups['host processes']:.2f}")
    print("starting the programs alone (`hello` for `busy`), guest seconds:")
    for name in vmms:
        start = {cpus: statistics.median(baseline[name, cpus]) for cpus in (1, 2)}
        for cpus in (1, 2):
            t = baseline[name, cpus]
            print(f"{name:<18} {cpus:>5} {min(t):7.2f} {start[cpus]:7.2f} {max(t):7.2f}")
        work = {cpus: statistics.median(times[name, cpus]) - start[cpus] for cpus in (1, 2)}
        print(f"{name:<18} user work alone, speed-up 1 -> 2: {work[1] / work[2]:.2f}x "
              f"({work[1]:.2f} s / {work[2]:.2f} s; goal >= 1.7x with 2 free host cores)")

if __name__ == "__main__":
    main()
