#!/usr/bin/env python3
"""Benchmark: boot guests/tiny to power-off, `pykvm boot` vs QEMU.

Whole processes, as a user would run them: each run starts the VMM, the
kernel boots, runs the command line's script and powers off; we time from
spawn to exit.  Same ELF, same command line, same memory size.  Two QEMU
machines: `-M microvm` (no firmware: qboot jumps to the PVH entry, the fair
peer for a VMM that has no BIOS either) and `-M pc` (SeaBIOS first, which on
PVM-backed KVM costs seconds).  microvm has no ACPI PM block, so tiny's
poweroff leaves it at once through isa-debug-exit with status 1; pykvm and
-M pc end with 0.  The VMMs' runs are interleaved.  Prints min/median/max per VMM and the ratio of medians (goal: pykvm
<= 0.5x QEMU -M microvm; the -M pc ratio mostly measures SeaBIOS).

    .venv/bin/python tests/bench/bench_tiny_boot.py [--runs 10] [--cmdline 'run=info;poweroff'] [--tcg]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent.parent / "kvm")]
import tinyvm  # noqa: E402  (tests/kvm/tinyvm.py: the VMM command lines)

DEFAULT_CMDLINE = "run=info;poweroff"


def time_boot(argv: list[str], status: int = 0) -> float:
    """Seconds from spawning the VMM to its exit; another status than `status` aborts the benchmark."""
    start = time.perf_counter()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=tinyvm.TIMEOUT_S)
    elapsed = time.perf_counter() - start
    if proc.returncode != status:
        tail = proc.stdout.decode(errors="replace")[-500:] + proc.stderr.decode(errors="replace")[-500:]
        raise SystemExit(f"{argv[0]} exited with {proc.returncode}:\n{tail}")
    return elapsed


def measure(vmms: dict[str, list[str]], runs: int, status: dict[str, int]) -> dict[str, list[float]]:
    """Interleaved: run r of every VMM before run r+1 of any, so a change in the machine's
    load falls on all of them alike."""
    for name, argv in vmms.items():
        time_boot(argv, status.get(name, 0))        # warm-up: page cache, Python bytecode
    times: dict[str, list[float]] = {name: [] for name in vmms}
    for _ in range(runs):
        for name, argv in vmms.items():
            times[name].append(time_boot(argv, status.get(name, 0)))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--cmdline", default=DEFAULT_CMDLINE)
    parser.add_argument("--tcg", action="store_true", help="also time QEMU with -accel tcg")
    args = parser.parse_args()

    elf = tinyvm.build_tiny()
    peers = {"qemu -M microvm": tinyvm.microvm_command(elf, args.cmdline, []),
             "qemu (-accel kvm)": tinyvm.qemu_command(elf, args.cmdline)}
    status = {"qemu -M microvm": tinyvm.MICROVM_POWEROFF}
    if args.tcg:
        peers["qemu (-accel tcg)"] = tinyvm.qemu_command(elf, args.cmdline, accel="tcg")
    candidates = {}
    problem = tinyvm.vmm_problem("pykvm")
    if problem:
        print(f"pykvm: not measured: {problem}")
    else:
        candidates["pykvm boot"] = tinyvm.pykvm_command(elf, args.cmdline)

    print(f"tiny boot to poweroff, cmdline {args.cmdline!r}, {args.runs} runs each, seconds")
    print(f"{'vmm':<20} {'min':>7} {'median':>7} {'max':>7}")
    medians = {}
    for name, times in measure({**candidates, **peers}, args.runs, status).items():
        medians[name] = statistics.median(times)
        print(f"{name:<20} {min(times):7.3f} {medians[name]:7.3f} {max(times):7.3f}")
    for peer in peers if "pykvm boot" in medians else ():
        ratio = medians["pykvm boot"] / medians[peer]
        goal = " (goal <= 0.5x)" if peer == "qemu -M microvm" else ""
        print(f"median ratio pykvm / {peer}: {ratio:.2f}x{goal}")


if __name__ == "__main__":
    main()
