#!/usr/bin/env python3
"""Benchmark: a VM on a tap, pykvm's virtio-net vs QEMU microvm's, the same guest on both.

Each VMM on the same kind of tap in a network namespace made for the run (the host's
address 10.99.0.1 on the tap, the guest's 10.99.0.2 from `ip=`), one VMM after the other,
each booted --runs times after a warm-up boot; min/median/max of the per-run figures and
the ratio of medians.  Needs root (the namespace, the tap) and qemu-system-x86_64.
Two guests (--guest tiny,linux, the default, runs both):

  tiny   the tiny kernel answers ICMP echo (it has no TCP): once it has pinged the host,
         the host sends --count echo requests, each as soon as the last answer came
         (busybox ping -A); a run's figure is their median round trip.  On a PVM host the
         guest's kernel mode is emulated: both VMMs pay the same slow guest, and the ratio
         shows what the VMMs add.  Goal: pykvm <= 1.5x QEMU's time.
  linux  the Linux guest (`make linux-guest`: a distribution kernel, the busybox
         initramfs whose /init loads virtio_net and sets the address from ip=), on the
         serial console.  Latency: --count host pings as above.  TCP throughput, VM to
         host: the guest pipes --mbytes MiB of /dev/zero into busybox nc to the host,
         where a listener counts the bytes and times them from accept to end of stream.
         Goals: round trip <= 1.5x QEMU's, throughput >= 0.67x QEMU's.  Stock Linux
         cannot finish booting on PVM: there this part prints "not measured" and why; run
         it in the L1 lane:  python tests/hw/lane.py --bench vm_network [-- --guest linux]

Every boot's whole console (the guest's kernel messages and the VMM's own stderr, from the
first line) is kept in --logs, one file per boot: GUEST-VMM-RUN.log.  A boot that fails
(a transfer that stops, a guest that does not answer) is named with its VMM and its log,
and the other boots go on; the summary counts the failed ones.

    sudo .venv/bin/python tests/bench/bench_vm_network.py [--guest tiny,linux] [--runs 5]
                                                           [--count 50] [--mbytes 8]
                                                           [--logs .cache/bench/vm_network]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOGS = HERE.parents[1] / ".cache" / "bench" / "vm_network"   # every boot's console, by default
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "kvm"), str(HERE)]
import tinyvm  # noqa: E402  (tests/kvm/tinyvm.py: the VMM command lines)
import bench_linux_boot  # noqa: E402  (the Linux guest's VMM command lines)
from linux_guest import CACHE, SerialSession  # noqa: E402  (a console on a pty, expect/send)
from tiers import kvm_flavour  # noqa: E402

HOST, GUEST, TAP = "10.99.0.1", "10.99.0.2", "tap0"
CMDLINE = f"ip={GUEST}::{HOST}:255.255.255.0::eth0:off run=ping {HOST} 1"
RTT = re.compile(r"time=([0-9.]+) ms")
BOOT_SILENCE = 120                  # seconds without console output before a boot fails
GOAL = 1.5                          # pykvm's median round trip at most this times QEMU's
THROUGHPUT_GOAL = 0.67              # pykvm's median throughput at least this times QEMU's
QEMU_TAP = ["-netdev", f"tap,id=net0,ifname={TAP},script=no,downscript=no",
            "-device", "virtio-net-device,netdev=net0"]
LINUX_IP = f"ip={GUEST}::{HOST}:255.255.255.0::eth0:off"    # the recipe's /init reads it
LINUX_READY = f"pykvm-guest: eth0 {GUEST}/24 via {HOST}"    # what /init says once it is set
PROMPT = "guest# "
TCP_PORT = 5001
SECONDS_PER_MIB = 30                # the slowest transfer waited for: 34 KiB/s (nested TCG)
STALL = 60                          # seconds without a byte before the receiver gives up
NC_IDLE = 5                         # busybox nc -w: close this long after its input ended
MIB = 1 << 20
# The host's end of the TCP test, run in the namespace: accept one connection, read until
# the expected bytes are in (or the sender closes), print the bytes and the seconds from
# accept to the last byte.  Not "until end of file": busybox nc keeps its connection open
# after its input ends (until -w's idle time), and that wait is not the network's.  A
# stream that stops (no byte for `stall` seconds) ends the count early: the caller sees
# fewer bytes than it expected, not a timeout.
RECEIVER = """
import socket, sys, time
port, timeout, expected, stall = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
server = socket.create_server(("0.0.0.0", port))
print("listening", flush=True)
server.settimeout(timeout)
conn, _ = server.accept()
conn.settimeout(stall)
start, total = time.monotonic(), 0
try:
    while total < expected and (chunk := conn.recv(1 << 16)):
        total += len(chunk)
except TimeoutError:
    pass
print(total, time.monotonic() - start, flush=True)
"""


class RunFailed(Exception):
    """One boot did not give its figures: why, in a line (the console log says the rest)."""


def in_ns(netns: str, *argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(in_netns(netns, list(argv)), text=True, capture_output=True,
                          timeout=300, **kw)


def ping_median(netns: str, count: int) -> float:
    """`count` echo requests from the host, each as soon as the last answer came: the
    median round trip in ms."""
    r = in_ns(netns, "/bin/busybox", "ping", "-A", "-c", str(count), "-w", "120", GUEST)
    times = [float(t) for t in RTT.findall(r.stdout)]
    if len(times) < count:
        raise RunFailed(f"{len(times)} of {count} answers to the host's pings:\n"
                        f"{r.stdout}{r.stderr}")
    return statistics.median(times)


def in_netns(netns: str, argv: list[str]) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{netns}", "--", *argv]


@contextmanager
def console(netns: str, vmm_argv: list[str], log: Path):
    """The VMM on a serial console in `netns`; its whole console is written to `log` at the
    end, however the boot ends.  A broken expectation is a RunFailed."""
    with SerialSession(in_netns(netns, vmm_argv)) as vm:
        try:
            yield vm
        except AssertionError as e:
            raise RunFailed(str(e).splitlines()[0]) from None
        finally:
            vm.drain(seconds=5)            # what the guest printed since the last expect()
            log.write_bytes(vm.output)


def tiny_run(netns: str, vmm_argv: list[str], args, log: Path) -> dict[str, float]:
    """Boot tiny, wait for its own ping to the host, then time the host's pings."""
    with console(netns, vmm_argv, log) as vm:
        vm.expect("1 packets transmitted, 1 received", BOOT_SILENCE)
        rtt = ping_median(netns, args.count)
        vm.send("poweroff")
        vm.wait(BOOT_SILENCE)
    return {"round trip (ms)": rtt}


def linux_run(netns: str, vmm_argv: list[str], args, log: Path) -> dict[str, float]:
    """Boot Linux to its prompt, time the host's pings, then a TCP stream VM -> host."""
    with console(netns, vmm_argv, log) as vm:
        at = vm.expect(LINUX_READY, timeout=300)
        at = vm.expect(PROMPT, timeout=60, start=at)
        rtt = ping_median(netns, args.count)
        mib_per_s = guest_to_host(netns, vm, args.mbytes, at)
        vm.send("poweroff -f")
        if (status := vm.wait(timeout=120)) != 0:
            raise RunFailed(f"the VMM exited with status {status} after poweroff")
    return {"round trip (ms)": rtt, "TCP VM->host (MiB/s)": mib_per_s}


def guest_to_host(netns: str, vm: SerialSession, mbytes: int, at: int) -> float:
    """The guest sends `mbytes` MiB of zeros with busybox nc; the host's receiver counts
    and times them.  MiB/s."""
    receiver = subprocess.Popen(in_netns(netns, [sys.executable, "-c", RECEIVER, str(TCP_PORT),
                                                 str(BOOT_SILENCE), str(mbytes * MIB), str(STALL)]),
                                stdout=subprocess.PIPE, text=True)
    try:
        if receiver.stdout.readline() != "listening\n":
            raise RunFailed("the host's TCP receiver did not start")
        vm.send(f"dd if=/dev/zero bs=65536 count={mbytes * MIB // 65536} 2>/dev/null | "
                f"nc -w {NC_IDLE} {HOST} {TCP_PORT}; echo sent-$?")
        out, _ = receiver.communicate(timeout=BOOT_SILENCE + mbytes * SECONDS_PER_MIB)
    except subprocess.TimeoutExpired:
        raise RunFailed(f"{mbytes} MiB did not arrive within "
                        f"{BOOT_SILENCE + mbytes * SECONDS_PER_MIB} s") from None
    finally:
        receiver.kill()
        receiver.wait()
    total, seconds = out.split() if out else ("no", "0")
    if total != str(mbytes * MIB):
        raise RunFailed(f"the host received {total} bytes of {mbytes * MIB} "
                        f"(the stream stopped for {STALL} s or never came)")
    vm.expect("sent-0", timeout=60, start=at)
    return mbytes / float(seconds)


def with_more_cmdline(argv: list[str], flag: str, words: str) -> list[str]:
    """`argv` with `words` added to the kernel command line that follows `flag`."""
    argv = list(argv)
    argv[argv.index(flag) + 1] += " " + words
    return argv


def tiny_vmms(args) -> dict[str, list[str]]:
    elf = tinyvm.build_tiny()
    return {"pykvm boot": tinyvm.pykvm_command(elf, CMDLINE) + ["--net", f"tap={TAP}"],
            "qemu microvm": tinyvm.microvm_command(elf, CMDLINE, disks=[]) + QEMU_TAP}


def linux_vmms(args) -> dict[str, list[str]]:
    """bench_linux_boot's command lines (serial console), with ip= and the tap."""
    files = (args.kernel, args.initrd, args.mem, "ttyS0")
    pykvm = with_more_cmdline(bench_linux_boot.pykvm_cmd(*files), "--cmdline", LINUX_IP)
    qemu = with_more_cmdline(bench_linux_boot.qemu_cmd(*files), "-append", LINUX_IP)
    return {"pykvm boot": pykvm + ["--net", f"tap={TAP}"], "qemu microvm": qemu + QEMU_TAP}


def linux_problem(args) -> str | None:
    """Why the Linux guest cannot be measured here, or None."""
    if kvm_flavour() not in ("svm", "vmx"):
        return (f"/dev/kvm here is {kvm_flavour()}, where stock Linux cannot finish booting; "
                "run it in the L1 lane: python tests/hw/lane.py --bench vm_network")
    for path in (args.kernel, args.initrd):
        if not path.exists():
            return f"{path} is missing: run `make linux-guest`"
    return None


GUESTS = {"tiny": (tiny_vmms, tiny_run), "linux": (linux_vmms, linux_run)}


def measure(netns: str, guest: str, vmms: dict[str, list[str]], run, args) -> dict[str, list]:
    """A warm-up boot per VMM, then --runs boots each, interleaved so both see the same noise.

    Each VMM's list holds a run's figures, or the RunFailed of a boot that gave none."""
    results: dict[str, list] = {name: [] for name in vmms}
    for number in ["warm-up", *range(1, args.runs + 1)]:
        for name, argv in vmms.items():
            log = args.logs / f"{guest}-{name.split()[0]}-{number}.log"
            try:
                figures = run(netns, argv, args, log)
            except RunFailed as e:
                print(f"{guest}, {name}, run {number}: failed: {e}\n  its console: {log}",
                      flush=True)
                figures = e
            if number != "warm-up":
                results[name].append(figures)
    return results


def report(guest: str, results: dict[str, list], args) -> None:
    print(f"\n{guest} over a tap: {args.runs} runs each (a run's round trip: the median of "
          f"{args.count} pings); consoles in {args.logs}")
    for name, runs in results.items():
        if failed := sum(isinstance(r, RunFailed) for r in runs):
            print(f"  {name}: {failed} of {len(runs)} runs failed (above: which, and why)")
    measured = {name: [r for r in runs if not isinstance(r, RunFailed)]
                for name, runs in results.items()}
    if not all(measured.values()):
        print("  not compared: a VMM has no run that gave its figures")
        return
    print(f"{'':<42} {'min':>9} {'median':>9} {'max':>9}")
    for metric in measured["pykvm boot"][0]:
        medians = {}
        for name, runs in measured.items():
            values = [r[metric] for r in runs]
            medians[name] = statistics.median(values)
            print(f"  {name + ' ' + metric:<40} {min(values):9.3f} {medians[name]:9.3f} "
                  f"{max(values):9.3f}")
        ratio = medians["pykvm boot"] / medians["qemu microvm"]
        goal = f"<= {GOAL}" if "round trip" in metric else f">= {THROUGHPUT_GOAL}"
        print(f"  median ratio pykvm / qemu, {metric}: {ratio:.2f}x (goal {goal}x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--guest", default="tiny,linux", help="tiny, linux or both (comma)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--count", type=int, default=50, help="echo requests per run")
    parser.add_argument("--mbytes", type=int, default=8, help="MiB the Linux guest sends per run")
    parser.add_argument("--mem", default="256M", help="the Linux guest's memory")
    parser.add_argument("--kernel", type=Path, default=CACHE / "vmlinuz")
    parser.add_argument("--initrd", type=Path, default=CACHE / "initramfs.cpio")
    parser.add_argument("--logs", type=Path, default=LOGS,
                        help="where each boot's whole console is kept (GUEST-VMM-RUN.log)")
    args = parser.parse_args()
    guests = [g for g in args.guest.split(",") if g]
    if unknown := set(guests) - set(GUESTS):
        raise SystemExit(f"--guest {','.join(sorted(unknown))}: choose from {', '.join(GUESTS)}")
    if os.geteuid() != 0:
        raise SystemExit("needs root: it makes a network namespace and a tap device")
    if problem := tinyvm.vmm_problem("qemu"):
        raise SystemExit(problem)
    failed = 0
    for guest in guests:
        if guest == "linux" and (problem := linux_problem(args)):
            print(f"\nlinux over a tap: not measured: {problem}")
            continue
        make_vmms, run = GUESTS[guest]
        vmms = make_vmms(args)
        args.logs.mkdir(parents=True, exist_ok=True)
        with tap_namespace() as netns:
            results = measure(netns, guest, vmms, run, args)
        report(guest, results, args)
        failed += any(isinstance(r, RunFailed) for runs in results.values() for r in runs)
    return 1 if failed else 0


@contextmanager
def tap_namespace():
    """A network namespace made for the run, with `lo` up and the tap at the host's address."""
    netns = f"pykvm-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        for line in ("ip link set lo up", f"ip tuntap add {TAP} mode tap",
                     f"ip addr add {HOST}/24 dev {TAP}", f"ip link set {TAP} up"):
            in_ns(netns, *line.split()).check_returncode()
        yield netns
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)


if __name__ == "__main__":
    sys.exit(main())
