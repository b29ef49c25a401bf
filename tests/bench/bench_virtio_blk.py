#!/usr/bin/env python3
"""Benchmark: virtio-blk reads, pykvm vs QEMU microvm, the same guest, image and cache mode.

The guest is a few dozen instructions of driver (32-bit PVH, interrupts off):
it finds the virtio-blk device by scanning virtio-mmio slots for MagicValue
"virt" and DeviceID 2 (so one ELF runs on both VMMs, whose slots differ),
brings it up, then reads COUNT times: LEN bytes sequentially, or 4 KiB at
random 4 KiB-aligned offsets, one request in flight, polling the used ring,
acknowledging each interrupt status.  It ends through the isa-debug-exit port.

Each VMM boots the guest with COUNT = 0 and with COUNT = N; the difference of
the wall-clock times is the time of N requests, so boot cost cancels out.
Both read from the host page cache (pykvm's buffered preadv; QEMU cache=writeback),
warmed by a first run.  Goals: >= 1.0x QEMU's throughput for 1 MiB,
>= 0.7x for 4 KiB.  Prints min/median/max of the N-request times and MiB/s.

    .venv/bin/python tests/bench/bench_virtio_blk.py [--runs 5] [--count 200] [--virtio-notify exit]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "kvm")]
from guestasm import pvh_elf  # noqa: E402
from pykvm.vm import layout  # noqa: E402

QEMU = "qemu-system-x86_64"
MICROVM_MMIO_BASE, MICROVM_MMIO_STRIDE, MICROVM_SLOTS = 0xFEB00000, 0x200, 24   # QEMU hw/i386/microvm.h
IMAGE_BYTES = 64 << 20
DEBUG_EXIT_STATUS = 1            # outb(0xf4, 0): (0 << 1) | 1

GUEST = """
    .set DESC, 0x200000
    .set AVAIL, 0x201000
    .set USED, 0x202000
    .set HDR, 0x210000
    .set STAT, 0x210100
    .set DATA, 0x400000
    cli
    mov ${base:#x}, %ebx
    mov ${slots}, %ecx
find:
    cmpl $0x74726976, (%ebx)         # MagicValue "virt"
    jne next
    cmpl $2, 8(%ebx)                 # DeviceID 2: block
    je found
next:
    add ${stride:#x}, %ebx
    loop find
    jmp off
found:
    movl $0, 0x70(%ebx)              # reset; ACKNOWLEDGE | DRIVER
    movl $3, 0x70(%ebx)
    movl $1, 0x24(%ebx)              # VIRTIO_F_VERSION_1
    movl $1, 0x20(%ebx)
    movl $11, 0x70(%ebx)             # FEATURES_OK
    movl $0, 0x30(%ebx)
    movl $8, 0x38(%ebx)
    movl $DESC, 0x80(%ebx)
    movl $AVAIL, 0x90(%ebx)
    movl $USED, 0xa0(%ebx)
    movl $1, 0x44(%ebx)
    movl $15, 0x70(%ebx)             # DRIVER_OK
    movl $HDR, DESC+0                # header, data (device-writable), status
    movl $16, DESC+8
    movl $0x00010001, DESC+12        # NEXT, next = 1
    movl $DATA, DESC+16
    movl ${length}, DESC+24
    movl $0x00020003, DESC+28        # NEXT | WRITE, next = 2
    movl $STAT, DESC+32
    movl $1, DESC+40
    movl $2, DESC+44                 # WRITE
    movl $0, HDR                     # VIRTIO_BLK_T_IN
    mov ${count}, %esi
    xor %edi, %edi                   # requests made (avail.idx)
    mov $12345, %ebp                 # random state
request:
    test %esi, %esi
    jz off
    {next_sector}
    movl %eax, HDR+8
    movl $0, HDR+12
    mov %edi, %edx
    and $7, %edx
    movw $0, AVAIL+4(,%edx,2)
    inc %edi
    movw %di, AVAIL+2
    movl $0, 0x50(%ebx)              # the kick
wait:
    cmpw %di, USED+2
    jne wait
    movl $1, 0x64(%ebx)              # InterruptACK
    dec %esi
    jmp request
off:
    mov $0xf4, %dx                   # isa-debug-exit on both VMMs
    mov $0, %al
    out %al, %dx
1:  jmp 1b
"""
SEQUENTIAL = """
    mov %edi, %eax                   # sector = request * (length / 512) mod image sectors
    imul ${sectors_per_request}, %eax
    and ${sector_mask}, %eax
"""
RANDOM = """
    imul $1103515245, %ebp           # a linear congruential generator
    add $12345, %ebp
    mov %ebp, %eax
    shr $8, %eax
    and ${block_mask}, %eax          # a random 4 KiB block ...
    shl $3, %eax                     # ... as a sector number
"""
PATTERNS = {   # name: (bytes per request, sector code, requests per run: enough to outweigh boot noise)
    "sequential 1 MiB": (1 << 20, SEQUENTIAL, 2000),
    "random 4 KiB": (4096, RANDOM, 20000),
}


def guest(path: Path, base: int, stride: int, slots: int, length: int, count: int, code: str) -> Path:
    sectors = IMAGE_BYTES // 512
    next_sector = code.format(sectors_per_request=length // 512, sector_mask=sectors - 1,
                              block_mask=IMAGE_BYTES // 4096 - 1)
    pvh_elf(GUEST.format(base=base, stride=stride, slots=slots, length=length, count=count,
                         next_sector=next_sector), path)
    return path


def pykvm_argv(elf: Path, image: Path, notify: str = "eventfd") -> list[str]:
    return [sys.executable, "-m", "pykvm", "boot", "--kernel", str(elf), "--mem", "128M",
            "--disk", str(image), "--virtio-notify", notify]


def qemu_argv(elf: Path, image: Path) -> list[str]:
    return [QEMU, "-M", "microvm,acpi=off", "-accel", "kvm", "-m", "128", "-display", "none",
            "-serial", "none", "-monitor", "none", "-nic", "none", "-no-reboot",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-global", "virtio-mmio.force-legacy=false", "-kernel", str(elf),
            "-drive", f"if=none,id=d0,file={image},format=raw,cache=writeback",
            "-device", "virtio-blk-device,drive=d0"]


def seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=600)
    elapsed = time.perf_counter() - start
    if proc.returncode != DEBUG_EXIT_STATUS:
        raise SystemExit(f"{argv[0]} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return elapsed


def measure(make_argv, empty: Path, full: Path, runs: int) -> list[float]:
    """Times of the N requests alone: (boot with N) - (boot with 0), paired run by run."""
    seconds(make_argv(full))                                   # warm-up: page cache, bytecode
    return [seconds(make_argv(full)) - seconds(make_argv(empty)) for _ in range(runs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--count", type=int, default=None,
                        help="requests per run (default: per pattern, see PATTERNS)")
    parser.add_argument("--virtio-notify", dest="notify", default="eventfd", choices=["eventfd", "exit"],
                        help="pykvm's notification path (pykvm boot --virtio-notify)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        image = tmp / "disk.img"
        image.write_bytes(bytes(range(256)) * (IMAGE_BYTES // 256))
        vmms = {
            "pykvm": (lambda elf, image: pykvm_argv(elf, image, args.notify), layout.VIRTIO_MMIO_BASE,
                      layout.VIRTIO_MMIO_SIZE, len(layout.VIRTIO_MMIO_IRQS)),
            "qemu microvm": (qemu_argv, MICROVM_MMIO_BASE, MICROVM_MMIO_STRIDE, MICROVM_SLOTS),
        }
        print(f"virtio-blk reads, {args.runs} runs; seconds for the requests alone")
        print(f"{'pattern':<24} {'vmm':<14} {'min':>7} {'median':>7} {'max':>7} {'MiB/s':>8}")
        for name_of_pattern, (length, code, default_count) in PATTERNS.items():
            count = args.count or default_count
            pattern = f"{name_of_pattern} x{count}"
            rates = {}
            for name, (argv_of, base, stride, slots) in vmms.items():
                elfs = [guest(tmp / f"{name}-{n}.elf".replace(" ", "-"), base, stride, slots, length,
                              n, code) for n in (0, count)]
                times = measure(lambda elf: argv_of(elf, image), *elfs, args.runs)
                median = statistics.median(times)
                rates[name] = count * length / (1 << 20) / max(median, 1e-9)
                print(f"{pattern:<24} {name:<14} {min(times):7.3f} {median:7.3f} {max(times):7.3f} "
                      f"{rates[name]:8.1f}")
            print(f"{pattern:<24} throughput ratio pykvm / qemu: {rates['pykvm'] / rates['qemu microvm']:.2f}x")


if __name__ == "__main__":
    main()
