"""`make test-hw`: pykvm's VM tests on hardware-style KVM, on any x86-64 Linux host.

Where /dev/kvm is hardware KVM (kvm_amd or kvm_intel loaded), the lane runs the
VM tests directly.  Everywhere else (PVM-backed /dev/kvm, or no KVM at all) it
boots an "L1" Linux in QEMU's software CPU (TCG) with AMD SVM and nested paging,
loads kvm_amd there, and runs the same tests inside L1, where /dev/kvm behaves
like hardware SVM (AMD64 APM vol. 2, ch. 15 "Secure Virtual Machine").

    host                                    L1: qemu -accel tcg -cpu EPYC,+svm,+npt,-xsave
    ----                                    ----------------------------------------
    1. fetch linux-image-cloud-amd64        (kernel from .cache/hw/, never installed)
    2. write the initramfs                  /init: busybox, insmod virtio-fs + KVM
    3. one virtiofsd per shared tree  <-->  mounted at the same paths: /usr, the
                                            checkout (with .venv), the venv's Python,
                                            kvm-unit-tests (when the host has it)
    4. qemu; serial console on a pipe <---  "@@lane <event>" progress lines
    5. summary from junit.xml         <---  pytest -m "linux or (kvm and not slow)" ...

Each stage has a timeout; a failure names the stage and keeps the serial log
(.cache/hw/serial.log).  Usage:

    python tests/hw/lane.py [--force-l1] [--boot-timeout S] ... [-- PYTEST_ARGS]
    python tests/hw/lane.py --bench NAME [-- ARGS]
                                             (tests/bench/run.py NAME -- ARGS in L1, no
                                             tests: ARGS go to the benchmark script)
    python tests/hw/lane.py --kvm-unit-tests [-- ARGS]
                                             (tests/kvm_unit_tests.py ARGS in L1: the whole
                                             suite under L1's QEMU and pykvm, side by side)
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import lane_initramfs
import lane_kernel
import lane_vmcb
from lane_error import L1Died, L1Hung, LaneError

__all__ = ["LANE_MARKERS", "main"]

ROOT = Path(__file__).resolve().parents[2]      # the checkout
sys.path.insert(0, str(ROOT / "tests"))
from tiers import NESTED_TCG_ENV, kvm_flavour  # noqa: E402  (one definition of "which KVM")
import kvm_unit_tests  # noqa: E402  (where the suite is: one definition, suite_dir)

# The tests that need a VM (-m selects them): Linux guests, and every VM test but the slow
# ones (QEMU cross-checks, load tests, the fuzz sample), which run on the host's KVM in
# `make test`; under TCG they would take most of CI's time and teach the lane nothing new.
LANE_MARKERS = "linux or (kvm and not slow)"
DEFAULT_CACHE = ROOT / ".cache" / "hw"
QEMU = "qemu-system-x86_64"
# TCG implements SVM with nested paging.  -xsave: QEMU 7.2's TCG has no SVM intercept for
# XSETBV, so an L2's XCR0 write changes the one XCR0 the vCPU has without L1's KVM knowing;
# KVM then sizes the L2's CPUID leaf 0xD for a stale XCR0 (L2 Linux resets itself) and, back
# in L1, does not put L1's own XCR0 back.  Without XSAVE in L1 no guest gets it either.
L1_CPU = "EPYC,+svm,+npt,-xsave"
L1_MEM_MIB = 2048                   # guest RAM (--memory); shared memfd, as vhost-user needs
KUT_L1_MEM_MIB = 4096               # ... for --kvm-unit-tests: asyncpf's guest alone has 2 GiB
L1_MODULES = ["virtio_pci", "virtiofs", "kvm_amd",   # the shares and /dev/kvm
              "overlay",        # container images, for `pykvm compare` beside a VM
              "tun", "bridge", "veth",                # VM networking: a tap on pykvm's bridge
              "nft_chain_nat", "nft_nat", "nft_masq", "nft_fib_ipv4", "nft_ct",  # and its NAT,
              "nft_compat", "xt_addrtype", "xt_nat", "xt_MASQUERADE",  # or the same through
              "xt_conntrack", "xt_tcpudp"]                            # iptables-nft
# ... and their dependencies, in load order (lane_kernel.load_order)
BUSYBOX = Path("/bin/busybox")      # Debian's busybox-static
VIRTIOFSD = [Path("/usr/lib/qemu/virtiofsd"),        # C, shipped with QEMU <= 7.2
             Path("/usr/libexec/virtiofsd")]         # Rust, Debian's virtiofsd package
HEARTBEAT_POLL = 2.0                # seconds between looks at the heartbeat file
SERIAL_LOG = "serial.log"           # these four in the cache directory (.cache/hw)
TEST_LOG = "tests.log"              # TestLog: each test's start and outcome, from L1
HUNG_REGISTERS = "registers.hung.txt"   # QEMU's `info registers -a`, `info lapic`, `info pic` when L1 hung
# nohz=off highres=off: L1's LAPIC timers tick periodically, so QEMU's LAPIC raises each
# vCPU's interrupt request afresh every tick (4 ms) and a request bit lost to a race in
# QEMU 7.2's TCG (helper_vmrun's unlocked write of interrupt_request) costs one tick, not the
# whole run; with one-shot timers a lost bit left a halted vCPU waiting for ever.  And a hung
# L1 whose CPU still holds its timer's vector in IRR refuses interrupts: no request was lost.
L1_CMDLINE = "console=ttyS0 rdinit=/init panic=-1 mitigations=off nohz=off highres=off"
LD_SO_CACHE = Path("/etc/ld.so.cache")
PROTOCOLS = Path("/etc/protocols")   # netbase: "tcp" for 6 in `nft list` (the docs show names)
ETC_FILES = {"passwd": b"root:x:0:0:root:/root:/bin/sh\n", "group": b"root:x:0:\n"}
# System users L1's programs switch to, copied from the host's files: tcpdump drops root for
# its own user, and stops with "Couldn't find user 'tcpdump'" where there is none.
SYSTEM_USERS = ("tcpdump",)


@dataclass
class Stage:
    """One step of the L1 run: it ends when the L1 prints `@@lane <event>`."""
    name: str
    event: str
    timeout: float
    seconds: float = field(default=0.0)


def stages(args: argparse.Namespace) -> list[Stage]:
    return [Stage("L1 boot", "init", args.boot_timeout),
            Stage("module load", "modules-loaded", args.stage_timeout),
            Stage("virtio-fs mounts", "shares-mounted", args.stage_timeout),
            Stage("tests", "tests-done", args.tests_timeout)]


# --- running the tests (in L1, or directly on hardware KVM) ------------------

L1_TEST_TIMEOUT = 900    # seconds per test in the lane (PYKVM_TEST_TIMEOUT; 300 on the host)

def run_tests(markers: str, junit: Path, pytest_args: list[str],
              progress: Path | None = None) -> int:
    """pytest on the tests `markers` selects, junit XML to `junit`; pytest's exit status.

    With `progress`, tests already finished there (by an L1 that then hung) are
    left out, and each test's start and outcome are added to it (TestLog)."""
    import pytest        # in-process: one interpreter start less, seconds under TCG
    os.chdir(ROOT)
    # Under TCG a Linux guest that prints its whole boot log takes minutes, longer
    # still when the host is busy: the per-test limit (tests/conftest.py) that
    # catches a hung guest is wider here.  --durations shows where the time went,
    # -rfEs why each test failed or skipped.  L1's / is a tmpfs in its 2 GiB of RAM, and one
    # L1 that runs every test (no hang to reboot it) filled it with tests' tmp_path folders
    # (ENOSPC near the end): a passed test's folder goes as the test ends.
    os.environ.setdefault("PYKVM_TEST_TIMEOUT", str(L1_TEST_TIMEOUT))
    plugins = [TestLog(progress)] if progress else []
    return int(pytest.main(["-m", markers, "-p", "no:cacheprovider", "--durations=15", "-rfEs",
                            "-o", "tmp_path_retention_policy=failed",
                            f"--junitxml={junit}", *pytest_args], plugins=plugins))


class TestLog:
    """A pytest plugin for L1: a line per test as it starts and as it ends, in a
    file on the checkout's share, each synced before the test goes on.

    When L1 hangs, pytest dies with it and writes no junit XML; this log is
    what survives.  The host reads it to name the test that was running, to
    count what finished, and to give a fresh L1 only the tests still to run.
    Lines are "start<TAB>NODEID" and "passed|failed|skipped<TAB>NODEID"; a failed
    setup, call or teardown adds "report<TAB>NODEID<TAB>TEXT", TEXT being pytest's
    traceback as a JSON string (one line), so no L1 takes a failure's reason with it.
    The host adds "boot<TAB>N" before each L1 and "hung<TAB>NODEID" after a hang.
    """
    __test__ = False                    # a plugin, not a test class

    OUTCOMES = ("passed", "failed", "skipped")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.finished = finished_tests(read_test_log(path))
        self._outcome: dict[str, str] = {}

    def pytest_collection_modifyitems(self, config, items) -> None:
        done = [item for item in items if item.nodeid in self.finished]
        if done:
            config.hook.pytest_deselected(items=done)
            items[:] = [item for item in items if item.nodeid not in self.finished]

    def pytest_runtest_logstart(self, nodeid: str, location) -> None:
        self._write("start", nodeid)

    def pytest_runtest_logreport(self, report) -> None:
        before = self._outcome.get(report.nodeid, "passed")
        if report.failed:
            self._write("report", report.nodeid, f"{report.when}: {report.longreprtext}")
        if report.failed or before == "failed":     # an error in setup or teardown too
            self._outcome[report.nodeid] = "failed"
        elif report.skipped:
            self._outcome[report.nodeid] = "skipped"

    def pytest_runtest_logfinish(self, nodeid: str, location) -> None:
        self._write(self._outcome.pop(nodeid, "passed"), nodeid)

    def _write(self, event: str, nodeid: str, text: str | None = None) -> None:
        append_test_log(self.path, event, nodeid, text)


def append_test_log(path: Path, event: str, subject: str, text: str | None = None) -> None:
    """One line of TestLog's file, on disk before this returns (L1 may hang next)."""
    line = f"{event}\t{subject}" + ("" if text is None else f"\t{json.dumps(text)}")
    path.parent.mkdir(parents=True, exist_ok=True)     # a fresh clone has no .cache/hw yet
    with open(path, "a", encoding="utf-8") as log:
        log.write(line + "\n")
        log.flush()
        os.fsync(log.fileno())


def read_test_log(path: Path) -> dict[str, str]:
    """TestLog's file as {nodeid: outcome} for finished tests, plus
    {nodeid: "running"} for one that started and never finished."""
    state: dict[str, str] = {}
    for line in _log_lines(path):
        event, tab, nodeid = line.partition("\t")
        if tab and event in ("start", "retry", *TestLog.OUTCOMES):
            state[nodeid] = "running" if event == "start" else event
    return state


def _log_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []


@dataclass
class FailureReport:
    """A failed test, or the test an L1 hung in, and in which L1 boot (1, 2, ...)."""
    boot: int
    nodeid: str
    text: str


def failure_reports(path: Path) -> list[FailureReport]:
    """Every failure TestLog's file records, over every L1 boot, in order."""
    reports, boot = [], 1
    for line in _log_lines(path):
        event, _, rest = line.partition("\t")
        if event == "boot" and rest.isdigit():
            boot = int(rest)
        elif event == "hung":
            reports.append(FailureReport(boot, rest, "L1 hung while this test ran (the lane's "
                                         "warning above names its serial log and registers)"))
        elif event == "report":
            nodeid, _, text = rest.rpartition("\t")
            try:
                reports.append(FailureReport(boot, nodeid, json.loads(text)))
            except ValueError:
                reports.append(FailureReport(boot, rest, "(report cut short: L1 stopped while writing it)"))
    return reports


def print_failure_reports(path: Path) -> None:
    """The failure reports of this lane run, at its end, whichever L1 they came from."""
    reports = failure_reports(path)
    if not reports:
        return
    print(f"lane: {len(reports)} failure report(s) of this run (from {path}):")
    for report in reports:
        print(f"---- L1 boot {report.boot}: {report.nodeid} ----\n{report.text.rstrip()}")
    sys.stdout.flush()


def finished_tests(state: dict[str, str]) -> dict[str, str]:
    return {nodeid: outcome for nodeid, outcome in state.items() if outcome not in ("running", "retry")}


def log_summary(state: dict[str, str]) -> str:
    """'N passed, F failed, S skipped' over every L1 boot of this run."""
    counts = {outcome: 0 for outcome in TestLog.OUTCOMES}
    for outcome in state.values():
        if outcome != "running":
            counts["failed" if outcome == "retry" else outcome] += 1   # retried, never ran again
    return ", ".join(f"{n} {outcome}" for outcome, n in counts.items())


KUT_LANE_TIMEOUT_S = kvm_unit_tests.SUITE_DEFAULT_TIMEOUT_S   # per test: the suite's own default


def run_kvm_unit_tests(runner_args: list[str]) -> int:
    """`make kvm-unit-tests` with `runner_args`: every test under QEMU and pykvm, the report.

    Each test gets the suite's own 90 s (ARGS may say --timeout otherwise): QEMU and
    pykvm both run on hardware-style KVM here, L1's nested SVM under TCG, far slower."""
    os.chdir(ROOT)
    return subprocess.call([sys.executable, str(ROOT / "tests" / "kvm_unit_tests.py"),
                            "--timeout", str(KUT_LANE_TIMEOUT_S), *runner_args])


def run_instead_of_tests(args: argparse.Namespace, extra_args: list[str]) -> int | None:
    """--bench or --kvm-unit-tests: their status; None when the lane runs the tests."""
    if args.bench:
        return run_bench(args.bench, extra_args)
    if args.kvm_unit_tests:
        return run_kvm_unit_tests(extra_args)
    return None


def run_bench(name: str, script_args: list[str]) -> int:
    """`make bench` for the scripts whose name contains `name`, each given `script_args`:
    pykvm and its peer, side by side."""
    os.chdir(ROOT)
    return subprocess.call([sys.executable, str(ROOT / "tests" / "bench" / "run.py"), name,
                            "--", *script_args])


def alternatives() -> dict[str, str]:
    """The host's /etc/alternatives links (Debian's update-alternatives): /usr/sbin/iptables
    and others point through them, and L1 has the host's /usr but not its /etc."""
    folder = Path("/etc/alternatives")
    try:
        return {f"alternatives/{link.name}": os.readlink(link) for link in folder.iterdir()
                if link.is_symlink()}
    except OSError:
        return {}


def host_entries(path: Path, names: tuple[str, ...]) -> bytes:
    """The lines of an /etc/passwd or /etc/group style file for these names (none if absent)."""
    try:
        lines = path.read_bytes().splitlines(keepends=True)
    except OSError:
        return b""
    return b"".join(line for line in lines if line.split(b":", 1)[0].decode(errors="replace") in names)


def junit_summary(junit: Path) -> str:
    """'N passed, F failed, E errors, S skipped' from pytest's junit XML."""
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError) as e:
        return f"no junit results ({e})"
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return f"no testsuite in {junit}"
    count = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = count["tests"] - count["failures"] - count["errors"] - count["skipped"]
    return (f"{passed} passed, {count['failures']} failed, {count['errors']} errors, "
            f"{count['skipped']} skipped")


# --- the shares: which host trees L1 needs, one virtiofsd each ---------------

def shared_trees(cache: Path) -> list[Path]:
    """What L1 needs from the host: /usr, the checkout, the venv, its base Python, the cache,
    and the built kvm-unit-tests where the host has them (tests/kvm_unit_tests.py: suite_dir)."""
    suite = kvm_unit_tests.suite_dir()
    return outermost([Path("/usr"), ROOT, Path(sys.prefix), Path(sys.base_prefix), cache,
                      *([suite] if suite else [])])


def outermost(paths: list[Path]) -> list[Path]:
    """`paths` resolved, without those inside another one (a share shows its subtrees)."""
    wanted = {p.resolve() for p in paths}
    return sorted(p for p in wanted if not any(q != p and p.is_relative_to(q) for q in wanted))


def find_virtiofsd() -> Path:
    for path in VIRTIOFSD:
        if path.exists():
            return path
    raise LaneError("no virtiofsd: install qemu-system-x86 (Debian 12) or virtiofsd (later)")


def virtiofsd_command(binary: Path, socket: Path, source: Path) -> list[str]:
    """The daemon's command line.  cache=always lets L1 keep what it looked up:
    nothing on the host changes the shared trees during a run, and a Python
    start in L1 then takes about half as long (1.0 s instead of 2.3 s here)."""
    if binary.parent.name == "qemu":                     # the C daemon's -o syntax
        return [str(binary), f"--socket-path={socket}", "-o", f"source={source}",
                "-o", "sandbox=namespace", "-o", "cache=always"]
    return [str(binary), f"--socket-path={socket}", f"--shared-dir={source}",
            "--sandbox=namespace", "--cache=always"]


def start_virtiofsd(stack: ExitStack, binary: Path, socket: Path, source: Path,
                    log: Path) -> None:
    """Start one daemon; return when its vhost-user socket exists."""
    out = stack.enter_context(open(log, "ab"))
    proc = subprocess.Popen(virtiofsd_command(binary, socket, source),
                            stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    stack.callback(_stop, proc)
    deadline = time.monotonic() + 10
    while not socket.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LaneError(f"stage 'virtiofsd' failed for {source}: see {log}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the initramfs -----------------------------------------------------------

def write_initramfs(kernel: lane_kernel.Kernel, trees: list[Path], markers: str, junit: Path,
                    test_log: Path, pytest_args: list[str], path: Path,
                    bench: str | None = None, kut: bool = False) -> list[str]:
    """Write the L1's initramfs to `path`; return the modules it loads, in order.

    `bench` or `kut` (--kvm-unit-tests): L1 runs those instead of the tests.  L1 is
    told where the host found kvm-unit-tests ($KVM_UNIT_TESTS_DIR in L1), shared at the
    same path, so the suite's tests there find it whatever the checkout's place."""
    busybox = static_busybox()
    modules = l1_modules(kernel)
    shares = [(f"share{i}", str(tree), tree == Path("/usr")) for i, tree in enumerate(trees)]
    inside = [sys.executable, str(Path(__file__).resolve()), "--inside", f"--junit={junit}",
              f"--test-log={test_log}", f"--markers={markers}",
              *(["--bench", bench] if bench else []), *(["--kvm-unit-tests"] if kut else []),
              *([f"--kvm-unit-tests-dir={suite}"] if (suite := kvm_unit_tests.suite_dir()) else []),
              "--", *pytest_args]
    init = lane_initramfs.init_script(list(modules), shares, str(ROOT), shlex.join(inside))
    etc = dict(ETC_FILES)
    for name in ("passwd", "group"):
        etc[name] += host_entries(Path("/etc") / name, SYSTEM_USERS)
    for host_file in (LD_SO_CACHE,       # where the dynamic loader finds /usr's libraries
                      PROTOCOLS):        # protocol names, as nft and iptables print them
        if host_file.exists():
            etc[host_file.name] = host_file.read_bytes()
    path.write_bytes(lane_initramfs.build(busybox, modules, init, [str(t) for t in trees], etc,
                                          alternatives()))
    return list(modules)


def static_busybox() -> bytes:
    """busybox-static's binary, after checking that L1 can run it and, later, /usr's programs."""
    for link in lane_initramfs.MERGED_USR:
        if Path("/", link).exists() and not Path("/", link).is_symlink():
            raise LaneError(f"/{link} is not a link into /usr: the lane shares only /usr, "
                            "so it needs a merged-/usr host (Debian 12, Ubuntu 22.04 and later)")
    busybox = BUSYBOX.read_bytes() if BUSYBOX.exists() else b""
    if not lane_initramfs.is_static_elf(busybox):
        raise LaneError(f"{BUSYBOX} is missing or dynamically linked (it must run before /usr "
                        "is mounted): apt-get install busybox-static")
    return busybox


def l1_modules(kernel: lane_kernel.Kernel) -> dict[str, bytes]:
    """L1_MODULES and their dependencies, name -> ELF image, in load order."""
    files = kernel.module_files()
    images: dict[str, bytes] = {}

    def depends_of(name: str) -> list[str]:
        images[name] = lane_kernel.module_bytes(files[name])
        return lane_kernel.modinfo_depends(images[name])

    return {name: images[name] for name in lane_kernel.load_order(L1_MODULES, depends_of)}


# --- QEMU and its serial console ---------------------------------------------

def qemu_command(kernel: lane_kernel.Kernel, initrd: Path, sockets: list[Path],
                 args: argparse.Namespace) -> list[str]:
    command = [QEMU, "-accel", args.accel, "-cpu", args.cpu, "-smp", str(args.smp),
               "-m", f"{args.memory}M", "-nodefaults", "-display", "none", "-no-reboot",
               "-object", f"memory-backend-memfd,id=mem,size={args.memory}M,share=on",
               "-numa", "node,memdev=mem",
               "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd),
               "-append", L1_CMDLINE, "-serial", "stdio",              # COM1: console
               "-chardev", f"file,id=heartbeat,path={args.cache / 'heartbeat'}",
               "-serial", "chardev:heartbeat"]                          # COM2: heartbeat
    for i, socket in enumerate(sockets):
        command += ["-chardev", f"socket,id=vfs{i},path={socket}",
                    "-device", f"vhost-user-fs-pci,chardev=vfs{i},tag=share{i}"]
    return command


def qemu_monitor(socket: Path, command: str, timeout: float = 10.0) -> str:
    """One command on QEMU's human monitor (HMP) socket; its output, or why there is none."""
    import socket as sockets
    prompt = b"(qemu) "
    try:
        with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(socket))
            reply = b""
            for message in (None, command):        # the banner's prompt, then the command's
                if message:
                    conn.sendall(message.encode() + b"\n")
                    reply = b""
                while not reply.endswith(prompt):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    reply += chunk
    except OSError as e:
        return f"(no answer from QEMU's monitor at {socket}: {e})\n"
    output = reply.partition(b"\n")[2]          # after HMP's echo of the command
    return output.removesuffix(prompt).decode(errors="replace").replace("\r", "")


class SerialConsole:
    """QEMU's serial output, line by line, copied to the log as it arrives."""

    def __init__(self, proc: subprocess.Popen, log: Path) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.tail: list[str] = []
        self._log = open(log, "w", encoding="utf-8", errors="replace")
        self._stream = proc.stdout
        self._thread = threading.Thread(target=self._pump, args=(self._stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self._log.write(line + "\n")
            self._log.flush()
            self.lines.put(line)
        self.lines.put(None)        # EOF: QEMU exited

    def next_line(self, deadline: float) -> str | None:
        """The next line, None at EOF; raises TimeoutError at `deadline`."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        try:
            line = self.lines.get(timeout=remaining)
        except queue.Empty:
            raise TimeoutError from None
        if line is not None:
            self.tail = (self.tail + [line])[-25:]
        return line

    def close(self) -> None:
        """Call once QEMU has exited: the reader sees EOF, then the files close."""
        self._thread.join(5)
        self._stream.close()
        self._log.close()


class Heartbeat:
    """L1's second serial port (ttyS1), where /init writes a dot every few seconds.

    The console cannot tell a slow test from a hung L1, and when L1 hangs no
    timer fires in it, so no timeout inside L1 ends the run either; a
    heartbeat that stops does.  (Seen here once in ~15 runs, with -smp 1.)
    """

    def __init__(self, path: Path, limit: float) -> None:
        self.path, self.limit = path, limit
        path.write_bytes(b"")
        self._size, self._seen = 0, time.monotonic()

    def check(self, stage: str) -> None:
        """Raise LaneError when the beat started and then stopped for `limit` seconds."""
        size, now = self.path.stat().st_size, time.monotonic()
        if size != self._size:
            self._size, self._seen = size, now
        elif size and now - self._seen > self.limit:
            raise L1Hung(f"stage '{stage}' failed: L1 stopped responding "
                            f"(no heartbeat on ttyS1 for {self.limit:.0f} s)")


WAKE_WAIT_S = 20                       # how long a hung L1 is watched after each experiment
WAKE_PREFIX = "wake-up test: "         # the lines of a hang's report that say what each did


def lapic_summary(info_lapic: str) -> str:
    """The lines of QEMU's `info lapic` that say whether a timer interrupt can still come:
    the timer's LVT entry and counts, what is in service and requested, the priorities."""
    keep = ("LVTT", "Timer", "ISR", "IRR", "APR")
    lines = [" ".join(words) for words in map(str.split, info_lapic.splitlines())
             if words and words[0] in keep]
    return "; ".join(lines) or info_lapic.strip()[:200]


def beats_again(heartbeat: Heartbeat, wait: float) -> float | None:
    """Seconds until the heartbeat grows, or None if it stays still for `wait` seconds."""
    before, start = heartbeat.path.stat().st_size, time.monotonic()
    while time.monotonic() - start < wait:
        if heartbeat.path.stat().st_size != before:
            return time.monotonic() - start
        time.sleep(0.5)
    return None


def vmcbs_in_ram(pid: int, symbols: Path) -> list[str]:
    """lane_vmcb.scan_qemu, never failing the lane: on a hang this is evidence, not a stage."""
    try:
        return lane_vmcb.scan_qemu(pid, symbols)
    except Exception as e:            # noqa: BLE001 (a report line, whatever went wrong)
        return [f"could not read L1's RAM: {type(e).__name__}: {e}"]


def wake_experiments(monitor: Path, heartbeat: Heartbeat, wait: float = WAKE_WAIT_S) -> list[str]:
    """Experiments on a hung L1, each watched on the heartbeat, until one wakes it; a line each.

    1. An NMI (HMP `nmi`, through each LAPIC's LINT1, which Linux leaves unmasked on CPU 0
       alone).  A halted CPU 0 that can take interrupts takes it.
    2. `stop`, then `cont`: QEMU waits for every vCPU thread to acknowledge the pause.  No
       answer means a thread is not running its loop at all.  If all answer and the NMI did
       not wake L1, CPU 0 refuses interrupts beyond RFLAGS.IF: SVM's global interrupt flag
       (GIF) is clear, or NMIs are blocked as if one were in service.

    No test needs to bring CPU 0 a fresh maskable interrupt: its LAPIC timer is periodic
    (L1_CMDLINE), so QEMU raises CPU 0's interrupt request anew every tick by itself, and
    `info lapic` shows whether the timer's vector waits in IRR all the same.
    """
    reply = qemu_monitor(monitor, "nmi").strip()
    seconds = beats_again(heartbeat, wait)
    if seconds is not None:
        return [f"an NMI woke L1: its heartbeat went on within {seconds:.0f} s"]
    lines = [f"an NMI did not wake L1 (no heartbeat for {wait:.0f} s after it)"
             + (f": {reply}" if reply else "")]
    stopped = qemu_monitor(monitor, "stop").strip()
    if stopped.startswith("(no answer"):
        return lines + ["QEMU's `stop` got no answer in 10 s: a vCPU thread is not running its loop"]
    qemu_monitor(monitor, "cont")
    return lines + ["every vCPU thread acknowledged `stop` and `cont`: they run, and refuse interrupts"]


def follow(console: SerialConsole, stage: Stage, echo: bool, result: dict,
           heartbeat: Heartbeat | None = None) -> None:
    """Read the console until `stage` ends; raise LaneError naming it if it does not."""
    start = time.monotonic()
    deadline = start + stage.timeout
    prefix = lane_initramfs.PROGRESS + " "
    while True:
        if heartbeat:
            heartbeat.check(stage.name)
        try:
            line = console.next_line(min(deadline, time.monotonic() + HEARTBEAT_POLL))
        except TimeoutError:
            if time.monotonic() < deadline:
                continue
            raise LaneError(f"stage '{stage.name}' timed out after {stage.timeout:.0f} s") from None
        if line is None:
            if stage.event == "tests-done":      # L1 was up and running tests: it crashed
                raise L1Died(f"stage '{stage.name}' failed: QEMU exited while L1 ran the tests "
                             "(L1 crashed or reset itself)")
            raise LaneError(f"stage '{stage.name}' failed: QEMU exited")
        if not line.startswith(prefix):
            if echo:
                print(line, flush=True)
            continue
        event, _, detail = line[len(prefix):].partition(" ")
        if event == "failed":
            raise LaneError(f"stage '{stage.name}' failed in L1: {detail}")
        if event.startswith(("kvm=", "tick=")):
            key, _, value = event.partition("=")
            result[key] = value
        if event == stage.event:
            result.update(kv.split("=", 1) for kv in detail.split() if "=" in kv)
            stage.seconds = time.monotonic() - start
            return


def run_l1(args: argparse.Namespace, pytest_args: list[str]) -> int:
    """Stages 1-5 of the module docstring; the tests' exit status."""
    cache = args.cache
    cache.mkdir(parents=True, exist_ok=True)
    serial_log, junit = cache / SERIAL_LOG, cache / "junit.xml"
    junit.unlink(missing_ok=True)
    progress("fetch kernel", f"{lane_kernel.META_PACKAGE} into {cache / 'kernel'}")
    kernel = lane_kernel.fetch_kernel(cache / "kernel")
    trees = shared_trees(cache)
    order = write_initramfs(kernel, trees, args.markers, junit, cache / TEST_LOG, pytest_args,
                            cache / "initramfs.cpio", args.bench, args.kvm_unit_tests)
    progress("initramfs", f"kernel {kernel.version}; modules {' '.join(order)}")
    progress("shares", " ".join(map(str, trees)))
    result: dict[str, str] = {}
    with ExitStack() as stack:
        sockets_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pykvm-lane-")))
        virtiofsd = find_virtiofsd()
        (cache / "virtiofsd.log").write_bytes(b"")      # this run's daemons only
        sockets = [sockets_dir / f"share{i}.sock" for i in range(len(trees))]
        for socket, tree in zip(sockets, trees):
            start_virtiofsd(stack, virtiofsd, socket, tree, cache / "virtiofsd.log")
        monitor = sockets_dir / "monitor.sock"
        proc = subprocess.Popen(qemu_command(kernel, cache / "initramfs.cpio", sockets, args)
                                + ["-monitor", f"unix:{monitor},server=on,wait=off"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        console = SerialConsole(proc, serial_log)
        heartbeat = Heartbeat(cache / "heartbeat", args.heartbeat_timeout)
        stack.callback(console.close)           # runs after _stop: QEMU first
        stack.callback(_stop, proc)
        try:
            for stage in stages(args):
                progress(stage.name, "...")
                follow(console, stage, stage.event == "tests-done", result, heartbeat)
                progress(stage.name, f"done in {stage.seconds:.1f} s")
            proc.wait(args.stage_timeout)
            if not (args.bench or args.kvm_unit_tests) and not junit.exists():
                raise LaneError(f"stage 'tests' failed: pytest in L1 wrote no {junit.name} "
                                f"(status {result.get('status')})")
        except (LaneError, subprocess.TimeoutExpired) as e:
            tail = "\n".join("    " + line for line in console.tail)
            if isinstance(e, L1Hung):
                running = [t for t, outcome in read_test_log(cache / TEST_LOG).items()
                           if outcome == "running"]
                where = f"{e}{' while running ' + running[0] if running else ''}"
                if isinstance(e, L1Died):     # no QEMU left to ask for registers
                    raise L1Died(f"{where}\n  serial log: {serial_log}; its last lines:\n{tail}") from None
                dump = cache / HUNG_REGISTERS
                first = qemu_monitor(monitor, "info registers -a")
                time.sleep(2)                 # a second look: does anything still move?
                second = qemu_monitor(monitor, "info registers -a")
                apics = {cpu: qemu_monitor(monitor, f"info lapic {cpu}") for cpu in range(args.smp)}
                ioapic = qemu_monitor(monitor, "info pic")
                woke = wake_experiments(monitor, heartbeat)
                vmcbs = vmcbs_in_ram(proc.pid, cache / KALLSYMS.format(boot=current_boot(cache / TEST_LOG)))
                dump.write_text(f"{first}\n--- 2 s later ---\n{second}\n"
                                + "".join(f"--- info lapic {cpu} ---\n{text}" for cpu, text in apics.items())
                                + f"--- info pic ---\n{ioapic}\n--- wake-up tests ---\n" + "\n".join(woke)
                                + "\n--- VMCBs in L1's RAM ---\n" + "\n".join(vmcbs) + "\n")
                raise L1Hung(f"{where}"
                             + "".join(f"\n  {WAKE_PREFIX}{line}" for line in woke)
                             + "".join(f"\n  L1 CPU {cpu}'s LAPIC: {lapic_summary(text)}"
                                       for cpu, text in apics.items())
                             + "".join(f"\n  L1 RAM: {line}" for line in vmcbs) +
                             f"\n  L1's vCPU registers, LAPICs and IOAPIC: {dump}"
                             f"\n  serial log: {serial_log}; its last lines:\n{tail}") from None
            raise LaneError(f"{e}\n  serial log: {serial_log}; its last lines:\n{tail}") from None
    status = int(result.get("status", 1))
    instead = (f"bench {args.bench}" if args.bench else
               "kvm-unit-tests" if args.kvm_unit_tests else None)
    print(f"lane: kvm={result.get('kvm', '?')} in L1 (qemu -accel {args.accel} -cpu {args.cpu}, "
          f"kernel {kernel.version}, tick {result.get('tick', '?')}): {instead or junit_summary(junit)}; "
          f"{'status' if instead else 'pytest status'} {status}")
    return status


L1_ATTEMPTS = 5  # a hung L1 (silent heartbeat) or one that died is booted afresh, four times at most
# Fresh L1s for tests that failed, per run.  Two: the two-vCPU Linux snapshot test once had
# its L2 reset by nested TCG in two L1s in a row (docs/contributing-test-lanes.md).
FAILED_TEST_RETRIES = 2


def run_l1_retrying_a_hang(args: argparse.Namespace, pytest_args: list[str],
                           run=None) -> int:
    """run_l1, and after a hang a fresh L1 for the tests that had not finished.

    Nested SVM under TCG sometimes freezes the whole L1, at different tests (L1's
    vCPUs spinning in an int3 that was patched away, before hold_kvm_static_keys;
    later halted with a deliverable interrupt waiting, before L1_CMDLINE's periodic
    tick; docs/contributing-test-lanes.md): that is the emulator failing, not a test, so
    the lane says so, keeps the hung run's serial log and registers, and boots a
    fresh L1 that runs only the tests the hung one did not finish (TestLog),
    the one it hung in included.  An L1 that dies while it runs the tests (QEMU
    exits: L1 crashed or reset itself, as once at the first Linux test) is
    treated the same way.  Any other failure, and a fifth hang, fail the lane.  The status
    is non-zero if a test failed in any of the L1s.
    """
    run = run or run_l1
    test_log = args.cache / TEST_LOG
    test_log.unlink(missing_ok=True)
    for pattern in (KALLSYMS.format(boot="*"), "serial.failed-*.log"):   # an earlier run's L1s
        for old in args.cache.glob(pattern):
            old.unlink()
    try:
        return _boot_l1s_until_one_finishes(args, pytest_args, run, test_log)
    finally:
        print_failure_reports(test_log)


def _boot_l1s_until_one_finishes(args: argparse.Namespace, pytest_args: list[str], run,
                                 test_log: Path) -> int:
    """Up to L1_ATTEMPTS boots of `run`, each marked in the test log; the lane's status."""
    retries = 0
    for attempt in range(1, L1_ATTEMPTS + 1):
        append_test_log(test_log, "boot", str(attempt))
        try:
            status = run(args, pytest_args)
            failed = [t for t, outcome in read_test_log(test_log).items() if outcome == "failed"]
            if not failed or retries == FAILED_TEST_RETRIES or attempt == L1_ATTEMPTS:
                break
            # Up to FAILED_TEST_RETRIES times per lane run, a fresh L1 for the tests that
            # failed: nested SVM under TCG has also reset L2 guests for no reason of theirs (a
            # triple fault with rip outside RAM, a test later passing in a fresh L1).  A test
            # that fails every time fails the lane; every failure's report is printed.
            retries += 1
            for nodeid in failed:
                append_test_log(test_log, "retry", nodeid)
            # Its serial log ends with L1's dmesg, where KVM reports what it saw of the guest.
            kept = args.cache / f"serial.failed-{attempt}.log"
            if (args.cache / SERIAL_LOG).exists():
                (args.cache / SERIAL_LOG).replace(kept)
            print(f"lane: warning: {len(failed)} test(s) failed in L1 boot {attempt}: "
                  f"{', '.join(failed)}; its log is {kept}; running them once more in a fresh L1 "
                  f"(retry {retries} of {FAILED_TEST_RETRIES}, attempt {attempt + 1} of {L1_ATTEMPTS})",
                  file=sys.stderr, flush=True)
        except L1Hung as e:
            for nodeid, outcome in read_test_log(test_log).items():
                if outcome == "running":
                    append_test_log(test_log, "hung", nodeid)
            if attempt == L1_ATTEMPTS:
                raise
            for name, kept_name in ((SERIAL_LOG, f"serial.hung-{attempt}.log"),
                                    (HUNG_REGISTERS, f"registers.hung-{attempt}.txt"),
                                    ("junit.xml", f"junit.hung-{attempt}.xml")):
                if (args.cache / name).exists():
                    (args.cache / name).replace(args.cache / kept_name)
            done = finished_tests(read_test_log(test_log))
            first, *rest = str(e).splitlines()
            evidence = [line.strip() for line in rest
                        if line.startswith(("  " + WAKE_PREFIX, "  L1 CPU", "  L1 RAM"))]
            print(f"lane: warning: {first}\n"
                  + "".join(f"lane: {line}\n" for line in evidence) +
                  f"lane: the hung L1's log is {args.cache / f'serial.hung-{attempt}.log'}; "
                  f"booting a fresh L1 for the tests after the {len(done)} that finished "
                  f"(attempt {attempt + 1} of {L1_ATTEMPTS})", file=sys.stderr, flush=True)
    if attempt == 1:
        return status
    state = read_test_log(test_log)
    if "failed" in state.values() or "retry" in state.values():   # a retried test that never ran again
        status = status or 1
    elif status == 5 and finished_tests(state):   # "no tests": all had finished before
        status = 0
    print(f"lane: over {attempt} L1 boots: {log_summary(state)}; status {status}")
    return status


def run_direct(args: argparse.Namespace, pytest_args: list[str]) -> int:
    """Hardware KVM: no L1; the kernel package is still fetched for the `linux` tests."""
    args.cache.mkdir(parents=True, exist_ok=True)
    junit = args.cache / "junit.xml"
    try:
        lane_kernel.fetch_kernel(args.cache / "kernel")
    except (LaneError, OSError) as e:
        progress("fetch kernel", f"none ({e}); tests that boot it will skip")
    if (status := run_instead_of_tests(args, pytest_args)) is not None:
        return status
    status = run_tests(args.markers, junit, pytest_args)
    print(f"lane: kvm={kvm_flavour()} directly on this host: {junit_summary(junit)}; "
          f"pytest status {status}")
    return status


def stale_linux_guest() -> str | None:
    """Which source of guests/linux is newer than the built guest in .cache/linux, if any.
    lane.py runs the tests on the guest it finds; `make test-hw` builds it first, a direct
    run of lane.py does not."""
    built = ROOT / ".cache" / "linux" / "initramfs.cpio"
    if not built.exists():
        return None                                  # the linux tests skip, saying why
    sources = [p for p in (ROOT / "guests" / "linux").iterdir() if p.is_file()]
    newer = [p.name for p in sources if p.stat().st_mtime > built.stat().st_mtime]
    return ", ".join(sorted(newer)) or None


def progress(stage: str, message: str) -> None:
    print(f"lane: [{time.strftime('%H:%M:%S')}] {stage}: {message}", flush=True)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" in argv:
        cut = argv.index("--")
        argv, pytest_args = argv[:cut], argv[cut + 1:]
    else:
        pytest_args = []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force-l1", action="store_true",
                        help="boot the L1 even where /dev/kvm is hardware KVM")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help="kernel, initramfs, serial log and junit.xml (default: .cache/hw)")
    parser.add_argument("--markers", default=LANE_MARKERS,
                        help=f"pytest -m expression of the tests to run (default: {LANE_MARKERS})")
    parser.add_argument("--cpu", default=L1_CPU, help=f"QEMU CPU model (default: {L1_CPU})")
    parser.add_argument("--smp", type=int, default=2, help="L1 vCPUs (default: 2)")
    parser.add_argument("--accel", default="tcg",
                        help="QEMU -accel for L1 (default: tcg, a host thread per vCPU; "
                             "tcg,thread=single runs them all in one)")
    parser.add_argument("--memory", type=int, metavar="MIB",
                        help=f"L1's RAM in MiB (default: {L1_MEM_MIB}, {KUT_L1_MEM_MIB} with "
                             "--kvm-unit-tests; bench_snapshot's twenty Linux guests at once want 6144)")
    parser.add_argument("--boot-timeout", type=float, default=180)
    parser.add_argument("--stage-timeout", type=float, default=120,
                        help="module load, mounts, power off (default: 120 s each)")
    parser.add_argument("--tests-timeout", type=float, default=3600,
                        help="the whole test run in one L1 (default: 3600 s; a hang is caught "
                             "sooner by the heartbeat)")
    parser.add_argument("--heartbeat-timeout", type=float, default=60,
                        help="fail when L1 stops beating on ttyS1 this long (default: 60 s)")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bench", metavar="NAME",
                        help="run the benchmarks tests/bench/run.py NAME selects instead of the "
                             "tests, with the words after -- as their arguments (e.g. "
                             "linux_boot: pykvm vs QEMU, both inside the same L1)")
    parser.add_argument("--kvm-unit-tests", action="store_true",
                        help="run the whole kvm-unit-tests suite (tests/kvm_unit_tests.py, with "
                             "the words after -- as its arguments) instead of the tests; "
                             "under L1's QEMU and pykvm, side by side")
    parser.add_argument("--kvm-unit-tests-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--junit", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--test-log", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.cache = args.cache.resolve()
    if args.memory is None:
        args.memory = KUT_L1_MEM_MIB if args.kvm_unit_tests else L1_MEM_MIB
    return args, pytest_args


KVM_MODULES = ("kvm", "kvm_amd", "kvm_intel")
KALLSYMS = "l1-kallsyms-{boot}.txt"     # beside tests.log: L1 boot N's KVM symbols


def current_boot(test_log: Path) -> str:
    """The number of the L1 boot TestLog's last "boot" line names ("1" before any)."""
    boots = [line.split("\t", 1)[1].strip() for line in _log_lines(test_log)
             if line.startswith("boot\t")]
    return boots[-1] if boots else "1"


def save_kvm_symbols(test_log: Path, kallsyms: Path = Path("/proc/kallsyms")) -> Path:
    """Copy the KVM modules' lines of L1's /proc/kallsyms beside `test_log`, named for the
    L1 boot that TestLog's last "boot" line numbers.

    KASLR puts the modules at new addresses every boot, so a RIP a failure reports in
    module space (0xffffffffc...: an L1 oops, or an L2 vCPU found running at an L1
    address) can be named only with the symbols of the L1 that printed it.  (Root reads
    real addresses there.)"""
    target = test_log.with_name(KALLSYMS.format(boot=current_boot(test_log)))
    tags = tuple(f"\t[{name}]" for name in KVM_MODULES)
    with open(kallsyms, encoding="ascii", errors="replace") as source:
        lines = [line for line in source if line.rstrip("\n").endswith(tags)]
    target.write_text("".join(lines))
    return target


def hold_kvm_static_keys() -> ExitStack:
    """VMs that L1's KVM keeps for the whole run, so no test's VM flips a static key in L1.

    Why: L1 hung with both vCPUs spinning, interrupts off, in asm_exc_int3 /
    exc_int3 at __schedule+0x2ab (RIPs from the lane's `info registers -a`,
    named with the -dbg package's System.map).  That address is a jump label:
    the static branch in front of fire_sched_out_preempt_notifiers, keyed by
    preempt_notifier_key, which KVM increments when a VM is created and
    decrements when it is destroyed.  So each test that creates the only VM
    there is, and each that destroys it, makes L1's kernel patch __schedule
    through text_poke_bp: int3 over the instruction, an IPI to every CPU, the
    new bytes, the int3 removed.  Under QEMU's multi-threaded TCG the other
    vCPU can go on running a translation made before the patch and keep
    taking an int3 that is no longer in memory.  With one VM that lives
    through the run the key's count never returns to 0 and the branch is
    patched once, before the tests.  The same goes for the keys KVM counts
    per vCPU: a vCPU without an in-kernel local APIC (kvm_has_noapic_vcpu),
    and one whose APIC the guest never software-enables (apic_sw_disabled).
    """
    from pykvm.vm.kvm import Kvm

    held = ExitStack()
    kvm = held.enter_context(Kvm())
    without_apic = held.enter_context(kvm.create_vm())
    held.enter_context(without_apic.create_vcpu(0))
    with_apic = held.enter_context(kvm.create_vm())
    with_apic.create_irqchip()
    held.enter_context(with_apic.create_vcpu(0))
    return held


def exit_on_sigterm() -> None:
    """SIGTERM (a CI job's timeout, `kill`) ends the lane as an exception does, so its
    `with` blocks stop L1's QEMU and the virtiofsd daemons instead of leaving them running."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None) -> int:
    args, pytest_args = parse_args(sys.argv[1:] if argv is None else argv)
    exit_on_sigterm()
    if args.inside:                                  # we are /init's command in L1
        print(f"{lane_initramfs.PROGRESS} kvm={kvm_flavour()}", flush=True)
        os.environ[NESTED_TCG_ENV] = "1"             # tests that TCG cannot take ask (tiers.py)
        if args.kvm_unit_tests_dir:                  # shared at the host's path
            os.environ[kvm_unit_tests.ENV_DIR] = str(args.kvm_unit_tests_dir)
        if args.test_log:
            save_kvm_symbols(args.test_log)
        with hold_kvm_static_keys():
            if (status := run_instead_of_tests(args, pytest_args)) is not None:
                return status
            return run_tests(args.markers, args.junit, pytest_args, args.test_log)
    if newer := stale_linux_guest():
        progress("warning", f"guests/linux/{{{newer}}} changed after .cache/linux was built: "
                 "run `make linux-guest` first (or `make test-hw`), or its tests see the old guest")
    try:
        if args.kvm_unit_tests and kvm_unit_tests.suite_dir() is None:
            print(f"lane: kvm-unit-tests: skipped: no built suite (set {kvm_unit_tests.ENV_DIR}, "
                  "or put it at shared/kvm-unit-tests beside the checkout)")
            return 0
        if kvm_flavour() in ("svm", "vmx") and not args.force_l1:
            return run_direct(args, pytest_args)
        if os.geteuid() != 0:
            raise LaneError("the L1 lane needs root (virtiofsd mounts namespaces)")
        if shutil.which(QEMU) is None:
            raise LaneError(f"{QEMU} not found: apt-get install qemu-system-x86")
        return run_l1_retrying_a_hang(args, pytest_args)
    except LaneError as e:
        print(f"lane: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
