#!/usr/bin/env python3
"""Benchmark: the tiny kernel's disk reads, pykvm's virtio-blk vs QEMU microvm's.

The same ELF and the same 64 MiB raw image (random bytes, in the page cache
after the warm-up run) on both VMMs; the guest times itself with its shell's `dbench`:
sequential 1 MiB reads (MiB/s) and 4 KiB reads at pseudo-random offsets (reads
per second, the same offsets on both VMMs), one request in flight.  Its clock
is the 100 Hz timer, so each run is sized to last a few hundred ticks.  Prints
min/median/max per VMM and the ratio of medians (goals: pykvm >= 1.0x QEMU for
1 MiB, >= 0.7x for 4 KiB).

    .venv/bin/python tests/bench/bench_tiny_disk.py [--runs 5] [--mib 512] [--reads 2000]
        [--virtio-notify eventfd|exit]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent.parent / "kvm")]
import tinyvm  # noqa: E402  (tests/kvm/tinyvm.py: the VMM command lines)

IMAGE_MIB = 64                      # sequential reads wrap around at its end
RESULT = re.compile(r"dbench: (\d+) reads of (\d+) KiB from vda in (\d+) ticks")
TIMER_HZ = 100                      # the tiny kernel's tick (guests/tiny/defs.h)
GOALS = {"seq": 1.0, "rand": 0.7}


def rates(argv: list[str]) -> dict[str, float]:
    """One boot: {"seq": MiB/s, "rand": reads/s} from the guest's dbench lines."""
    run = tinyvm.run(argv)
    found = [m.groups() for m in RESULT.finditer(run.console)]
    if len(found) != 2:
        raise SystemExit(f"{argv[0]}: no dbench results (status {run.status}):\n"
                         f"{run.console[-800:]}")
    (seq_n, seq_kib, seq_ticks), (rand_n, _, rand_ticks) = [tuple(map(int, g)) for g in found]
    if not seq_ticks or not rand_ticks:
        raise SystemExit("a run took less than one tick: make it longer (--mib, --reads)")
    return {"seq": seq_n * seq_kib / 1024 / (seq_ticks / TIMER_HZ),
            "rand": rand_n / (rand_ticks / TIMER_HZ)}


def measure(argv: list[str], runs: int) -> dict[str, list[float]]:
    rates(argv)                            # warm-up: page cache, Python bytecode
    samples = [rates(argv) for _ in range(runs)]
    return {kind: [s[kind] for s in samples] for kind in GOALS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mib", type=int, default=512, help="MiB of sequential 1 MiB reads")
    parser.add_argument("--reads", type=int, default=2000, help="random 4 KiB reads")
    parser.add_argument("--virtio-notify", default="eventfd", choices=["eventfd", "exit"])
    args = parser.parse_args()

    elf = tinyvm.build_tiny()
    script = f"run=dbench seq {args.mib};dbench rand {args.reads};poweroff"
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp, "disk.img")
        image.write_bytes(os.urandom(IMAGE_MIB << 20))
        vmms = {"qemu microvm": tinyvm.microvm_command(elf, script, [tinyvm.Disk(image)])}
        if tinyvm.vmm_problem("pykvm") or not tinyvm.pykvm_has_disks():
            print("pykvm: not measured: `pykvm boot --disk` is not in this checkout")
        else:
            vmms = {"pykvm boot": tinyvm.pykvm_command(elf, script) + [
                "--disk", str(image), "--virtio-notify", args.virtio_notify], **vmms}
        results = {name: measure(argv, args.runs) for name, argv in vmms.items()}

    print(f"tiny dbench, {args.mib} x 1 MiB sequential and {args.reads} x 4 KiB random reads, "
          f"{args.runs} runs each")
    for kind, unit in (("seq", "MiB/s"), ("rand", "reads/s")):
        print(f"{kind + ' (' + unit + ')':<20} {'min':>9} {'median':>9} {'max':>9}")
        for name, by_kind in results.items():
            values = by_kind[kind]
            print(f"  {name:<18} {min(values):9.1f} {statistics.median(values):9.1f} "
                  f"{max(values):9.1f}")
        if "pykvm boot" in results:
            ratio = (statistics.median(results["pykvm boot"][kind])
                     / statistics.median(results["qemu microvm"][kind]))
            print(f"  median ratio pykvm / qemu: {ratio:.2f}x (goal >= {GOALS[kind]}x)")


if __name__ == "__main__":
    main()
