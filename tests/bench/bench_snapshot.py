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
   boots, all running at once, each having answered `echo ready`.  They are started
   `--batch` at a time, each batch once the one before has answered (twenty Linux boots at
   once under TCG would take most of an hour, and a Linux cold boot in the L1 lane is where
   L1 has died); the memory is read once all are up.  A batch is started only while the
   host's MemAvailable holds it (an estimate from the VMs already up): the table says how
   many ran.  PSS (proportional set size, /proc/PID/smaps_rollup: a page shared by k
   processes counts 1/k in each) of the whole processes, and of guest RAM alone (the
   mappings named /dev/zero for a cold boot, the snapshot's memory.bin for a clone:
   pykvm.vm.memory), with the share of each VM's resident guest pages that are shared
   (min/median/max over the VMs; goal: clones share >= 80% of their guest pages), and which
   guest pages a clone has its own copy of (/proc/PID/pagemap): the pages its guest wrote.

pykvm's bytecode is compiled first (compileall, as a first run or an install does): where
PYTHONDONTWRITEBYTECODE is set, every pykvm process would otherwise compile its modules
again, and both sides would mostly measure the compiler.

    .venv/bin/python tests/bench/bench_snapshot.py [--runs 5] [--clones 20] [--linux-clones 20]
                                                   [--batch N] [--guest tiny,linux]

Linux on a PVM or KVM-less machine, in the L1 lane (Linux only there, unless --guest says
otherwise: under TCG a tiny boot and a restore are both seconds of Python start-up), in an
L1 with room for twenty Linux guests:

    python tests/hw/lane.py --bench snapshot --memory 6144
"""
from __future__ import annotations

import argparse
import compileall
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "kvm"), str(HERE)]
from clitools import ROOT  # noqa: E402
from livevm import LiveVm  # noqa: E402  (tests/kvm/livevm.py: a pykvm process driven by its console)
import tinyvm  # noqa: E402
from hostmem import KIB, guest_ram, pss_kib, rollup, written_guest_pages  # noqa: E402  (tests/hostmem.py: /proc/PID/smaps)
from pykvm.vm.memory import ZERO_FILE  # noqa: E402  (a booted guest's RAM is mapped from it, and named by it)
from tiers import nested_under_tcg  # noqa: E402

TINY_CMDLINE = "run=run counter &"
LINUX_MEM_MIB = 256
READY = r"^ready\r?$"
LISTED_PAGES = 40            # a clone's own pages are listed by number up to this many
HOST_RESERVE_KIB = 256 * KIB  # MemAvailable left alone when deciding whether a batch fits
PROCESS_KIB = 64 * KIB       # a pykvm process beside its guest RAM, until one is measured


@dataclass
class Guest:
    """A guest as the benchmark boots it: `pykvm boot`'s arguments, and how long to wait."""

    name: str
    mem_mib: int
    boot: list[str]                 # pykvm boot's arguments, without --snapshot-dir
    prompt: str | None              # a cold boot is typed at once this shows (None: at spawn)
    timeout: float                  # seconds for one boot or restore to answer
    batch: int                      # VMs started at once for the memory figures


def tiny_guest() -> Guest:
    tinyvm.build_tiny()
    return Guest("tiny", tinyvm.MEM_MIB, ["boot", "--kernel", str(tinyvm.TINY_ELF), "--mem",
                                          f"{tinyvm.MEM_MIB}M", "--cmdline", TINY_CMDLINE], None, 300, 20)


def linux_guest() -> Guest | str:
    """The Linux guest of bench_linux_boot.py (ttyS0), or why it cannot be measured here."""
    from bench_linux_boot import CMDLINES, PROMPT, linux_files

    files = linux_files()
    if isinstance(files, str):
        return files
    kernel, initrd = files
    return Guest("linux", LINUX_MEM_MIB, ["boot", "--kernel", str(kernel), "--initrd", str(initrd),
                                          "--mem", f"{LINUX_MEM_MIB}M", "--cmdline", CMDLINES["ttyS0"]],
                 PROMPT, 900, 4)


def answer(vm: LiveVm, guest: Guest, restored: bool) -> None:
    """Type `echo ready` (after the prompt, for a cold boot with one) and wait for "ready"."""
    if guest.prompt and not restored:
        vm.wait_for(guest.prompt, timeout=guest.timeout)
    start = len(vm.text)
    vm.send(b"echo ready\r")
    vm.wait_for(READY, start, timeout=guest.timeout)


# A VM that stops before it answers is replaced by a fresh one, this many times at most for
# one figure: nested SVM under TCG (the hardware lane) has reset L2 guests for no reason of
# theirs (a triple fault with every register at its reset value), mostly with several up.
# Each replacement is counted and printed with the figures.
RETRIES = 3
stopped_early: list[str] = []


def answered(vm: LiveVm, args: list[str], guest: Guest, restored: bool) -> LiveVm:
    """`vm` once it has answered (answer), or the fresh VM that did in its place."""
    for attempt in range(RETRIES + 1):
        try:
            answer(vm, guest, restored)
            return vm
        except AssertionError as e:
            if vm.proc.poll() is None or attempt == RETRIES:
                vm.quit()
                raise
            said = vm.err.decode(errors="replace").splitlines()
            reason = next((line for line in said if line.startswith("pykvm: error")), str(e).splitlines()[0])
            stopped_early.append(reason)
            vm.quit()
            vm = LiveVm(*args)
    raise AssertionError("unreachable")


def take_snapshot(guest: Guest, directory: Path) -> None:
    with LiveVm(*guest.boot, "--snapshot-dir", str(directory)) as vm:
        answer(vm, guest, restored=False)
        vm.snapshot_by_signal(timeout=guest.timeout)


def time_to_answer(args: list[str], guest: Guest, restored: bool) -> float:
    """Seconds from spawning pykvm to its guest's shell answering `echo ready`."""
    vm = answered(LiveVm(*args), args, guest, restored)
    with vm:
        return time.monotonic() - vm.started


def measure(args: list[str], guest: Guest, restored: bool, runs: int) -> list[float]:
    time_to_answer(args, guest, restored)           # warm-up: the page cache
    return [time_to_answer(args, guest, restored) for _ in range(runs)]


def mem_available_kib() -> int:
    """/proc/meminfo's MemAvailable: what can still be given out without swapping."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    raise AssertionError("no MemAvailable in /proc/meminfo")


def start_answering(args: list[str], guest: Guest, restored: bool, count: int) -> tuple[list[LiveVm], str]:
    """Up to `count` VMs, `guest.batch` at a time, each batch started once the one before
    has answered; a batch only while MemAvailable holds it.  The VMs, and why fewer ("")."""
    vms: list[LiveVm] = []
    try:
        while len(vms) < count:
            batch = min(guest.batch, count - len(vms))
            each = max((rollup(vm.proc.pid)["Rss"] for vm in vms),
                       default=guest.mem_mib * KIB + PROCESS_KIB)
            available = mem_available_kib() - HOST_RESERVE_KIB
            if available < batch * each:
                return vms, (f"{len(vms)} of {count}: {available // KIB} MiB available would not hold "
                             f"{batch} more at {each // KIB} MiB each")
            first = len(vms)
            vms += [LiveVm(*args) for _ in range(batch)]
            for i in range(first, len(vms)):
                vms[i] = answered(vms[i], args, guest, restored)
    except BaseException:
        for vm in vms:
            vm.quit()
        raise
    return vms, ""


def memory_of(args: list[str], guest: Guest, restored: bool, count: int, ram_name: str) -> dict:
    """Start `count` VMs (start_answering), then read their memory; guest RAM is the mappings
    named `ram_name`."""
    vms, fewer = start_answering(args, guest, restored, count)
    try:
        pids = [vm.proc.pid for vm in vms]
        rams = [guest_ram(pid, ram_name) for pid in pids]
        figures = {"vms": len(vms), "fewer": fewer, "pss": sum(pss_kib(pid) for pid in pids),
                   "guest_found": bool(rams) and all(rams)}
        if figures["guest_found"]:
            rss = [ram.get("Rss", 0) for ram in rams]
            private = [ram.get("Private_Clean", 0) + ram.get("Private_Dirty", 0) for ram in rams]
            figures.update(guest_pss=sum(ram.get("Pss", 0) for ram in rams), guest_rss=sum(rss),
                           shared=[1 - p / r if r else 0.0 for p, r in zip(private, rss)])
        if restored:                # the file's pages and the clone's own copies tell apart
            figures["written"] = [written_guest_pages(pid, ram_name) for pid in pids]
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

        print(f"\n{clones} VMs at once, {guest.mem_mib} MiB guests, started {guest.batch} at a time: "
              "host memory, MiB; guest pages shared, per VM")
        print(f"{'':<16} {'VMs':>4} {'PSS':>8} {'guest PSS':>10} {'guest RSS':>10} "
              f"{'shared: min':>12} {'median':>7} {'max':>5}")
        ram_names = {"pykvm restore": str((snapshot / "memory.bin").resolve()), "pykvm boot": ZERO_FILE}
        for name, (argv, restored) in sides.items():
            m = memory_of(argv, guest, restored, clones, ram_names[name])
            if not m["guest_found"]:
                print(f"{name:<16} {m['vms']:>4} {m['pss'] / KIB:8.1f}  (no mapping named {ram_names[name]}: "
                      "guest RAM not found)", flush=True)
            else:
                shared = m["shared"]
                print(f"{name:<16} {m['vms']:>4} {m['pss'] / KIB:8.1f} {m['guest_pss'] / KIB:10.2f} "
                      f"{m['guest_rss'] / KIB:10.2f} {100 * min(shared):11.0f}% "
                      f"{100 * statistics.median(shared):6.0f}% {100 * max(shared):4.0f}%", flush=True)
            if m["fewer"]:
                print(f"{'':<16} ({m['fewer']})")
            if m.get("written"):        # at once: twenty cold boots after them may not all come up
                print_written(m["written"])
        print("(goal: clones share >= 80% of their resident guest pages)")
        if stopped_early:
            print(f"{len(stopped_early)} VM(s) stopped before answering and were replaced by a fresh one: "
                  + "; ".join(sorted(set(stopped_early))))
            stopped_early.clear()


def print_written(written: list[list[int]]) -> None:
    """How many pages each clone has its own copy of, and the first clone's, by number."""
    counts = [len(pages) for pages in written]
    print(f"{'':<16} pages a clone has its own copy of (it wrote them since the restore): min {min(counts)}, "
          f"median {statistics.median(counts):g}, max {max(counts)}")
    listed = " ".join(hex(page) for page in written[0][:LISTED_PAGES])
    more = f" ... ({len(written[0])} in all)" if len(written[0]) > LISTED_PAGES else ""
    print(f"{'':<16} one clone's own copies, by guest page number: {listed}{more}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clones", type=int, default=20, help="tiny VMs at once")
    parser.add_argument("--linux-clones", type=int, default=20,
                        help="Linux VMs at once (each cold boot holds what it touched of its 256 MiB; "
                             "fewer where the host's memory would not hold them)")
    parser.add_argument("--batch", type=int, help="VMs started at a time for the memory figures "
                        "(default: tiny 20, Linux 4)")
    parser.add_argument("--guest", help="tiny, linux or both (comma); default both, and only linux "
                        "in the L1 lane, where tiny's milliseconds drown in TCG's Python start-up")
    args = parser.parse_args()
    default = "linux" if nested_under_tcg() else "tiny,linux"
    guests = [g for g in (args.guest or default).split(",") if g]
    if unknown := set(guests) - {"tiny", "linux"}:
        raise SystemExit(f"--guest {','.join(sorted(unknown))}: choose from tiny, linux")
    compileall.compile_dir(ROOT / "pykvm", quiet=1)
    if args.batch is not None and args.batch < 1:
        raise SystemExit("--batch: at least 1")
    if "tiny" in guests:
        tiny = tiny_guest()
        report(replace(tiny, batch=args.batch or tiny.batch), args.runs, args.clones)
    if "linux" in guests:
        linux = linux_guest()
        if isinstance(linux, str):
            print(f"\nlinux: not measured: {linux}; run it in the L1 lane: "
                  "python tests/hw/lane.py --bench snapshot --memory 6144")
        else:
            report(replace(linux, batch=args.batch or linux.batch), args.runs, args.linux_clones)


if __name__ == "__main__":
    main()
