#!/usr/bin/env python3
"""Benchmark: ping round trips to the tiny kernel, pykvm's virtio-net vs QEMU microvm's.

The same ELF on both VMMs, each on the same kind of tap in a network namespace made for
the run (the host's address 10.99.0.1 on the tap, the guest's 10.99.0.2 from `ip=`).
Once the guest has answered its first ping, the host sends --count echo requests, each
as soon as the last answer came (busybox ping -A), and takes the median round trip;
each VMM is booted --runs times.  Prints min/median/max of those medians per VMM and
the ratio of medians (goal: pykvm <= 1.5x QEMU's time).  Needs root (the namespace, the
tap) and qemu-system-x86_64.  On a PVM host the guest's kernel mode is emulated: both
VMMs then pay the same slow guest, and the ratio shows what the VMMs add.

    sudo .venv/bin/python tests/bench/bench_vm_network.py [--runs 5] [--count 50]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent.parent / "kvm")]
import tinyvm  # noqa: E402  (tests/kvm/tinyvm.py: the VMM command lines)
from linux_guest import SerialSession  # noqa: E402  (a console on a pty, expect/send)

HOST, GUEST, TAP = "10.99.0.1", "10.99.0.2", "tap0"
CMDLINE = f"ip={GUEST}::{HOST}:255.255.255.0::eth0:off run=ping {HOST} 1"
RTT = re.compile(r"time=([0-9.]+) ms")
BOOT_SILENCE = 120                  # seconds without console output before a boot fails
GOAL = 1.5                          # pykvm's median round trip at most this times QEMU's


def in_ns(netns: str, *argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "--", *argv], text=True,
                          capture_output=True, timeout=300, **kw)


def one_run(netns: str, vmm_argv: list[str], count: int) -> float:
    """Boot, wait for the guest's own ping to the host, ping it `count` times: the median."""
    with SerialSession(["nsenter", f"--net=/run/netns/{netns}", "--", *vmm_argv]) as vm:
        vm.expect("1 packets transmitted, 1 received", BOOT_SILENCE)
        r = in_ns(netns, "/bin/busybox", "ping", "-A", "-c", str(count),
                  "-w", "120", GUEST)
        times = [float(t) for t in RTT.findall(r.stdout)]
        if len(times) < count:
            raise SystemExit(f"{vmm_argv[0]}: {len(times)} of {count} answers:\n{r.stdout}{r.stderr}")
        vm.send("poweroff")
        vm.wait(BOOT_SILENCE)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--count", type=int, default=50, help="echo requests per run")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: it makes a network namespace and a tap device")
    if problem := tinyvm.vmm_problem("qemu"):
        raise SystemExit(problem)

    elf = tinyvm.build_tiny()
    qemu = tinyvm.microvm_command(elf, CMDLINE, disks=[]) + [
        "-netdev", f"tap,id=net0,ifname={TAP},script=no,downscript=no",
        "-device", "virtio-net-device,netdev=net0"]
    vmms = {"pykvm boot": tinyvm.pykvm_command(elf, CMDLINE) + ["--net", f"tap={TAP}"],
            "qemu microvm": qemu}
    netns = f"pykvm-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        for line in ("ip link set lo up", f"ip tuntap add {TAP} mode tap",
                     f"ip addr add {HOST}/24 dev {TAP}", f"ip link set {TAP} up"):
            in_ns(netns, *line.split()).check_returncode()
        results = {}
        for name, argv in vmms.items():
            one_run(netns, argv, args.count)                        # warm-up
            results[name] = [one_run(netns, argv, args.count) for _ in range(args.runs)]
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)

    print(f"ping round trip to tiny over a tap (ms), median of {args.count} per run, "
          f"{args.runs} runs each")
    print(f"{'':<20} {'min':>9} {'median':>9} {'max':>9}")
    for name, values in results.items():
        print(f"  {name:<18} {min(values):9.3f} {statistics.median(values):9.3f} {max(values):9.3f}")
    ratio = statistics.median(results["pykvm boot"]) / statistics.median(results["qemu microvm"])
    print(f"  median ratio pykvm / qemu: {ratio:.2f}x (goal <= {GOAL}x)")


if __name__ == "__main__":
    main()
