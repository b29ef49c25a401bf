#!/usr/bin/env python3
"""Benchmark: host memory a VMM costs beyond its guest's RAM, `pykvm boot` vs QEMU -M microvm.

Each run boots guests/tiny (cmdline "run=info") under each VMM with the same
memory size, waits until the guest idles at its shell prompt, and reads the
VMM's /proc/PID/smaps: the process's RSS, the RSS of its guest-RAM mapping
(the guest memory touched so far: pykvm's is the mapping named /dev/zero,
QEMU's the anonymous mapping of exactly the guest's size), and the difference, the VMM's own overhead; the same for PSS (shared
library pages split among the processes that map them).  The VMM is the
process the user starts, so pykvm's figures include the Python interpreter;
any child processes would be counted too (the table says how many processes
and threads each VMM had).  Then "poweroff" on the console and the VMM is
reaped.  Prints min/median/max per VMM and the ratio pykvm / QEMU of the
overhead medians (goal <= 0.5x), and where pykvm's overhead goes: the
interpreter, pykvm's own modules (and what click would add).  Where stock Linux boots (hardware KVM), the
same for the Linux guest of bench_linux_boot.py, else says why not.

    .venv/bin/python tests/bench/bench_vmm_memory.py [--runs 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "kvm")]
import tinyvm  # noqa: E402  (tests/kvm/tinyvm.py: the VMM command lines)
from hostmem import KIB, guest_ram, mapping_of_size, process_tree, rollup, threads  # noqa: E402  (tests/hostmem.py)
from vmmfleet import Vmm, kill_all, tiny_idle, wait_all  # noqa: E402  (tests/bench/vmmfleet.py)
from pykvm.vm.memory import ZERO_FILE  # noqa: E402  (what pykvm maps guest RAM from, and names it by)

TINY_CMDLINE = "run=info"
IDLE_S = 120                # spawn to the guest's idle prompt
EXIT_S = 60                 # "poweroff" to the VMM's exit
LINUX_MEM = "256M"
CURSOR_QUERY = b"\x1b[6n"      # ECMA-48 DSR 6, "report the cursor position"
FIGURES = ("RSS", "guest RAM RSS", "overhead RSS", "PSS", "overhead PSS")


@dataclass
class Guest:
    """What a run boots and how it ends: per VMM its command line and power-off status."""

    name: str
    mem_kib: int
    argvs: dict[str, list[str]]
    statuses: dict[str, int]
    idle: Callable[[Vmm], bool]
    poweroff: bytes


def guest_ram_of(pid: int, mem_kib: int, vmm: str) -> dict[str, int]:
    """The smaps fields (kB) of a VMM's guest RAM: pykvm's by its name, QEMU's by its size."""
    if vmm.startswith("pykvm"):
        return guest_ram(pid, ZERO_FILE)
    ram = mapping_of_size(pid, mem_kib)
    return max(ram, key=lambda m: m.fields.get("Rss", 0)).fields if ram else {}   # the largest


def footprint(pid: int, mem_kib: int, vmm: str) -> dict[str, float]:
    """The memory figures (kB) of a VMM process and its descendants, and its thread count."""
    tree = process_tree(pid)
    rollups = [rollup(p) for p in tree]
    guest = guest_ram_of(pid, mem_kib, vmm)
    if not guest:
        raise SystemExit(f"{vmm} (pid {pid}): no mapping that is the guest's RAM of {mem_kib} kB")
    rss = sum(r["Rss"] for r in rollups)
    pss = sum(r["Pss"] for r in rollups)
    return {"RSS": rss, "guest RAM RSS": guest["Rss"], "overhead RSS": rss - guest["Rss"],
            "PSS": pss, "overhead PSS": pss - guest["Pss"],
            "processes": len(tree), "threads": sum(threads(p) for p in tree)}


def measure_once(guest: Guest, vmm: str) -> dict[str, float]:
    """Boot, wait for the idle prompt, read the VMM's memory, power off and reap it."""
    vm = Vmm(guest.argvs[vmm])
    try:
        if wait_all([vm], guest.idle, time.monotonic() + IDLE_S):
            raise SystemExit(f"{vmm}: the guest did not reach its idle prompt "
                             f"(exit {vm.proc.poll()}): {vm.tail()}")
        figures = footprint(vm.pid, guest.mem_kib, vmm)
        vm.send(guest.poweroff)
        wait_all([vm], lambda v: v.ended is not None, time.monotonic() + EXIT_S)
        if vm.proc.poll() != guest.statuses[vmm]:
            raise SystemExit(f"{vmm}: after poweroff, exit {vm.proc.poll()} "
                             f"(expected {guest.statuses[vmm]}): {vm.tail()}")
        return figures
    finally:
        kill_all([vm])


def report(guest: Guest, runs: int) -> None:
    results: dict[str, list[dict[str, float]]] = {vmm: [] for vmm in guest.argvs}
    measure_once(guest, next(iter(guest.argvs)))          # warm-up: page cache, bytecode
    for _ in range(runs):            # interleaved, so both sides see the same machine noise
        for vmm in guest.argvs:
            results[vmm].append(measure_once(guest, vmm))
    print(f"\n{guest.name} idle at its prompt, {guest.mem_kib // KIB} MiB guest, {runs} runs each: "
          "host memory of the VMM, MiB")
    print(f"{'vmm':<18} {'figure':<15} {'min':>7} {'median':>7} {'max':>7}")
    medians: dict[str, dict[str, float]] = {}
    for vmm, figures in results.items():
        medians[vmm] = {}
        for what in FIGURES:
            values = [f[what] / KIB for f in figures]
            medians[vmm][what] = statistics.median(values)
            print(f"{vmm:<18} {what:<15} {min(values):7.2f} {medians[vmm][what]:7.2f} {max(values):7.2f}")
        last = figures[-1]
        print(f"{vmm:<18} {last['processes']} process(es), {last['threads']} threads")
    pykvm, qemu = list(guest.argvs)
    for what in ("overhead RSS", "overhead PSS"):
        ratio = medians[pykvm][what] / medians[qemu][what]
        print(f"median ratio {pykvm} / {qemu}, {what}: {ratio:.2f}x (goal <= 0.5x)")


def tiny_guest() -> Guest:
    elf = tinyvm.build_tiny()
    return Guest("tiny", tinyvm.MEM_MIB * KIB,
                 {"pykvm boot": tinyvm.pykvm_command(elf, TINY_CMDLINE),
                  "qemu -M microvm": tinyvm.microvm_command(elf, TINY_CMDLINE, [])},
                 {"pykvm boot": 0, "qemu -M microvm": tinyvm.MICROVM_POWEROFF}, tiny_idle, b"poweroff\n")


def linux_guest() -> Guest | str:
    """The Linux guest of bench_linux_boot.py, or why it cannot be measured here."""
    from bench_linux_boot import MARKER, PROMPT, linux_files, pykvm_cmd, qemu_cmd

    files = linux_files()
    if isinstance(files, str):
        return files
    kernel, initrd = files

    def idle(vm: Vmm) -> bool:
        marker = vm.console.find(MARKER.encode())
        # busybox ash follows its prompt with ESC [6n (a terminal's cursor-position query):
        # on a pipe nobody answers, and the prompt is the last thing before it.
        tail = bytes(vm.console).rstrip().removesuffix(CURSOR_QUERY).rstrip()
        return marker >= 0 and tail.endswith(PROMPT.rstrip().encode())

    mib = int(LINUX_MEM.rstrip("M"))
    return Guest("linux", mib * KIB,
                 {"pykvm boot": pykvm_cmd(kernel, initrd, LINUX_MEM, "ttyS0"),
                  "qemu -M microvm": qemu_cmd(kernel, initrd, LINUX_MEM, "ttyS0")},
                 {"pykvm boot": 0, "qemu -M microvm": 0}, idle, b"poweroff -f\n")


# Where pykvm's own memory goes: a fresh interpreter imports a little more at each stage and
# reports its resident size (VmRSS); the differences are the price of each stage.  `pykvm boot`
# reads its command line without click (commands/quickparse.py) unless it asks for click's
# help or has a mistake to report: the last line is what click would add.
IMPORT_STAGES = [
    ("the Python interpreter", ""),
    ("+ pykvm boot's command", "import pykvm.commands.booting"),
    ("+ the VMM (machine, devices)", "import pykvm.commands.booting, pykvm.vm.machine"),
    ("(+ click, not imported)", "import pykvm.commands.booting, pykvm.vm.machine, click, pykvm.cli"),
]
RSS_OF_SELF = ("import re; print(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read())"
               ".group(1))")


def import_breakdown() -> None:
    """The resident size after each import stage, each in a fresh interpreter (median of 3)."""
    import subprocess

    print("\nwhere pykvm's overhead goes (a fresh interpreter per stage, VmRSS, median of 3):")
    previous = 0.0
    for name, imports in IMPORT_STAGES:
        code = f"{imports}\n{RSS_OF_SELF}" if imports else RSS_OF_SELF
        sizes = [int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout) / KIB for _ in range(3)]
        rss = statistics.median(sizes)
        print(f"  {name:<32} {rss:6.2f} MiB  ({rss - previous:+.2f})")
        previous = rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    for vmm in ("pykvm", "qemu"):
        if problem := tinyvm.vmm_problem(vmm):
            raise SystemExit(f"not measured: {problem}")
    report(tiny_guest(), args.runs)
    import_breakdown()
    linux = linux_guest()
    if isinstance(linux, str):
        print(f"\nlinux: not measured: {linux}")
    else:
        report(linux, args.runs)


if __name__ == "__main__":
    main()
