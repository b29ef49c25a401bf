#!/usr/bin/env python3
"""Benchmark: VM exits per disk request as KVM counts them, pykvm (both paths) vs QEMU microvm.

KVM keeps its own counters per vCPU (KVM_GET_STATS_FD, api.rst 4.133): `exits`
counts every exit, also those KVM handles without returning to the VMM (an
ioeventfd write, a HLT); `mmio_exits` those that went to user space as MMIO.
pykvm prints them with `--exit-summary`; QEMU answers QMP `query-stats`.
Same counters, same kernel, so the numbers sit side by side.

The tiny kernel with one virtio-blk disk runs K `dwrite` + `dread` pairs (each
dwrite is a write and a flush); the same session without them is subtracted,
and the difference divided by K: exits per pair.  pykvm's counters are read at
power-off, QEMU's when the session's last line has printed (microvm's
power-off ends QEMU at once): the subtraction cancels what each adds.

On PVM-backed KVM the counters are PVM's: it counts no `io_exits` and its
`mmio_exits` do not follow the user-space MMIO exits (differences can even
come out negative), so read these numbers on hardware KVM (the L1 lane) and
take PVM's as a smoke test of the measurement.

    .venv/bin/python tests/bench/bench_virtio_exits.py [--pairs 20] [--runs 3]
"""
from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "kvm")]
from clitools import kill_9_after  # noqa: E402
import tinyvm  # noqa: E402
from tiers import kvm_flavour  # noqa: E402

COUNTERS = ("exits", "mmio_exits")
DONE = "session-done"
PYKVM_COUNTED = re.compile(r"KVM counted (\d+) exits in all .*mmio_exits (\d+)")


def script(pairs: int, end: str) -> str:
    ops = "".join(f"dwrite {n + 1} x;dread {n + 1};" for n in range(pairs))
    return f"run={ops}echo {DONE};{end}"


def pykvm_counters(argv: list[str]) -> dict[str, int]:
    proc = subprocess.run(argv + ["--exit-summary"], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=tinyvm.TIMEOUT_S)
    found = PYKVM_COUNTED.search(proc.stderr)
    if proc.returncode != 0 or not found:
        raise SystemExit(f"pykvm: status {proc.returncode}; {proc.stderr[-500:]}")
    return dict(zip(COUNTERS, map(int, found.groups())))


def qmp(path: str, *commands: dict) -> list[dict]:
    """Send QMP commands on a fresh connection (after the greeting and qmp_capabilities)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
        stream = sock.makefile("rw")
        stream.readline()                                        # the greeting
        answers = []
        for command in ({"execute": "qmp_capabilities"}, *commands):
            stream.write(json.dumps(command) + "\n")
            stream.flush()
            while "return" not in (answer := json.loads(stream.readline())) and "error" not in answer:
                pass                                             # events
            answers.append(answer)
        return answers[1:]


def qemu_counters(argv: list[str], monitor: str) -> dict[str, int]:
    found = dict.fromkeys(COUNTERS, 0)

    def read(pid: int) -> None:
        answer, = qmp(monitor, {"execute": "query-stats", "arguments": {"target": "vcpu"}})
        for vcpu in answer["return"]:
            for stat in vcpu["stats"]:
                if stat["name"] in found:
                    found[stat["name"]] += stat["value"]

    kill_9_after(argv + ["-qmp", f"unix:{monitor},server=on,wait=off"], DONE.encode(),
                 before_kill=read)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    elf = tinyvm.build_tiny()
    with tempfile.TemporaryDirectory() as tmp:
        image, monitor = Path(tmp) / "disk.img", str(Path(tmp) / "qmp.sock")
        image.write_bytes(bytes(1 << 20))

        def pykvm(notify):
            return lambda pairs: pykvm_counters(tinyvm.pykvm_command(elf, script(pairs, "poweroff")) + [
                "--disk", str(image), "--virtio-notify", notify])

        vmms = {
            "pykvm eventfd": pykvm("eventfd"),
            "pykvm exit": pykvm("exit"),
            "qemu microvm": lambda pairs: qemu_counters(
                tinyvm.microvm_command(elf, script(pairs, ""), [tinyvm.Disk(image)]), monitor),
        }
        print(f"tiny kernel: VM exits per dwrite+dread pair as KVM ({kvm_flavour()}) counts them, "
              f"{args.pairs} pairs, {args.runs} runs (min / median / max)")
        print(f"{'vmm':<16} " + " ".join(f"{c:>26}" for c in COUNTERS))
        for name, counters_of in vmms.items():
            per_pair = {c: [] for c in COUNTERS}
            for _ in range(args.runs):
                full, base = counters_of(args.pairs), counters_of(0)
                for c in COUNTERS:
                    per_pair[c].append((full[c] - base[c]) / args.pairs)
            print(f"{name:<16} " + " ".join(f"{min(v):8.1f} {statistics.median(v):8.1f} {max(v):8.1f}"
                                            for v in per_pair.values()))


if __name__ == "__main__":
    main()
