#!/usr/bin/env python3
"""Linux disk reads: pykvm's virtio-blk vs QEMU -M microvm's, same kernel, initramfs and image.

Run where /dev/kvm is hardware-style KVM (stock Linux does not finish booting
on PVM, where this prints "not measured" and why):

    make linux-guest
    .venv/bin/python tests/bench/bench_linux_disk.py [--runs 5] [--image-mib 256] [--reads 4000]

or, on a PVM or KVM-less machine, inside the L1 lane (both VMMs in the same L1):

    make linux-guest && python tests/hw/lane.py --bench linux_disk

Both VMMs boot the Linux guest of `make linux-guest` with the console on
ttyS0 and one virtio-blk disk: the same raw image of random bytes, read-only,
through the host's page cache on both sides (pykvm's buffered preadv; QEMU
cache=writeback, its default, with aio=threads).  The image lives in a
temporary directory (a tmpfs in the lane's L1), so it is all in memory.
The VMMs take turns, one guest up at a time, a boot per run (after a warm-up
boot each), so both see the same machine noise.  In the guest, with O_DIRECT (no
guest page cache: every read is a virtio request, one in flight):
  sequential   busybox `time dd if=/dev/vda of=/dev/null bs=1M iflag=direct`, the whole image
  random       /bin/diskread /dev/vda 4096 READS SEED (guests/linux/diskread.c): 4 KiB reads
               at random 4 KiB-aligned offsets, the same ones on both VMMs
Each is timed by the guest's clock (dd: `time`, 10 ms steps; diskread: CLOCK_MONOTONIC)
and by the host's, so a guest clock that runs wrong on one VMM would show: from the
command typed to its end marker on the console, less the time of the same command
reading one block (the console's round trip, which is not disk time).  Prints min / median / max per
VMM and the ratio pykvm / QEMU of the medians (goals: >= 1.0x for 1 MiB, >= 0.7x for 4 KiB).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
from bench_linux_boot import PROMPT, can_measure, pykvm_cmd, qemu_cmd  # noqa: E402  (same guest, console)
from linux_guest import CACHE, SerialSession  # noqa: E402

CONSOLE = "ttyS0"
SEED = 1
GOALS = {"sequential 1 MiB": 1.0, "random 4 KiB": 0.7}
DD_TIME = re.compile(rb"real\s+(\d+)m ([\d.]+)s")                      # busybox time
DD_RECORDS = re.compile(rb"(\d+)\+0 records in")
DISKREAD = re.compile(rb"diskread: (\d+) reads of (\d+) bytes in (\d+) us")
BOOT_SILENCE = 300          # seconds a booting guest may print nothing (the lane is slow)
COMMAND_SILENCE = 600       # seconds one measurement may take


def pykvm_disk_cmd(kernel: Path, initrd: Path, mem: str, image: Path) -> list[str]:
    return pykvm_cmd(kernel, initrd, mem, CONSOLE) + ["--disk", f"{image},ro"]


def qemu_disk_cmd(kernel: Path, initrd: Path, mem: str, image: Path) -> list[str]:
    return qemu_cmd(kernel, initrd, mem, CONSOLE) + [
        "-drive", f"if=none,id=disk0,file={image},format=raw,readonly=on,cache=writeback",
        "-device", "virtio-blk-device,drive=disk0"]


class Guest:
    """One booted guest: type a command at its shell, get what it printed and the host's time."""

    def __init__(self, name: str, session: SerialSession):
        self.name, self.session, self.commands = name, session, 0

    def command(self, line: str) -> tuple[bytes, float]:
        """Run `line` in the guest's shell; its output and the seconds it took on the host."""
        self.commands += 1
        marker = f"@@done-{self.commands}"
        start_at, start = len(self.session.output), time.monotonic()
        # The shell echoes what is typed: quoting makes the echo differ from the output.
        self.session.send(f'{line}; echo "@@"done-{self.commands}')
        end = self.session.expect(marker, timeout=COMMAND_SILENCE, start=start_at)
        return self.session.output[start_at:end], time.monotonic() - start

    def fail(self, what: str, output: bytes) -> SystemExit:
        return SystemExit(f"{self.name}: {what}; the console said:\n"
                          f"{output[-800:].decode(errors='replace')}")


def sequential(guest: Guest, mib: int) -> tuple[float, float]:
    """(MiB/s by the guest's clock, MiB/s by the host's) for `mib` 1 MiB O_DIRECT reads."""
    def dd(count: int) -> tuple[bytes, float]:
        output, host_seconds = guest.command(
            f"time dd if=/dev/vda of=/dev/null bs=1M count={count} iflag=direct")
        took, records = DD_TIME.search(output), DD_RECORDS.search(output)
        if not took or not records or int(records.group(1)) != count:
            raise guest.fail(f"dd did not read {count} MiB", output)
        return int(took.group(1)) * 60 + float(took.group(2)), host_seconds

    guest_seconds, host_seconds = dd(mib)
    _, console_seconds = dd(1)              # the same console traffic, one read
    return mib / max(guest_seconds, 0.01), (mib - 1) / host_seconds_of_reads(host_seconds, console_seconds)


def random_reads(guest: Guest, reads: int) -> tuple[float, float]:
    """(reads/s by the guest's clock, reads/s by the host's) for `reads` random 4 KiB reads."""
    def diskread(count: int) -> tuple[int, float]:
        output, host_seconds = guest.command(f"/bin/diskread /dev/vda 4096 {count} {SEED}")
        found = DISKREAD.search(output)
        if not found or int(found.group(1)) != count:
            raise guest.fail("diskread printed no result", output)
        return int(found.group(3)), host_seconds

    guest_us, host_seconds = diskread(reads)
    _, console_seconds = diskread(1)        # the same console traffic, one read
    return reads / (guest_us / 1e6), (reads - 1) / host_seconds_of_reads(host_seconds, console_seconds)


def host_seconds_of_reads(host_seconds: float, console_seconds: float) -> float:
    """The host's time for all reads but one: the command's time less that of the same
    command doing one read, so the console's round trip (typing, echo, the result line:
    far slower through either VMM's emulated UART under the lane's TCG than the disk) is
    not counted as disk time."""
    return max(host_seconds - console_seconds, 0.01)


def write_image(path: Path, mib: int) -> None:
    with open(path, "wb") as image:
        for _ in range(mib):
            image.write(os.urandom(1 << 20))


def summary(name: str, values: list[float], unit: str) -> str:
    return (f"  {name:<28} min {min(values):9.1f}  median {statistics.median(values):9.1f}  "
            f"max {max(values):9.1f}  {unit}")


def report(results: dict[str, dict[str, list[tuple[float, float]]]], runs: int) -> None:
    vmms = list(results)
    for kind, unit in (("sequential 1 MiB", "MiB/s"), ("random 4 KiB", "reads/s")):
        print(f"\n{kind}, {runs} runs each")
        medians = {}
        for clock, which in (("guest clock", 0), ("host clock", 1)):
            for vmm in vmms:
                values = [sample[which] for sample in results[vmm][kind]]
                medians[vmm, clock] = statistics.median(values)
                print(summary(f"{vmm} ({clock})", values, unit))
        for clock in ("guest clock", "host clock"):
            ratio = medians[vmms[0], clock] / medians[vmms[1], clock]
            print(f"  ratio pykvm / qemu ({clock}): {ratio:.2f}x (medians; goal >= {GOALS[kind]}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mem", default="256M")
    parser.add_argument("--image-mib", type=int, default=256,
                        help="the image's size; each sequential run reads all of it")
    parser.add_argument("--reads", type=int, default=4000, help="random 4 KiB reads per run")
    parser.add_argument("--kernel", type=Path, default=CACHE / "vmlinuz")
    parser.add_argument("--initrd", type=Path, default=CACHE / "initramfs.cpio")
    args = parser.parse_args()
    if not can_measure(args.kernel, args.initrd, "linux_disk"):
        return
    sides = {"pykvm": pykvm_disk_cmd, "qemu-microvm": qemu_disk_cmd}
    results = {name: {kind: [] for kind in GOALS} for name in sides}
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp, "disk.img")
        write_image(image, args.image_mib)
        # One guest up at a time, each boot measured once, the VMMs taking turns so both see
        # the same machine noise.  (With both guests up at once, QEMU's guest reset itself
        # during boot in three lane runs out of three.)
        for run in range(args.runs + 1):
            for name, command in sides.items():
                with SerialSession(command(args.kernel, args.initrd, args.mem, image)) as session:
                    guest = Guest(name, session)
                    session.expect(PROMPT, timeout=BOOT_SILENCE)
                    sequential(guest, args.image_mib)      # warm-up: the image in the host's cache
                    if run:                                 # run 0 is a warm-up boot
                        results[name]["sequential 1 MiB"].append(sequential(guest, args.image_mib))
                        results[name]["random 4 KiB"].append(random_reads(guest, args.reads))
                    session.send("poweroff -f")
                    session.wait(timeout=120)
    print(f"Linux guest, virtio-blk, {args.image_mib} MiB raw image (read-only, host page "
          f"cache), O_DIRECT in the guest, one request in flight")
    report(results, args.runs)


if __name__ == "__main__":
    main()
