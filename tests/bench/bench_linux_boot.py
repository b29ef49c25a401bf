#!/usr/bin/env python3
"""Linux boot time: pykvm vs QEMU -M microvm, same kernel, initramfs and command line.

Run where /dev/kvm is hardware-style KVM (stock Linux does not finish booting
on PVM, where this prints "not measured" and why):

    make linux-guest
    .venv/bin/python tests/bench/bench_linux_boot.py [--runs 5] [--mem 256M]

or, on a PVM or KVM-less machine, inside the L1 lane (both VMMs in the same L1):

    python tests/hw/lane.py --bench linux_boot

Two times per run, from the VMM's start:
  userspace   the initramfs' /init prints its marker line
  poweroff    the VMM process has exited after `poweroff -f` typed at the shell
Printed as min / median / max over the runs, and the ratio pykvm / QEMU of the
medians (the goal is <= 1.0).  Both VMMs get the same command line, so both
print the same kernel log over the same kind of UART.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from linux_guest import CACHE, SerialSession, pykvm_argv  # noqa: E402
from tiers import kvm_flavour  # noqa: E402

MARKER = "pykvm-guest: userspace up"
PROMPT = "guest# "
CMDLINE = ("console=ttyS0 earlyprintk=serial reboot=k panic=-1 pci=off 8250.nr_uarts=1 "
           "i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd")


def pykvm_cmd(kernel: Path, initrd: Path, mem: str) -> list[str]:
    return pykvm_argv("boot", "--kernel", str(kernel), "--initrd", str(initrd), "--mem", mem,
                      "--cmdline", CMDLINE)


def qemu_cmd(kernel: Path, initrd: Path, mem: str) -> list[str]:
    # microvm: no PCI, no firmware tables beyond what Linux needs, ISA serial; -no-reboot makes
    # the guest's reset end QEMU, like pykvm.
    return ["qemu-system-x86_64", "-M", "microvm,x-option-roms=off,pit=on,pic=on,rtc=on", "-accel", "kvm",
            "-cpu", "host", "-m", mem, "-smp", "1", "-nodefaults", "-no-user-config", "-nographic",
            "-serial", "stdio", "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", CMDLINE]


def one_run(argv: list[str]) -> tuple[float, float]:
    start = time.monotonic()
    with SerialSession(argv) as vm:
        vm.expect(MARKER, timeout=300)
        userspace = time.monotonic() - start
        vm.expect(PROMPT, timeout=60)
        vm.send("poweroff -f")
        status = vm.wait(timeout=120)
        poweroff = time.monotonic() - start
    if status != 0:
        raise SystemExit(f"{argv[0]} ended with status {status}")
    return userspace, poweroff


def summary(name: str, values: list[float]) -> str:
    return (f"{name:<22} min {min(values):7.3f}  median {statistics.median(values):7.3f}  "
            f"max {max(values):7.3f}  s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mem", default="256M")
    parser.add_argument("--kernel", type=Path, default=CACHE / "vmlinuz")
    parser.add_argument("--initrd", type=Path, default=CACHE / "initramfs.cpio")
    args = parser.parse_args()
    for path in (args.kernel, args.initrd):
        if not path.exists():
            raise SystemExit(f"{path} is missing: run `make linux-guest`")
    if shutil.which("qemu-system-x86_64") is None:
        raise SystemExit("qemu-system-x86_64 is missing: apt-get install qemu-system-x86")
    if kvm_flavour() not in ("svm", "vmx"):
        print(f"not measured: /dev/kvm here is {kvm_flavour()}, where stock Linux cannot finish "
              "booting; run it in the L1 lane: python tests/hw/lane.py --bench linux_boot")
        return
    sides = (("pykvm", pykvm_cmd), ("qemu-microvm", qemu_cmd))
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in sides}
    for _ in range(args.runs):      # interleaved, so both sides see the same machine noise
        for name, build in sides:
            results[name].append(one_run(build(args.kernel, args.initrd, args.mem)))
    for name, runs in results.items():
        print(summary(f"{name} userspace", [u for u, _ in runs]))
        print(summary(f"{name} poweroff", [p for _, p in runs]))
    for i, what in enumerate(("userspace", "poweroff")):
        ours = statistics.median(r[i] for r in results["pykvm"])
        theirs = statistics.median(r[i] for r in results["qemu-microvm"])
        print(f"ratio pykvm/qemu {what:<10} {ours / theirs:5.2f}x (medians; goal <= 1.0x)")


if __name__ == "__main__":
    main()
