#!/usr/bin/env python3
"""Benchmark: gdb's `stepi` round trip, `pykvm boot --gdb` vs QEMU's gdbstub (TCG).

Each run boots guests/tiny stopped, lets gdb (batch mode) break at
cmd_uptime, then times `stepi N` with gdb's own clock (gdb's Python): every
step is a vCont;s packet, one KVM_EXIT_DEBUG (or one TCG step), a stop reply
and gdb's register and memory reads.  Prints steps per second, min/median/max
per VMM, and the ratio of medians.  QEMU runs with TCG: under KVM its gdbstub
plants int3 for breakpoints, which never exits on PVM-backed KVM.

    .venv/bin/python tests/bench/bench_gdb.py [--runs 5] [--steps 200]
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(TESTS), str(TESTS / "kvm")]
from gdbsession import gdb_argv, gdb_problem, sections, start_pykvm, start_qemu  # noqa: E402
from tinyvm import build_tiny  # noqa: E402

CMDLINE = "run=uptime;poweroff"


def steps_per_second(start, steps: int) -> float:
    proc, port = start(CMDLINE)
    try:
        timed = ["python import time; t0 = time.perf_counter()", f"stepi {steps}",
                 f"python print('RATE %.1f' % ({steps} / (time.perf_counter() - t0)))"]
        out = subprocess.run(gdb_argv(port, [("break", ["break cmd_uptime", "continue"]), ("steps", timed),
                                             ("kill", ["kill"])]),
                             capture_output=True, text=True, timeout=600).stdout
        found = re.search(r"RATE ([\d.]+)", sections(out).get("steps", ""))
        if not found:
            raise SystemExit(f"no rate measured:\n{out[-2000:]}")
        return float(found.group(1))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    if gdb_problem():
        raise SystemExit(gdb_problem())
    build_tiny()
    medians = {}
    for name, start in (("pykvm --gdb", start_pykvm), ("qemu -accel tcg -gdb", start_qemu)):
        rates = [steps_per_second(start, args.steps) for _ in range(args.runs)]
        medians[name] = statistics.median(rates)
        print(f"{name:<22} stepi/s  min {min(rates):8.1f}  median {medians[name]:8.1f}  max {max(rates):8.1f}"
              f"  ({args.runs} runs of {args.steps} steps)")
    pykvm, qemu = medians.values()
    print(f"pykvm / qemu (median stepi/s): {pykvm / qemu:.2f}x")


if __name__ == "__main__":
    main()
