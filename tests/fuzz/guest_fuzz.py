"""The guest fuzzer: run many random hostile guests, each under a wall-clock bound.

    python tests/fuzz/guest_fuzz.py --count 10000 --seconds 3600 --seed 1
    make fuzz-guest FUZZ_GUEST_ARGS='--count 500'

Each guest (tests/fuzz/guestgen.py) runs on pykvm's own Machine, with pykvm's
boot_state and GDT code putting the vCPU in real, protected or long mode; for
ring 3 the runner adds user segments, a TSS stack and user page tables.  The
guests run in worker processes, one after another; the parent gives each guest
a wall-clock bound and kills a worker that overruns it.

The oracle, checked for every guest:
  * no Python traceback: Machine.run() returns a status or raises a PyKvmError
    (the CLI's one-line error); any other exception, in any thread, is a finding;
  * no hang: the guest's own deadline (the host stopping the VM, as Ctrl-A x
    does) must end it; a worker that does not answer in DEADLINE + GRACE
    seconds is killed and the guest is a finding;
  * no crash: a worker that dies (a signal, a segfault) is a finding;
  * bounded resources: a worker's fds, threads and RSS must not grow from guest
    to guest (compared with its first WARM_UP guests);
  * host memory untouched: a canary in the worker's heap is checked after
    each guest (pykvm touches guest RAM only through GuestMemory's checked
    accessors; a stray write elsewhere would most likely crash the worker);
  * a documented exit status: 0, (V << 1) | 1 from debug-exit, 1 from a
    GuestError with a register dump; and through the CLI (every --cli-every
    guests, in real mode), nothing but those on exit and one line on stderr.

The summary gives guests run, the rate, outcomes by kind and every finding
with the seed that replays it: `guest_fuzz.py --replay SEED`.
"""
from __future__ import annotations

import argparse
import atexit
import collections
import contextlib
import json
import os
import selectors
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(HERE), str(ROOT)]

from guestgen import HANDLER_STATUS_BASE, FuzzGuest, generate  # noqa: E402
from pykvm.errors import GuestError, PyKvmError  # noqa: E402
from pykvm.vm import layout  # noqa: E402
from pykvm.vm.arch.x86 import boot_state, gdt  # noqa: E402
from pykvm.vm.arch.x86.boot_state import CpuMode, Entry  # noqa: E402
from pykvm.vm.boot.loader import Kernel  # noqa: E402
from pykvm.vm.devices.virtio.attach import DiskSpec, VirtioConfig  # noqa: E402
from pykvm.vm.machine import Machine, MachineConfig  # noqa: E402

__all__ = ["run_guest", "fuzz", "main"]

DEADLINE = 1.5             # seconds a guest may run before the host stops it (an idle guest)
SPIN_DEADLINE = 8.0        # for a guest that may spin without exits: pykvm's watchdog stops it first
INTERRUPTED_STATUS = 130   # `pykvm boot` after Ctrl-C (SIGINT)
VM_POLL = 0.02             # seconds between looks at a CLI sample's fds for its VM
STALL_TIMEOUT = 1.0        # pykvm's --stall-timeout: a guest spinning without exits is stopped
GRACE = 60.0               # seconds past the deadline before the worker counts as hung
DEADLINE_STATUS = -1       # Machine.stop() status used by the host deadline
WARM_UP = 20               # guests before a worker's resource baseline is taken
FD_SLACK, THREAD_SLACK, RSS_SLACK = 8, 4, 128 << 20
CANARY = bytes(range(256)) * 256

# Fuzz-only guest addresses, beside pykvm's own layout (GDT at BOOT_GDT, tables at PML4_START).
IDT = 0x600                # 32 gates; 16 bytes each in long mode
STUBS = 0x800              # one 8-byte exception stub per vector
STUB_SIZE = 8
RING0_STACK = 0xF00        # below FLAT_LOAD: where exceptions push their frames
RING3_STACK = 0x90000      # below the EBDA, RAM in every guest
USER_TSS = 0x70000         # ring 3's TSS: the ring-0 stack, then an I/O bitmap that allows every port
TSS_IOMAP_BASE = 0x66      # SDM Vol. 3A, 8.7 (Figure 8-11): where the I/O map base field is
TSS_SIZE = 0x68            # the 64-bit TSS; the I/O bitmap follows it
IO_BITMAP_BYTES = 0x2000   # one bit per port, 0 = allowed; then a byte of all-ones ends it
USER_CODE, USER_DATA = 0x30 | 3, 0x38 | 3   # GDT entries 6 and 7 (entry 5: a 64-bit TSS's upper half)
VECTORS = 32
PTE_USER = 1 << 2
DISK_BYTES = 1 << 20      # the scratch disk image each worker's guests share
PAGE_TABLE_GIB = 4         # long mode: identity map 4 GiB, so the MMIO gap is reachable


class FuzzMachine(Machine):
    """pykvm's Machine, loading a generated guest instead of a kernel file."""

    def __init__(self, config: MachineConfig, guest: FuzzGuest):
        self.guest = guest
        super().__init__(config)

    def _read_kernel(self) -> Kernel:
        return Kernel(f"fuzz guest {self.guest.seed}", self.guest.code, "raw")   # raw: no firmware

    def _load_kernel(self, kernel: Kernel, firmware) -> Entry:
        g = self.guest
        self.memory.write(layout.FLAT_LOAD, kernel.data)
        mode = {"real": CpuMode.REAL, "protected": CpuMode.PROTECTED, "long": CpuMode.LONG}[g.mode]
        stack = RING3_STACK if g.ring == 3 else RING0_STACK
        flags = boot_state.RFLAGS_RESERVED | (g.iopl << 12)
        return Entry(mode, layout.FLAT_LOAD, {"rsp": stack, "rflags": flags}, protocol="fuzz")

    def _build(self) -> None:
        super()._build()              # set_entry_registers has set the mode with pykvm's boot GDT
        if self.guest.handlers:
            self._write_handlers()
        if self.guest.mode == "long":
            self._write_page_tables()
        if self.guest.ring == 3:
            self._enter_ring3()

    def _write_handlers(self) -> None:
        """Each vector's stub writes HANDLER_STATUS_BASE + vector to debug-exit: `mov al, v; out 0xf4, al; jmp .`."""
        g, sregs = self.guest, self.vcpu.get_sregs()
        for v in range(VECTORS):
            self.memory.write(STUBS + v * STUB_SIZE, bytes([0xB0, HANDLER_STATUS_BASE + v, 0xE6, 0xF4, 0xEB, 0xFE]))
        if g.mode == "real":          # the IVT at 0: segment:offset per vector
            self.memory.write(0, b"".join(struct.pack("<HH", STUBS + v * STUB_SIZE, 0) for v in range(VECTORS)))
            return
        dpl = g.ring << 5             # ring 3 may `int n` into them
        gates = b""
        for v in range(VECTORS):
            target = STUBS + v * STUB_SIZE
            gates += struct.pack("<HHBBH", target & 0xFFFF, gdt.BOOT_CS, 0, 0x8E | dpl, target >> 16)
            if g.mode == "long":
                gates += struct.pack("<II", 0, 0)
        self.memory.write(IDT, gates)
        sregs.idt.base, sregs.idt.limit = IDT, len(gates) - 1
        self.vcpu.set_sregs(sregs)

    def _write_page_tables(self) -> None:
        """Identity-map 4 GiB with 2 MiB pages (the U bit too in ring 3): PML4 -> PDPT -> 4 PDs."""
        bits = boot_state.PTE_PRESENT | boot_state.PTE_WRITE | (PTE_USER if self.guest.ring == 3 else 0)
        pds = [layout.PDE_START + i * 0x1000 for i in range(PAGE_TABLE_GIB)]
        self.memory.write(layout.PML4_START, struct.pack("<Q", layout.PDPTE_START | bits))
        self.memory.write(layout.PDPTE_START, b"".join(struct.pack("<Q", pd | bits) for pd in pds))
        for gib, pd in enumerate(pds):
            self.memory.write(pd, b"".join(struct.pack("<Q", (gib << 30 | i << 21) | bits | boot_state.PTE_HUGE)
                                           for i in range(512)))

    def _enter_ring3(self) -> None:
        """User code and data segments (DPL 3) in the GDT and the segment registers; a TSS with the
        ring-0 stack and an I/O bitmap allowing every port (what IOPL 0 then checks)."""
        long_mode = self.guest.mode == "long"
        entries = gdt.boot_gdt(long_mode) + [(0, 0, 0)]
        code = (gdt.CODE64_FLAGS if long_mode else gdt.CODE32_FLAGS) | 0x60
        data = gdt.DATA_FLAGS | 0x60
        entries += [(code, 0, gdt.FLAT_LIMIT), (data, 0, gdt.FLAT_LIMIT)]
        tss_limit = TSS_SIZE + IO_BITMAP_BYTES
        entries[4] = (gdt.TSS_FLAGS, USER_TSS, tss_limit)
        self.memory.write(layout.BOOT_GDT, gdt.gdt_bytes(entries))
        stack = struct.pack("<IQ", 0, RING0_STACK) if long_mode else struct.pack("<III", 0, RING0_STACK, gdt.BOOT_DS)
        self.memory.write(USER_TSS, stack)
        self.memory.write(USER_TSS + TSS_IOMAP_BASE, struct.pack("<H", TSS_SIZE))
        self.memory.write(USER_TSS + tss_limit, b"\xff")        # the bitmap itself is RAM's zeros
        sregs = self.vcpu.get_sregs()
        gdt.kvm_segment(sregs.tr, gdt.BOOT_TSS, *entries[4])
        sregs.gdt.limit = len(entries) * 8 - 1
        gdt.kvm_segment(sregs.cs, USER_CODE, code, 0, gdt.FLAT_LIMIT)
        for segment in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
            gdt.kvm_segment(segment, USER_DATA, data, 0, gdt.FLAT_LIMIT)
        self.vcpu.set_sregs(sregs)


# --- one guest -------------------------------------------------------------------------------

class Outcome(dict):
    """What one guest did: kind, status, detail (JSON-able)."""


def classify_status(status: int) -> str:
    if status == DEADLINE_STATUS:
        return "deadline"
    if status == 0:
        return "status-0"
    if status & 1:
        return "exception-stub" if HANDLER_STATUS_BASE <= status >> 1 < HANDLER_STATUS_BASE + VECTORS else "debug-exit"
    return "FINDING-bad-status"


GUEST_ERRORS = [("triple fault", "triple-fault"), ("KVM internal error", "internal-error"),
                ("halted with interrupts disabled", "halted-if0"), ("no VM exit for", "stall"),
                ("KVM could not enter", "fail-entry"), ("unhandled VM exit", "unhandled-exit")]
PANIC_RESET = "the guest kernel panicked"   # a warm reset (BDA 0x472 = 0x1234): Machine._guest_reset


def classify_error(error: PyKvmError) -> str:
    """A GuestError with its register dump, by reason; anything else is a finding."""
    text = str(error)
    if isinstance(error, GuestError) and text.startswith(PANIC_RESET):
        return "panic-reset"                      # the guest's own log says why: no dump
    if isinstance(error, GuestError) and text.startswith("VM stopped: ") and "rip=" in text:
        return next((kind for key, kind in GUEST_ERRORS if key in text), "guest-error")
    return f"FINDING-{type(error).__name__}"      # status 1 or 2 without a register dump


_disk_image: Path | None = None


def fuzz_virtio() -> VirtioConfig:
    """The virtio devices every fuzz guest gets (guestgen.VIRTIO_DEVICES, in slot order): a disk
    on a small scratch image of this worker's, the console and the entropy device."""
    global _disk_image
    if _disk_image is None:
        fd, name = tempfile.mkstemp(prefix="pykvm-fuzz-disk-", suffix=".img")
        os.ftruncate(fd, DISK_BYTES)
        os.close(fd)
        _disk_image = Path(name)
        atexit.register(_disk_image.unlink, missing_ok=True)
    return VirtioConfig(disks=[DiskSpec(_disk_image)], console=True, rng=True)


def run_guest(guest: FuzzGuest, deadline: float | None = None) -> Outcome:
    """Run one guest on a FuzzMachine; never raises (a non-PyKvmError becomes a traceback finding)."""
    config = MachineConfig(kernel=Path("fuzz-guest"), memory=guest.memory, kernel_format="raw",
                           output=lambda data: None, stall_timeout=STALL_TIMEOUT, virtio=fuzz_virtio())
    try:
        with FuzzMachine(config, guest) as machine:
            timer = threading.Timer(deadline or deadline_for(guest), machine.stop, (DEADLINE_STATUS,))
            timer.start()
            try:
                status = machine.run()
            finally:
                timer.cancel()
                timer.join()
        return Outcome(kind=classify_status(status), status=status, detail="")
    except PyKvmError as e:
        return Outcome(kind=classify_error(e), status=e.exit_code, detail=str(e).splitlines()[0])
    except Exception:
        return Outcome(kind="FINDING-traceback", status=None, detail=traceback.format_exc())


def run_cli(seed: str) -> Outcome:
    """A real-mode guest through `python -m pykvm boot --format raw`, as a user runs it.

    At its deadline it gets SIGINT (a user's Ctrl-C): pykvm must then end with
    130 ("pykvm: aborted"; "interrupted" while it is still starting).  Any exit
    must be a documented status, with at most one error line on stderr (a
    GuestError's register dump follows it) and never a traceback.  Status 1 is
    a GuestError, or debug-exit's (0 << 1) | 1.
    """
    guest = generate(seed, mode="real")
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        f.write(guest.code)
        f.flush()
        command = [sys.executable, "-m", "pykvm", "boot", "--kernel", f.name, "--format", "raw",
                   "--mem", f"{guest.memory >> 20}M", "--stall-timeout", str(STALL_TIMEOUT)]
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, cwd=ROOT, preexec_fn=default_sigint)
        try:
            wait_for_vm(proc)
            _, err = proc.communicate(timeout=deadline_for(guest))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate()      # the parent's bound covers a CLI that ignores it
    err, status = err.decode(errors="replace"), proc.returncode
    errors = [line for line in err.splitlines() if line.startswith("pykvm: error:")]
    documented = status in (0, INTERRUPTED_STATUS) or status > 0 and status & 1
    if "Traceback" in err or not documented or len(errors) > 1:
        return Outcome(kind="FINDING-cli", status=status, detail=err[-3000:])
    kind = {0: "status-0", INTERRUPTED_STATUS: "interrupted"}.get(status, "guest-error" if errors else "debug-exit")
    return Outcome(kind=f"cli:{kind}", status=status, detail="")


def wait_for_vm(proc: subprocess.Popen, timeout: float = GRACE) -> None:
    """Until `proc` holds a KVM VM fd (or has ended): the deadline counts from the VM, not from exec.

    A SIGINT before that lands in Python's own start-up (site.py), which
    ends any Python program with "Fatal Python error"; pykvm's part of
    start-up, the CLI's imports, is tested alone (tests/unit/test_cli_interrupt.py).
    """
    fds, deadline = Path(f"/proc/{proc.pid}/fd"), time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if any("kvm-vm" in os.readlink(fd) for fd in fds.iterdir()):
                return
        time.sleep(VM_POLL)


def default_sigint() -> None:
    """A job started in the background by a shell inherits SIGINT ignored: give the CLI Ctrl-C back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def deadline_for(guest: FuzzGuest) -> float:
    """Long enough for pykvm's watchdog to stop a guest that spins without exits."""
    return SPIN_DEADLINE if guest.actions[-1:] in (["jmp-self"], ["run-on"]) else DEADLINE


# --- the worker process ----------------------------------------------------------------------

def resources() -> dict:
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return {"rss": rss, "fds": len(os.listdir("/proc/self/fd")), "threads": len(os.listdir("/proc/self/task"))}


def worker() -> None:
    """Read a seed per line on stdin, run that guest, answer one JSON line on stdout."""
    import logging

    logging.basicConfig(level=logging.ERROR)           # the bus logs each unmapped port: quiet
    thread_errors: list[str] = []
    threading.excepthook = lambda args: thread_errors.append(
        "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)))
    canary = bytearray(CANARY)
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)                                      # a stray print must not break the protocol
    for line in sys.stdin:
        words = line.split()
        seed = words[-1]
        outcome = run_cli(seed) if words[0] == "cli" else run_guest(generate(seed))
        if thread_errors:
            outcome = Outcome(kind="FINDING-thread-traceback", status=outcome["status"],
                              detail=thread_errors.pop())
        if canary != CANARY:
            outcome = Outcome(kind="FINDING-host-memory", status=outcome["status"], detail="canary changed")
            canary[:] = CANARY
        out.write(json.dumps({"seed": line.strip(), **outcome, **resources()}) + "\n")


# --- the parent ------------------------------------------------------------------------------

class Worker:
    """A worker process and the guest it is running."""

    def __init__(self, log: Path):
        self.log = log
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=open(log, "ab"), text=True, bufsize=1)
        self.seed: str | None = None
        self.started = 0.0
        self.done = 0
        self.baseline: dict | None = None
        self.leak_reported = False

    def send(self, seed: str) -> None:
        self.seed, self.started = seed, time.monotonic()
        self.proc.stdin.write(seed + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def leak(self, report: dict) -> str | None:
        """A resource that grew past its baseline plus slack, or None."""
        self.done += 1
        if self.done == WARM_UP:
            self.baseline = {k: report[k] for k in ("rss", "fds", "threads")}
        if self.baseline is None or self.leak_reported:
            return None
        b = self.baseline
        for key, slack in (("fds", FD_SLACK), ("threads", THREAD_SLACK), ("rss", RSS_SLACK)):
            if report[key] > b[key] + slack:
                self.leak_reported = True
                return f"{key} grew from {b[key]} to {report[key]} after {self.done} guests"
        return None


class Fuzz:
    """The parent: hands seeds to workers, bounds each guest, gathers outcomes and findings."""

    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.kinds: collections.Counter[str] = collections.Counter()
        self.findings: list[dict] = []
        self.run = 0
        self.max_rss = 0

    def finding(self, seed: str, kind: str, detail: str) -> None:
        cli, seed = seed.startswith("cli "), seed.split()[-1]
        guest = generate(seed, mode="real" if cli else None)
        self.findings.append({"seed": seed, "kind": kind, "detail": detail, "guest": guest.describe()})
        print(f"FINDING {kind} seed={seed}: {guest.describe()}\n  {detail.strip()[:2000]}", flush=True)

    def seeds(self):
        i = 0
        while True:
            yield f"{self.args.seed}:{i}"
            i += 1

    def main(self) -> int:
        args, start = self.args, time.monotonic()
        seeds = self.seeds()
        workers = [Worker(self.out / f"worker{n}.log") for n in range(args.jobs)]
        sel = selectors.DefaultSelector()
        for w in workers:
            sel.register(w.proc.stdout, selectors.EVENT_READ, w)
        budget_left = lambda: self.run < args.count and time.monotonic() - start < args.seconds  # noqa: E731
        for w in workers:
            if budget_left():
                w.send(next(seeds))
        try:
            while any(w.seed for w in workers):
                for key, _ in sel.select(1.0):
                    w = key.data
                    line = w.proc.stdout.readline()
                    if not line:
                        self.lost_worker(w, sel, workers, "crash", f"worker exited with {w.proc.wait()}")
                    else:
                        self.record(w, json.loads(line))
                    w = self.current(w, workers)
                    if budget_left():
                        cli = args.cli_every and (self.run + 1) % args.cli_every == 0
                        w.send(("cli " if cli else "") + next(seeds))
                    else:
                        w.seed = None
                for w in list(workers):
                    if w.seed and time.monotonic() - w.started > SPIN_DEADLINE + GRACE:
                        self.lost_worker(w, sel, workers, "hang",
                                         f"no answer {SPIN_DEADLINE + GRACE:.0f} s after the start")
                        nw = self.current(w, workers)
                        nw.seed = None
                        if budget_left():
                            nw.send(next(seeds))
        finally:
            for w in workers:
                w.proc.stdin.close()
                w.kill()
        return self.summary(time.monotonic() - start)

    def current(self, w: Worker, workers: list[Worker]) -> Worker:
        return w if w in workers else workers[-1]

    def lost_worker(self, w: Worker, sel, workers: list[Worker], kind: str, detail: str) -> None:
        self.run += 1
        self.kinds[f"FINDING-{kind}"] += 1
        self.finding(w.seed, f"FINDING-{kind}", detail)
        sel.unregister(w.proc.stdout)
        w.kill()
        workers.remove(w)
        fresh = Worker(w.log)
        workers.append(fresh)
        sel.register(fresh.proc.stdout, selectors.EVENT_READ, fresh)

    def record(self, w: Worker, report: dict) -> None:
        self.run += 1
        self.max_rss = max(self.max_rss, report["rss"])
        kind = report["kind"]
        self.kinds[kind] += 1
        if kind.startswith("FINDING"):
            self.finding(report["seed"], kind, f"status {report['status']}: {report['detail']}")
        if leak := w.leak(report):
            self.kinds["FINDING-leak"] += 1
            self.finding(report["seed"], "FINDING-leak", leak)
        if self.run % 100 == 0:
            print(f"{self.run} guests, {len(self.findings)} findings", flush=True)

    def summary(self, elapsed: float) -> int:
        report = {"seed": self.args.seed, "guests": self.run, "seconds": round(elapsed, 1),
                  "guests_per_second": round(self.run / max(elapsed, 1e-9), 2),
                  "max_worker_rss_mib": round(self.max_rss / 2**20, 1),
                  "outcomes": dict(self.kinds.most_common()), "findings": self.findings}
        (self.out / "summary.json").write_text(json.dumps(report, indent=2))
        print(f"guest fuzz: {self.run} guests in {elapsed:.0f} s ({report['guests_per_second']}/s), "
              f"{len(self.findings)} findings")
        for kind, n in self.kinds.most_common():
            print(f"  {kind:<28} {n:>7}")
        return 1 if self.findings else 0


def replay(seed: str) -> int:
    guest = generate(seed)
    print(guest.describe())
    print(guest.code.hex(" "))
    outcome = run_guest(guest)
    print(outcome["kind"], outcome["status"], outcome["detail"])
    return 1 if outcome["kind"].startswith("FINDING") else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="guests to run at most")
    parser.add_argument("--seconds", type=float, default=600, help="wall-clock budget")
    parser.add_argument("--seed", default="1", help="the run's seed; guest i has seed SEED:i")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--cli-every", type=int, default=50, help="every N guests, one through the CLI (0: never)")
    parser.add_argument("--out", default=str(ROOT / ".cache" / "fuzz-guest"), help="logs and summary.json")
    parser.add_argument("--replay", metavar="SEED", help="run one guest in this process and print it")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker()
        return 0
    if args.replay:
        return replay(args.replay)
    return Fuzz(args).main()


if __name__ == "__main__":
    sys.exit(main())
