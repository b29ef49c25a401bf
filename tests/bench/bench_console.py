#!/usr/bin/env python3
"""Benchmark: guest console throughput, the tiny kernel printing to its UART, pykvm vs QEMU microvm.

The tiny kernel's `flood` program writes 64 KiB of text; the command line
runs it K times and powers off.  Every byte is an `out` to the 16550's
transmit register (and the driver reads the line status register first), so
each byte costs the VMM two I/O exits: this measures the VMM's exit path as
much as its console.  Each VMM boots the same ELF with K = 0 and with K; the
difference of the wall-clock times is the time of K x 64 KiB, so boot cost
cancels out.  Output goes to a pipe the benchmark reads and counts, so both
VMMs write to the same kind of sink.  Goal: pykvm >= QEMU in bytes/s.

QEMU -M microvm has no ACPI PM block: tiny's poweroff leaves it through
isa-debug-exit with status 1.

    .venv/bin/python tests/bench/bench_console.py [--runs 5] [--kib 1024]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "kvm")]
import tinyvm  # noqa: E402

FLOOD_BYTES = 64 * 1024                 # what one `run flood` writes (guests/tiny/user/flood.c)


def script(floods: int) -> str:
    return "run=" + "run flood;" * floods + "poweroff"


def timed(argv: list[str], status: int, floods: int) -> float:
    """Seconds from spawn to exit; checks the status and that every flood arrived whole."""
    start = time.perf_counter()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=tinyvm.TIMEOUT_S * (1 + floods))
    elapsed = time.perf_counter() - start
    out = proc.stdout.decode(errors="replace")
    arrived = out.count(f"flood: {FLOOD_BYTES} bytes")
    if proc.returncode != status or arrived != floods:
        raise SystemExit(f"{argv[0]}: status {proc.returncode}, {arrived} of {floods} floods:\n"
                         f"{out[-300:]}{proc.stderr.decode(errors='replace')[-300:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--kib", type=int, default=1024, help="KiB printed per run (multiple of 64)")
    args = parser.parse_args()
    floods = max(1, args.kib // 64)

    elf = tinyvm.build_tiny()
    vmms = {}
    problem = tinyvm.vmm_problem("pykvm")
    if problem:
        print(f"pykvm: not measured: {problem}")
    else:
        vmms["pykvm boot"] = (lambda s: tinyvm.pykvm_command(elf, s), 0)
    problem = tinyvm.vmm_problem("qemu")
    if problem:
        print(f"qemu: not measured: {problem}")
    else:
        vmms["qemu -M microvm"] = (lambda s: tinyvm.microvm_command(elf, s, []), tinyvm.MICROVM_POWEROFF)

    total = floods * FLOOD_BYTES
    print(f"console throughput: {floods} x 64 KiB = {total // 1024} KiB per run, {args.runs} runs, "
          "KiB/s (time with the floods minus time without)")
    print(f"{'vmm':<18} {'min':>8} {'median':>8} {'max':>8}")
    medians = {}
    for name, (command, status) in vmms.items():
        timed(command(script(0)), status, 0)              # warm-up: page cache, bytecode
        rates = []
        for _ in range(args.runs):                        # each run: one boot without, one with
            base = timed(command(script(0)), status, 0)
            full = timed(command(script(floods)), status, floods)
            rates.append(total / 1024 / max(full - base, 1e-6))
        medians[name] = statistics.median(rates)
        print(f"{name:<18} {min(rates):8.1f} {medians[name]:8.1f} {max(rates):8.1f}")
    if len(medians) == 2:
        print(f"median ratio pykvm / qemu -M microvm: {medians['pykvm boot'] / medians['qemu -M microvm']:.2f}x "
              "(goal >= 1.0x)")


if __name__ == "__main__":
    main()
