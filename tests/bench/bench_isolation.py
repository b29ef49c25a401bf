#!/usr/bin/env python3
"""One image, two isolations: `pykvm container run` vs `pykvm container run --isolation vm`.

Run as root where /dev/kvm is hardware-style KVM (stock Linux does not finish booting on
PVM, where this prints "not measured" and why):

    make linux-guest
    .venv/bin/python tests/bench/bench_isolation.py [--runs 5] [--memory 256M]

or, on a PVM or KVM-less machine, inside the L1 lane:

    python tests/hw/lane.py --bench isolation

The same image (the bundled busybox, built into a private store) and the same command
(`echo hello`), both through the CLI as a user types it, interleaved run by run, each run
measured from the outside by pykvm.comparison.measure (a small spawner forks pykvm):
  first output   launch -> "hello" complete on pykvm's stdout
  exit           launch -> wait4(2) returns pykvm's status
  peak RSS       ru_maxrss of pykvm and what it reaped: for the VM the guest RAM pykvm
                 mapped counts once the guest touches it
printed as min / median / max, and the ratio vm / container of the medians.  Then the VM
path's own first step, outside any run: the image's root disk built (flatten + mkfs.ext4)
against the same call when the disk is cached.  Benchmarks report; they never fail on a number.

Then where a VM run's time goes, with the cached disk.  The command reads, from the guest
kernel's own /proc, when PID 1 (container-init) started and when it started itself
(/proc/PID/stat field 22, starttime, in clock ticks since the guest's boot, proc(5)):
  before the guest's clock   launch -> the command's first line, less the guest's clock at
                             the command's start: Python, the image and disk lookup, building
                             the machine, loading kernel and initramfs, and the kernel's start
                             before its clock runs (the bzImage decompressing itself)
  kernel boot                guest clock when container-init starts
  init                       container-init start -> the command's start: modules, mounts,
                             the overlay root, the consoles, fork and exec
  command, power-off, exit   first line -> wait4(2) returns pykvm's status

Measured 2026-12-02 in the L1 lane (QEMU TCG: absolute times mean nothing there, ratios do),
5 runs each, min / median / max:
    container first output   2.51 / 2.75 / 2.99 s     vm first output   8.35 / 8.82 / 9.10 s
    container peak RSS      23.7 / 23.7 / 23.9 MiB    vm peak RSS      150.9 / 152.8 / 152.9 MiB
    ratio vm/container: first output 3.21x, exit 3.20x, peak RSS 6.45x
    root disk built 0.45 / 0.56 / 0.78 s, cached 0.000 / 0.001 / 0.008 s
Again on 2026-12-02, with three other lanes sharing the host's 2 cores (so every time is
about 3x the one above; the ratios hold), 5 runs each:
    container first output   7.23 / 9.61 / 11.02 s    vm first output  20.58 / 27.09 / 29.20 s
    container peak RSS      23.5 / 23.6 / 23.7 MiB    vm peak RSS      148.2 / 152.1 / 153.1 MiB
    ratio vm/container: first output 2.82x, exit 2.83x, peak RSS 6.46x
    root disk built 1.20 / 1.91 / 2.79 s, cached 0.001 / 0.001 / 0.015 s
  where a VM run's time went (the phases' medians need not add up to the total's):
    before the guest's clock 12.99 / 18.37 / 22.32 s   kernel boot  1.47 / 1.92 / 2.16 s
    init                      4.56 /  8.14 /  9.65 s   command, power-off, exit 0.36 / 0.57 / 1.81 s
The VM's RSS is mostly guest RAM the guest touched: the kernel, the initramfs unpacked into
its rootfs, the modules, the page cache of the root disk.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
from linux_guest import CACHE, pykvm_argv  # noqa: E402
from tiers import kvm_flavour  # noqa: E402

from pykvm.comparison.measure import run_once  # noqa: E402

MIB = 1 << 20
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")      # /proc's unit for starttime (USER_HZ, 100 on Linux)
STARTTIME_FIELD = 22                        # proc(5): /proc/PID/stat, counted from 1
# busybox sh: read's builtin reads /proc without a fork, so $$ is the command itself.
WHERE_THE_TIME_GOES = 'read -r init < /proc/1/stat; read -r me < /proc/$$/stat; echo "$init"; echo "$me"'


def can_measure() -> bool:
    for path in (CACHE / "vmlinuz", CACHE / "initramfs.cpio"):
        if not path.exists():
            raise SystemExit(f"{path} is missing: run `make linux-guest`")
    if os.geteuid() != 0:
        raise SystemExit("run as root: the container side needs namespaces and cgroups")
    if kvm_flavour() not in ("svm", "vmx"):
        print(f"not measured: /dev/kvm here is {kvm_flavour()}, where stock Linux cannot finish "
              "booting; run it in the L1 lane: python tests/hw/lane.py --bench isolation")
        return False
    return True


def build_image(env: dict) -> None:
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests" / "containers")], check=True)
    subprocess.run(pykvm_argv("container", "build", "-q", "-t", "busybox",
                              str(ROOT / "guests" / "containers" / "busybox")),
                   check=True, env=env, stdout=subprocess.DEVNULL)


def summary(name: str, values: list[float], unit: str) -> str:
    return (f"{name:<28} min {min(values):8.3f}  median {statistics.median(values):8.3f}  "
            f"max {max(values):8.3f}  {unit}")


def root_disk_times(store_dir: str, runs: int) -> tuple[list[float], list[float]]:
    """(built, cached) seconds of root_disk() for the busybox image, `runs` of each."""
    from pykvm.container.image.rootdisk import disk_path, root_disk
    from pykvm.container.image.store import ImageStore

    store = ImageStore(store_dir)
    image = store.get("busybox")
    built, cached = [], []
    for _ in range(runs):
        disk_path(store, image.id).unlink(missing_ok=True)
        start = time.monotonic()
        root_disk(store, image)
        built.append(time.monotonic() - start)
        start = time.monotonic()
        root_disk(store, image)
        cached.append(time.monotonic() - start)
    return built, cached


def starttime_s(stat_line: str) -> float:
    """Seconds after the kernel's boot at which the process started, from its /proc/PID/stat
    line (fields after the command name, which sits in parentheses and may hold spaces)."""
    after_name = stat_line.rsplit(")", 1)[1].split()
    return int(after_name[STARTTIME_FIELD - 3]) / CLOCK_TICKS     # fields 1 and 2 were before


def vm_breakdown(argv: list[str], env: dict, runs: int) -> dict[str, list[float]]:
    """The phases of `runs` VM runs of WHERE_THE_TIME_GOES (see the module's docstring)."""
    phases: dict[str, list[float]] = {"before the guest's clock": [], "kernel boot": [], "init": [],
                                      "command, power-off, exit": []}
    for _ in range(runs):
        sample = run_once([*argv, "sh", "-c", WHERE_THE_TIME_GOES], env=env, timeout=600)
        init_line, command_line = [line for line in sample.lines if line][:2]
        init_start, command_start = starttime_s(init_line), starttime_s(command_line)
        phases["before the guest's clock"].append(sample.first_line_s - command_start)
        phases["kernel boot"].append(init_start)
        phases["init"].append(command_start - init_start)
        phases["command, power-off, exit"].append(sample.exit_s - sample.first_line_s)
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--memory", default="256M", help="the VM's RAM")
    args = parser.parse_args()
    if not can_measure():
        return
    with tempfile.TemporaryDirectory(prefix="bench-isolation-") as top:
        env = {**os.environ, "PYKVM_STORE": f"{top}/store", "PYKVM_STATE_ROOT": f"{top}/state"}
        build_image(env)
        base = ["container", "run", "--rm", "--network", "none"]
        sides = {"container": pykvm_argv(*base, "busybox", "echo", "hello"),
                 "vm": pykvm_argv(*base, "--isolation", "vm", "--memory", args.memory,
                                  "busybox", "echo", "hello")}
        for argv in sides.values():                 # warm: the page cache, the VM's root disk
            run_once(argv, env=env, timeout=600)
        samples: dict[str, list] = {name: [] for name in sides}
        for _ in range(args.runs):                  # interleaved: both see the same machine noise
            for name, argv in sides.items():
                samples[name].append(run_once(argv, env=env, timeout=600,
                                              first_line=lambda line: line == "hello"))
        print(f"\n`echo hello` in busybox, {args.runs} runs each (VM: {args.memory} of RAM)")
        rows = {"first output": lambda s: s.first_line_s, "exit": lambda s: s.exit_s,
                "peak RSS": lambda s: s.peak_rss_bytes / MIB}
        for what, value in rows.items():
            unit = "MiB" if what == "peak RSS" else "s"
            for name in sides:
                print(summary(f"{name} {what}", [value(s) for s in samples[name]], unit))
        for what, value in rows.items():
            vm, container = (statistics.median(value(s) for s in samples[n]) for n in ("vm", "container"))
            print(f"ratio vm/container {what:<13} {vm / container:6.2f}x (medians)")
        built, cached = root_disk_times(env["PYKVM_STORE"], args.runs)
        print(summary("root disk, built", built, "s"))
        print(summary("root disk, cached", cached, "s"))
        print(f"\nwhere a VM run's time goes (root disk cached; {CLOCK_TICKS} ticks/s in the guest's /proc)")
        vm_base = sides["vm"][:-2]                  # without "echo hello"
        for phase, values in vm_breakdown(vm_base, env, args.runs).items():
            print(summary(phase, values, "s"))


if __name__ == "__main__":
    main()
