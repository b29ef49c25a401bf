#!/usr/bin/env python3
"""Benchmark: a VM restored from a snapshot vs the same guest booted cold.

For each guest (tiny, then Linux where it boots: hardware-style KVM, or the L1 lane):

1. Time to a guest that answers: `pykvm restore DIR` vs `pykvm boot` of the same kernel and
   command line, timed from spawning pykvm until the guest's shell has printed "ready" for
   `echo ready` (whole processes; min/median/max, ratio of medians; goal: restore <= 0.2x
   cold boot).  The restored shell is typed at as soon as pykvm is spawned (its keys wait in
   the UART); tiny's cold boot too (tiny's UART keeps them); Linux's cold boot once its
   prompt shows (its serial driver starts with an empty FIFO).  Not "until tiny's first
   count": the counter sleeps 200 ms between lines, and a restored one may be anywhere in
   that sleep.
2. Host memory of N VMs side by side: N clones restored from one snapshot vs N cold
   boots, all running at once, each having answered `echo ready`.  PSS (proportional set
   size, /proc/PID/smaps_rollup: a page shared by k processes counts 1/k in each) of the
   whole processes, and of the guest-RAM mapping alone, with the share of resident guest
   pages that are shared (goal: clones share >= 80% of their guest pages), and which guest
   pages a clone has its own copy of (/proc/PID/pagemap): the pages its guest wrote.

pykvm's bytecode is compiled first (compileall, as a first run or an install does): where
PYTHONDONTWRITEBYTECODE is set, every pykvm process would otherwise compile its modules
again, and both sides would mostly measure the compiler.

    .venv/bin/python tests/bench/bench_snapshot.py [--runs 5] [--clones 20] [--linux-clones 4]
                                                   [--guest tiny,linux]

Linux on a PVM or KVM-less machine, in the L1 lane (Linux only there, unless --guest says
otherwise: under TCG a tiny boot and a restore are both seconds of Python start-up):

    python tests/hw/lane.py --bench snapshot
"""
from __future__ import annotations

import argparse
import compileall
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "kvm"), str(HERE)]
from clitools import ROOT  # noqa: E402
from livevm import LiveVm  # noqa: E402  (tests/kvm/livevm.py: a pykvm process driven by its console)
import tinyvm  # noqa: E402
from hostmem import KIB, guest_mapping, pss_kib, written_guest_pages  # noqa: E402  (tests/hostmem.py: /proc/PID/smaps)
from tiers import nested_under_tcg  # noqa: E402

TINY_CMDLINE = "run=run counter &"
LINUX_MEM_MIB = 256
READY = r"^ready\r?$"
LISTED_PAGES = 40            # a clone's own pages are listed by number up to this many


@dataclass
class Guest:
    """A guest as the benchmark boots it: `pykvm boot`'s arguments, and how long to wait."""

    name: str
    mem_mib: int
    boot: list[str]                 # pykvm boot's arguments, without --snapshot-dir
    prompt: str | None              # a cold boot is typed at once this shows (None: at spawn)
    timeout: float                  # seconds for one boot or restore to answer


def tiny_guest() -> Guest:
    tinyvm.build_tiny()
    return Guest("tiny", tinyvm.MEM_MIB, ["boot", "--kernel", str(tinyvm.TINY_ELF), "--mem",
                                          f"{tinyvm.MEM_MIB}M", "--cmdline", TINY_CMDLINE], None, 300)


def linux_guest() -> Guest | str:
    """The Linux guest of bench_linux_boot.py (ttyS0), or why it cannot be measured here."""
    from bench_linux_boot import CMDLINES, PROMPT, linux_files

    files = linux_files()
    if isinstance(files, str):
        return files
    kernel, initrd = files
    return Guest("linux", LINUX_MEM_MIB, ["boot", "--kernel", str(kernel), "--initrd", str(initrd),
                                          "--mem", f"{LINUX_MEM_MIB}M", "--cmdline", CMDLINES["ttyS0"]],
                 PROMPT, 900)


def answer(vm: LiveVm, guest: Guest, restored: bool) -> None:
    """Type `echo ready` (after the prompt, for a cold boot with one) and wait for "ready"."""
    if guest.prompt and not restored:
        vm.wait_for(guest.prompt, timeout=guest.timeout)
    start = len(vm.text)
    vm.send(b"echo ready\r")
    vm.wait_for(READY, start, timeout=guest.timeout)


def take_snapshot(guest: Guest, directory: Path) -> None:
    with LiveVm(*guest.boot, "--snapshot-dir", str(directory)) as vm:
        answer(vm, guest, restored=False)
        vm.snapshot_by_signal(timeout=guest.timeout)


def time_to_answer(args: list[str], guest: Guest, restored: bool) -> float:
    """Seconds from spawning pykvm to its guest's shell answering `echo ready`."""
    with LiveVm(*args) as vm:
        answer(vm, guest, restored)
        return time.monotonic() - vm.started


def measure(args: list[str], guest: Guest, restored: bool, runs: int) -> list[float]:
    time_to_answer(args, guest, restored)           # warm-up: the page cache
    return [time_to_answer(args, guest, restored) for _ in range(runs)]


def memory_of(args: list[str], guest: Guest, restored: bool, count: int) -> dict[str, float]:
    """Start `count` VMs at once, wait until each answers, then read their memory."""
    vms = [LiveVm(*args) for _ in range(count)]
    try:
        for vm in vms:
            answer(vm, guest, restored)
        pids = [vm.proc.pid for vm in vms]
        maps = [guest_mapping(pid, guest.mem_mib * KIB) for pid in pids]
        figures = {"pss": sum(pss_kib(pid) for pid in pids), "guest_found": all(maps)}
        if figures["guest_found"]:
            rss = sum(m.get("Rss", 0) for m in maps)
            private = sum(m.get("Private_Clean", 0) + m.get("Private_Dirty", 0) for m in maps)
            figures.update(guest_pss=sum(m.get("Pss", 0) for m in maps), guest_rss=rss,
                           guest_shared=1 - private / rss if rss else 0.0)
        if restored:                # the file's pages and the clone's own copies tell apart
            figures["written"] = written_guest_pages(pids[0], guest.mem_mib * KIB)
        return figures
    finally:
        for vm in vms:
            vm.quit()


def restore_checks(directory: Path) -> tuple[float, float]:
    """Seconds a restore spends checking the snapshot before any VM exists, in this process
    (medians of 3): the header, every part and the host CPU (check_restore); memory.bin's size
    and page hash (open_memory, which map_memory calls)."""
    import os

    from pykvm.vm.kvm import Kvm
    from pykvm.vm.snapshot import Snapshot, check_restore

    parts, memory = [], []
    for _ in range(3):
        started = time.monotonic()
        snapshot = Snapshot.open(directory)
        with Kvm() as kvm:
            check_restore(snapshot, kvm)
        checked = time.monotonic()
        os.close(snapshot.open_memory())
        parts.append(checked - started)
        memory.append(time.monotonic() - checked)
    return statistics.median(parts), statistics.median(memory)


def report(guest: Guest, runs: int, clones: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = Path(tmp) / "snap"
        take_snapshot(guest, snapshot)
        sides = {"pykvm restore": (["restore", str(snapshot)], True), "pykvm boot": (guest.boot, False)}

        print(f"\n{guest.name}, {' '.join(guest.boot[1:])}\nspawn to the shell answering, {runs} runs, seconds")
        print(f"{'':<16} {'min':>7} {'median':>7} {'max':>7}")
        medians = {}
        for name, (argv, restored) in sides.items():
            times = measure(argv, guest, restored, runs)
            medians[name] = statistics.median(times)
            print(f"{name:<16} {min(times):7.3f} {medians[name]:7.3f} {max(times):7.3f}", flush=True)
        print(f"median ratio restore / cold boot: {medians['pykvm restore'] / medians['pykvm boot']:.2f}x "
              "(goal <= 0.2x)")
        pages = json.loads((snapshot / "snapshot.json").read_text())["memory"]["pages_written"]
        parts, memory = restore_checks(snapshot)
        print(f"of a restore, its checks (in this process, medians of 3): the parts and the host CPU "
              f"{parts:.3f} s, memory.bin's hash ({pages} non-zero pages, {pages * 4 / 1024:.1f} MiB) {memory:.3f} s")

        print(f"\n{clones} VMs at once, {guest.mem_mib} MiB guests: host memory, MiB")
        print(f"{'':<16} {'PSS':>8} {'guest PSS':>10} {'guest RSS':>10} {'guest shared':>13}")
        written = []
        for name, (argv, restored) in sides.items():
            m = memory_of(argv, guest, restored, clones)
            if not m["guest_found"]:
                # An anonymous mapping (a cold boot's RAM) can merge with a neighbouring one of the
                # same flags, and then no mapping has the guest's size: say so, print no guesses.
                print(f"{name:<16} {m['pss'] / KIB:8.1f}  (guest RAM merged with another mapping: "
                      "not told apart)", flush=True)
                continue
            print(f"{name:<16} {m['pss'] / KIB:8.1f} {m['guest_pss'] / KIB:10.2f} {m['guest_rss'] / KIB:10.2f} "
                  f"{100 * m['guest_shared']:12.0f}%", flush=True)
            written = m.get("written", written)
        print("(goal: clones share >= 80% of their resident guest pages)")
        listed = " ".join(hex(page) for page in written[:LISTED_PAGES])
        more = f" ... ({len(written)} in all)" if len(written) > LISTED_PAGES else ""
        print(f"one clone's own copies (pages it wrote since the restore), by guest page number: {listed}{more}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clones", type=int, default=20, help="tiny VMs at once")
    parser.add_argument("--linux-clones", type=int, default=4,
                        help="Linux VMs at once (each cold boot holds what it touched of its 256 MiB)")
    parser.add_argument("--guest", help="tiny, linux or both (comma); default both, and only linux "
                        "in the L1 lane, where tiny's milliseconds drown in TCG's Python start-up")
    args = parser.parse_args()
    default = "linux" if nested_under_tcg() else "tiny,linux"
    guests = [g for g in (args.guest or default).split(",") if g]
    if unknown := set(guests) - {"tiny", "linux"}:
        raise SystemExit(f"--guest {','.join(sorted(unknown))}: choose from tiny, linux")
    compileall.compile_dir(ROOT / "pykvm", quiet=1)
    if "tiny" in guests:
        report(tiny_guest(), args.runs, args.clones)
    if "linux" in guests:
        linux = linux_guest()
        if isinstance(linux, str):
            print(f"\nlinux: not measured: {linux}; run it in the L1 lane: "
                  "python tests/hw/lane.py --bench snapshot")
        else:
            report(linux, args.runs, args.linux_clones)


if __name__ == "__main__":
    main()
