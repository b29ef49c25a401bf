#!/usr/bin/env python3
"""Benchmark: a VM restored from a snapshot vs the same guest booted cold.

1. Time to a guest that answers: `pykvm restore DIR` vs `pykvm boot` of the same tiny
   kernel and command line, each sent `echo ready` on its console at spawn, timed until the
   guest's shell prints "ready" (whole processes; min/median/max, ratio of medians; goal:
   restore <= 0.2x cold boot).  Not "until the first count": the counter sleeps 200 ms
   between lines, and a restored one may be anywhere in that sleep.
2. Host memory of N VMs side by side: N clones restored from one snapshot vs N cold
   boots, all running at once.  PSS (proportional set size, /proc/PID/smaps_rollup:
   a page shared by k processes counts 1/k in each) of the whole processes, and of
   the guest-RAM mapping alone, with the share of resident guest pages that are
   shared (goal: clones share >= 80% of their guest pages), and which guest pages a
   clone has its own copy of (/proc/PID/pagemap): the pages its guest wrote.

    .venv/bin/python tests/bench/bench_snapshot.py [--runs 5] [--clones 20]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "kvm")]
from livevm import LiveVm  # noqa: E402  (tests/kvm/livevm.py: a pykvm process driven by its console)
import tinyvm  # noqa: E402
from hostmem import KIB, guest_mapping, pss_kib, written_guest_pages  # noqa: E402  (tests/hostmem.py: /proc/PID/smaps)

CMDLINE = "run=run counter &"
COUNT = r"(?:^|\$ )count \d+$"


def boot_args(snapshot_dir: Path | None = None) -> list[str]:
    args = ["boot", "--kernel", str(tinyvm.TINY_ELF), "--mem", f"{tinyvm.MEM_MIB}M", "--cmdline", CMDLINE]
    return args + (["--snapshot-dir", str(snapshot_dir)] if snapshot_dir else [])


def take_snapshot(directory: Path) -> None:
    with LiveVm(*boot_args(directory)) as vm:
        vm.wait_for(COUNT)
        vm.snapshot_by_signal()


def time_to_answer(args: list[str]) -> float:
    """Seconds from spawning pykvm to its guest's shell answering `echo ready`."""
    with LiveVm(*args) as vm:
        vm.send(b"echo ready\r")
        vm.wait_for(r"^ready$")
        return time.monotonic() - vm.started


def measure(args: list[str], runs: int) -> list[float]:
    time_to_answer(args)                        # warm-up: page cache, bytecode
    return [time_to_answer(args) for _ in range(runs)]


def memory_of(args: list[str], count: int) -> dict[str, float]:
    """Start `count` VMs at once, wait until each runs the program, then read their memory."""
    vms = [LiveVm(*args) for _ in range(count)]
    try:
        for vm in vms:
            vm.wait_for(COUNT, timeout=180)
        pids = [vm.proc.pid for vm in vms]
        maps = [guest_mapping(pid, tinyvm.MEM_MIB * KIB) for pid in pids]
        rss = sum(m.get("Rss", 0) for m in maps)
        private = sum(m.get("Private_Clean", 0) + m.get("Private_Dirty", 0) for m in maps)
        return {"pss": sum(pss_kib(pid) for pid in pids), "guest_pss": sum(m.get("Pss", 0) for m in maps),
                "guest_rss": rss, "guest_shared": 1 - private / rss if rss else 0.0,
                "written": written_guest_pages(pids[0], tinyvm.MEM_MIB * KIB)}
    finally:
        for vm in vms:
            vm.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clones", type=int, default=20)
    args = parser.parse_args()
    tinyvm.build_tiny()
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = Path(tmp) / "snap"
        take_snapshot(snapshot)
        cold, restored = boot_args(), ["restore", str(snapshot)]

        print(f"tiny, cmdline {CMDLINE!r}: spawn to the shell answering, {args.runs} runs, seconds")
        print(f"{'':<16} {'min':>7} {'median':>7} {'max':>7}")
        medians = {}
        for name, argv in (("pykvm restore", restored), ("pykvm boot", cold)):
            times = measure(argv, args.runs)
            medians[name] = statistics.median(times)
            print(f"{name:<16} {min(times):7.3f} {medians[name]:7.3f} {max(times):7.3f}")
        print(f"median ratio restore / cold boot: {medians['pykvm restore'] / medians['pykvm boot']:.2f}x "
              "(goal <= 0.2x)")

        print(f"\n{args.clones} VMs at once, {tinyvm.MEM_MIB} MiB guests: host memory, MiB")
        print(f"{'':<16} {'PSS':>8} {'guest PSS':>10} {'guest RSS':>10} {'guest shared':>13}")
        written = []
        for name, argv in (("restored clones", restored), ("cold boots", cold)):
            m = memory_of(argv, args.clones)
            print(f"{name:<16} {m['pss'] / KIB:8.1f} {m['guest_pss'] / KIB:10.2f} {m['guest_rss'] / KIB:10.2f} "
                  f"{100 * m['guest_shared']:12.0f}%")
            written = written or m["written"]
        print("(goal: clones share >= 80% of their resident guest pages)")
        print(f"one clone's own copies (pages it wrote since the restore), by guest page number: "
              f"{' '.join(hex(page) for page in written)}")


if __name__ == "__main__":
    main()
