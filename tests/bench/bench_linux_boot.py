#!/usr/bin/env python3
"""Linux boot time and exits: pykvm vs QEMU -M microvm, same kernel, initramfs and command line.

Run where /dev/kvm is hardware-style KVM (stock Linux does not finish booting
on PVM, where this prints "not measured" and why):

    make linux-guest
    .venv/bin/python tests/bench/bench_linux_boot.py [--runs 5] [--mem 256M] [--console ttyS0,virtio]

or, on a PVM or KVM-less machine, inside the L1 lane (both VMMs in the same L1):

    python tests/hw/lane.py --bench linux_boot

Two consoles, each VMM with the same one:
  ttyS0    the 16550 UART: every byte of the kernel's log is an I/O exit (two, with
           the line status read before it); the initramfs' /init prints its marker
  virtio   console=hvc0 alone: the kernel keeps its log until virtio_console is
           loaded by /init, then hands the whole backlog to hvc0 in a few large
           buffers (pykvm --console virtio; QEMU virtio-serial-device + virtconsole).
           /init's marker goes to /dev/console, which does not exist yet then, so
           the prompt on hvc0 is the first line of userspace here.
Per run, from the VMM's start:
  first byte  the first byte on the console: with earlyprintk=serial (ttyS0), the kernel's
              decompressor's first line, so this is mostly the VMM's own start (process,
              imports, memory, loading the kernel) and the time it splits off shows where
              the rest of the boot goes; on virtio, the backlog handed to hvc0
  userspace   /init's marker (ttyS0) or the shell's prompt (virtio)
  prompt      the shell's prompt
  poweroff    the VMM process has exited after `poweroff -f` typed at the shell
Printed as min / median / max over the runs, and the ratio pykvm / QEMU of the
medians (goals: <= 1.0x on ttyS0, <= 0.8x on virtio).  Before the boots, what pykvm's
own start costs on this machine, each the median of 3 fresh interpreters: Python's
start (`python -c pass`), and that plus the imports of `pykvm boot` and the machine.  Then VM exits per boot,
as KVM counts them (KVM_GET_STATS_FD, "exits": also those KVM handles itself):
one more run each, pykvm with --exit-summary (the summary --trace ends with, by
reason and with KVM's count, without --trace's line per exit, which would be
most of the run), QEMU asked over QMP (query-stats) once the prompt is there,
before poweroff, so QEMU's count leaves out the few exits of powering off.
For pykvm the exits that reached it (its own count, by reason) follow.
"""
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
from bench_virtio_exits import qmp  # noqa: E402  (tests/bench: a QMP round trip)
from linux_guest import CACHE, SerialSession, pykvm_argv  # noqa: E402
from tiers import kvm_flavour, linux_problem  # noqa: E402

MARKER = "pykvm-guest: userspace up"
PROMPT = "guest# "
QUIET = ("reboot=k panic=-1 pci=off 8250.nr_uarts=1 "
         "i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd")
CMDLINES = {"ttyS0": f"console=ttyS0 earlyprintk=serial {QUIET}",
            "virtio": f"console=hvc0 {QUIET}"}
GOALS = {"ttyS0": 1.0, "virtio": 0.8}
PYKVM_COUNTED = re.compile(rb"KVM counted (\d+) exits in all")
PYKVM_REASON = re.compile(rb"^  ([A-Z_]+) +(\d+) +[\d.]+%", re.MULTILINE)   # the summary's lines


def pykvm_cmd(kernel: Path, initrd: Path, mem: str, console: str) -> list[str]:
    argv = pykvm_argv("boot", "--kernel", str(kernel), "--initrd", str(initrd), "--mem", mem,
                      "--cmdline", CMDLINES[console])
    return argv + (["--console", "virtio"] if console == "virtio" else [])


def qemu_cmd(kernel: Path, initrd: Path, mem: str, console: str) -> list[str]:
    # microvm: no PCI, no firmware tables beyond what Linux needs (ACPI: its DSDT lists the
    # virtio-mmio slots), ISA serial; -no-reboot makes the guest's reset end QEMU, like pykvm.
    argv = ["qemu-system-x86_64", "-M", "microvm,x-option-roms=off,pit=on,pic=on,rtc=on",
            "-accel", "kvm", "-cpu", "host", "-m", mem, "-smp", "1", "-nodefaults",
            "-no-user-config", "-nographic", "-no-reboot", "-kernel", str(kernel),
            "-initrd", str(initrd), "-append", CMDLINES[console]]
    if console == "virtio":
        return argv + ["-serial", "none", "-chardev", "stdio,id=console0",
                       "-device", "virtio-serial-device", "-device", "virtconsole,chardev=console0"]
    return argv + ["-serial", "stdio"]


PHASES = ("first byte", "userspace", "prompt", "poweroff")


def one_run(argv: list[str], console: str, at_prompt=None) -> tuple[float, float, float, float, bytes]:
    """(first byte, userspace, prompt, poweroff) seconds from the start, and the console's bytes."""
    start = time.monotonic()
    with SerialSession(argv) as vm:
        first = MARKER if console == "ttyS0" else PROMPT
        at = vm.expect(first, timeout=300)
        userspace = time.monotonic() - start
        vm.expect(PROMPT, timeout=60, start=at - len(first))
        prompt = time.monotonic() - start
        if at_prompt is not None:
            at_prompt()
        vm.send("poweroff -f")
        status = vm.wait(timeout=120)
        poweroff = time.monotonic() - start
    if status != 0:
        raise SystemExit(f"{argv[0]} ({console}) ended with status {status}: "
                         f"{vm.output[-500:].decode(errors='replace')}")
    return vm.first_output - start, userspace, prompt, poweroff, vm.output


def pykvm_exits(kernel: Path, initrd: Path, mem: str, console: str) -> int:
    *_, output = one_run(pykvm_cmd(kernel, initrd, mem, console) + ["--exit-summary"], console)
    found = PYKVM_COUNTED.search(output)
    if not found:
        raise SystemExit("pykvm --exit-summary printed no KVM exit count (KVM_GET_STATS_FD)")
    reasons = PYKVM_REASON.findall(output)
    print("pykvm: the exits that reached pykvm, by reason: "
          + ", ".join(f"{reason.decode()} {n.decode()}" for reason, n in reasons))
    return int(found.group(1))


def qemu_exits(kernel: Path, initrd: Path, mem: str, console: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        monitor = str(Path(tmp) / "qmp.sock")
        counted = []

        def read_stats() -> None:
            answer, = qmp(monitor, {"execute": "query-stats", "arguments": {"target": "vcpu"}})
            counted.append(sum(stat["value"] for vcpu in answer["return"] for stat in vcpu["stats"]
                               if stat["name"] == "exits"))

        argv = qemu_cmd(kernel, initrd, mem, console) + ["-qmp", f"unix:{monitor},server=on,wait=off"]
        one_run(argv, console, at_prompt=read_stats)
    return counted[0]


def linux_files() -> tuple[Path, Path] | str:
    """The recipe's kernel and initramfs, or why the Linux guest cannot be measured here
    (also for bench_vmm_memory.py and bench_snapshot.py)."""
    if problem := linux_problem():
        return problem
    kernel, initrd = CACHE / "vmlinuz", CACHE / "initramfs.cpio"
    if not (kernel.exists() and initrd.exists()):
        return f"{kernel} or {initrd} is missing: run `make linux-guest`"
    return kernel, initrd


def can_measure(kernel: Path, initrd: Path, lane_bench: str) -> bool:
    """Are the guest's files, QEMU and hardware-style KVM here?  Missing files or QEMU end
    the benchmark with what to do; PVM prints "not measured" and where to run it instead."""
    for path in (kernel, initrd):
        if not path.exists():
            raise SystemExit(f"{path} is missing: run `make linux-guest`")
    if shutil.which("qemu-system-x86_64") is None:
        raise SystemExit("qemu-system-x86_64 is missing: apt-get install qemu-system-x86")
    if kvm_flavour() not in ("svm", "vmx"):
        print(f"not measured: /dev/kvm here is {kvm_flavour()}, where stock Linux cannot finish "
              f"booting; run it in the L1 lane: python tests/hw/lane.py --bench {lane_bench}")
        return False
    return True


def summary(name: str, values: list[float]) -> str:
    return (f"{name:<30} min {min(values):7.3f}  median {statistics.median(values):7.3f}  "
            f"max {max(values):7.3f}  s")


def parse_arguments(description: str, runs: int, runs_help: str = "",
                    consoles: str = "ttyS0,virtio") -> tuple[argparse.Namespace, list[str]]:
    """The options of the Linux boot benchmarks (this one and bench_linux_boot_exits.py),
    and the consoles asked for, checked."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=runs, help=runs_help or None)
    parser.add_argument("--mem", default="256M")
    parser.add_argument("--console", default=consoles, help="ttyS0, virtio or both (comma)")
    parser.add_argument("--kernel", type=Path, default=CACHE / "vmlinuz")
    parser.add_argument("--initrd", type=Path, default=CACHE / "initramfs.cpio")
    args = parser.parse_args()
    chosen = [c for c in args.console.split(",") if c]
    if unknown := set(chosen) - set(CMDLINES):
        raise SystemExit(f"--console {','.join(sorted(unknown))}: choose from {', '.join(CMDLINES)}")
    return args, chosen


START_STAGES = {"python -c pass": "pass",
                "+ imports of pykvm boot": "import pykvm.commands.booting, pykvm.vm.machine"}


def pykvm_start() -> None:
    """How long pykvm's start takes here before it touches KVM: the interpreter, then the
    imports (under nested TCG both are many times the host's)."""
    import subprocess

    for name, code in START_STAGES.items():
        times = []
        for _ in range(3):
            start = time.monotonic()
            subprocess.run([sys.executable, "-c", code], check=True)
            times.append(time.monotonic() - start)
        print(f"pykvm's start: {name:<26} median {statistics.median(times):7.3f} s")


def main() -> None:
    args, consoles = parse_arguments(__doc__.splitlines()[0], runs=5)
    if not can_measure(args.kernel, args.initrd, "linux_boot"):
        return
    pykvm_start()
    sides = {"pykvm": (pykvm_cmd, pykvm_exits), "qemu-microvm": (qemu_cmd, qemu_exits)}
    files = (args.kernel, args.initrd, args.mem)
    for console in consoles:
        results: dict[str, list[tuple]] = {name: [] for name in sides}
        for _ in range(args.runs):      # interleaved, so both sides see the same machine noise
            for name, (command, _) in sides.items():
                results[name].append(one_run(command(*files, console), console)[:4])
        print(f"\nconsole {console}: {CMDLINES[console]!r}, {args.runs} runs each")
        for name, runs in results.items():
            for i, what in enumerate(PHASES):
                print(summary(f"{name} {what}", [r[i] for r in runs]))
        for i, what in enumerate(PHASES):
            ours = statistics.median(r[i] for r in results["pykvm"])
            theirs = statistics.median(r[i] for r in results["qemu-microvm"])
            goal = f"; goal <= {GOALS[console]}x" if what != "first byte" else ""
            print(f"ratio pykvm/qemu {what:<10} {ours / theirs:5.2f}x (medians{goal})")
        since_first = [statistics.median(r[2] - r[0] for r in results[name]) for name in sides]
        print(f"first byte to prompt: pykvm {since_first[0]:.3f} s, qemu {since_first[1]:.3f} s, "
              f"ratio {since_first[0] / since_first[1]:.2f}x (the guest's boot, without the VMMs' start)")
        exits = {name: count(*files, console) for name, (_, count) in sides.items()}
        print("VM exits per boot (KVM's count, one run each): "
              + ", ".join(f"{name} {n}" for name, n in exits.items())
              + f"; ratio {exits['pykvm'] / exits['qemu-microvm']:.2f}x")


if __name__ == "__main__":
    main()
