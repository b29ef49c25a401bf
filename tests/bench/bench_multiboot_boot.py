#!/usr/bin/env python3
"""Benchmark: boot the student Multiboot kernel (guests/multiboot) to power-off, pykvm vs QEMU.

The same image, command line and memory size under `pykvm boot --kernel` and
`qemu-system-x86_64 -kernel` (QEMU runs SeaBIOS and its Multiboot option ROM
first; pykvm loads the kernel itself).  Whole processes, spawn to exit;
min/median/max per VMM and the ratio of medians.

    .venv/bin/python tests/bench/bench_multiboot_boot.py [--runs 5] [--image kernel.bin]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "kvm")]
from bench_tiny_boot import measure  # noqa: E402  (spawn-to-exit timing, warm-up run first)

GUEST_DIR = Path(__file__).resolve().parents[2] / "guests" / "multiboot"
MEM_MIB = 128


def commands(image: Path) -> dict[str, list[str]]:
    return {
        "pykvm boot": [sys.executable, "-m", "pykvm", "boot", "--kernel", str(image),
                       "--mem", f"{MEM_MIB}M"],
        "qemu (-accel kvm)": ["qemu-system-x86_64", "-M", "pc", "-accel", "kvm", "-m", str(MEM_MIB),
                              "-display", "none", "-serial", "stdio", "-monitor", "none",
                              "-nic", "none", "-no-reboot", "-kernel", str(image)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--image", default="kernel.elf", help="kernel.elf or kernel.bin")
    args = parser.parse_args()
    subprocess.run(["make", "-s", "-C", str(GUEST_DIR)], check=True)
    print(f"multiboot {args.image} boot to poweroff, {args.runs} runs each, seconds")
    print(f"{'vmm':<20} {'min':>7} {'median':>7} {'max':>7}")
    medians = {}
    for name, argv in commands(GUEST_DIR / args.image).items():
        times = measure(argv, args.runs)
        medians[name] = statistics.median(times)
        print(f"{name:<20} {min(times):7.3f} {medians[name]:7.3f} {max(times):7.3f}")
    print(f"median ratio pykvm / qemu (-accel kvm): "
          f"{medians['pykvm boot'] / medians['qemu (-accel kvm)']:.2f}x")


if __name__ == "__main__":
    main()
