"""VMM benchmarks: pykvm's Python run loop against a C KVM client, side by side, in one run.

1. VM exits per second: the same real-mode guest (`out` to port 0x80 in a loop,
   N times, then power off) under pykvm's Machine.run() and under kvm_peer.c.
2. Create VM + vCPU + memory and run to the first HLT: pykvm's Kvm/Vm/Vcpu API
   against kvm_peer.c doing the same ioctls.

Reported as min/median/max per side and the ratio of medians.  Goals:
exits/s >= 0.95x C; create-to-HLT <= 1.5x C.  Nothing here asserts: a
benchmark reports, tests decide.

With --profile N, one more pykvm run of the exit loop under cProfile prints
the N functions with the most time of their own: where an exit's time goes
beyond the C peer's (which is KVM's own round trip plus a switch on the exit
reason).  cProfile slows every Python call, so read its shares, not its total.

    .venv/bin/python tests/bench/bench_vmm.py [--runs 5] [--exits 200000] [--profile 15]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "kvm")]

from guestasm import assemble  # noqa: E402

EXIT_LOOP = """
    mov ${n}, %ecx
1:  out %al, $0x80            # one VM exit per iteration
    dec %ecx
    jnz 1b
    mov $0x604, %dx           # ACPI power off: both sides stop here
    mov $0x2000, %ax
    out %ax, %dx
    hlt
"""


def build_peer(tmp: Path) -> Path:
    peer = tmp / "kvm_peer"
    subprocess.run(["gcc", "-O2", "-o", peer, HERE / "kvm_peer.c"], check=True)
    return peer


def python_exits(guest: Path) -> tuple[int, float]:
    from pykvm.vm.machine import Machine, MachineConfig

    with Machine(MachineConfig(kernel=guest, kernel_format="raw", output=lambda b: None)) as m:
        start = time.perf_counter()
        m.run()
        elapsed = time.perf_counter() - start
    return 0, elapsed


def profile_exits(guest: Path, exits: int, top: int) -> None:
    """The exit loop once under cProfile: per-exit time, and the `top` functions by own time."""
    import cProfile
    import pstats

    # The exit loop runs on the vCPU's own thread (one per vCPU), and cProfile sees only
    # the thread that enables it: so it is enabled inside every thread the run starts.
    profiler = cProfile.Profile()
    original_run = threading.Thread.run

    def profiled_run(thread):
        profiler.enable()
        try:
            original_run(thread)
        finally:
            profiler.disable()

    threading.Thread.run = profiled_run
    try:
        elapsed = python_exits(guest)[1]
    finally:
        threading.Thread.run = original_run
    print(f"Profile of one pykvm run ({exits} exits, {elapsed / exits * 1e6:.1f} us per exit "
          "under cProfile), by own time:")
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(top)


def c_exits(peer: Path, guest: Path) -> float:
    out = subprocess.run([peer, "exits", guest], check=True, capture_output=True, text=True).stdout
    return float(out.split()[1])


def python_create_to_hlt(runs: int) -> list[float]:
    from pykvm.vm.arch.x86.boot_state import CpuMode, Entry, set_entry_registers
    from pykvm.vm import layout
    from pykvm.vm.kvm import Hlt, Kvm
    from pykvm.vm.memory import GuestMemory

    times = []
    for _ in range(runs):
        start = time.perf_counter()
        with Kvm() as kvm, kvm.create_vm() as vm, GuestMemory(2 << 20) as mem:
            mem.register(vm)
            vcpu = vm.create_vcpu(0)
            mem.write(layout.FLAT_LOAD, b"\xf4")  # hlt
            set_entry_registers(vcpu, mem, Entry(CpuMode.REAL, layout.FLAT_LOAD))
            exit = vcpu.run()
            times.append(time.perf_counter() - start)
            assert isinstance(exit, Hlt), exit
    return times


def c_create_to_hlt(peer: Path, runs: int) -> list[float]:
    out = subprocess.run([peer, "create", str(runs)], check=True, capture_output=True, text=True).stdout
    return [float(x) for x in out.split()]


def summary(values: list[float], scale: float = 1.0, unit: str = "") -> str:
    v = [x * scale for x in values]
    return f"min {min(v):9.1f}  median {statistics.median(v):9.1f}  max {max(v):9.1f} {unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--exits", type=int, default=200_000)
    parser.add_argument("--creates", type=int, default=50)
    parser.add_argument("--profile", type=int, metavar="N", default=0,
                        help="also profile one pykvm run and print its N costliest functions")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        peer = build_peer(tmp)
        guest = tmp / "exits.bin"
        guest.write_bytes(assemble(EXIT_LOOP.format(n=args.exits)))
        exits = args.exits + 1
        py_rates, c_rates = [], []
        for _ in range(args.runs):  # interleaved, so both sides see the same machine noise
            py_rates.append(exits / python_exits(guest)[1])
            c_rates.append(exits / c_exits(peer, guest))
        py_create, c_create = [], []
        per_round = max(1, args.creates // args.runs)
        for _ in range(args.runs):  # interleaved too, in rounds
            py_create += python_create_to_hlt(per_round)
            c_create += c_create_to_hlt(peer, per_round)
        if args.profile:
            profile_exits(guest, exits, args.profile)

    print(f"VM exits per second ({exits} exits per run, {args.runs} runs each)")
    print(f"  pykvm (Python) {summary(py_rates, 1e-3, 'k exits/s')}")
    print(f"  C peer         {summary(c_rates, 1e-3, 'k exits/s')}")
    print(f"  ratio pykvm/C (medians): {statistics.median(py_rates) / statistics.median(c_rates):.2f}x"
          "   goal >= 0.95x")
    print(f"  per exit: pykvm {1e6 / statistics.median(py_rates):.1f} us, "
          f"C {1e6 / statistics.median(c_rates):.1f} us")
    print(f"Create VM + vCPU + 2 MiB memory, run to first HLT ({args.creates} runs each)")
    print(f"  pykvm (Python) {summary(py_create, 1e3, 'ms')}")
    print(f"  C peer         {summary(c_create, 1e3, 'ms')}")
    print(f"  ratio pykvm/C (medians): {statistics.median(py_create) / statistics.median(c_create):.2f}x"
          "   goal <= 1.5x")


if __name__ == "__main__":
    main()
