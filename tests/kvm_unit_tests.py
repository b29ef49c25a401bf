"""Run kvm-unit-tests' x86 suite under QEMU and pykvm, side by side: `make kvm-unit-tests`.

kvm-unit-tests (gitlab.com/kvm-unit-tests/kvm-unit-tests) is the KVM
developers' own test suite: each test is a Multiboot image that prints on
COM1, reads the machine's facts from fw_cfg, takes arguments from its command
line and ends by writing its status to isa-debug-exit (port 0xf4), so the
VMM exits with (status << 1) | 1: 1 PASS, 3 FAIL, 77 SKIP.

The built tests are test data outside this repository: found at
$KVM_UNIT_TESTS_DIR, or at shared/kvm-unit-tests beside the checkout (or
beside one of its parent folders).  Each configuration of the suite's
`x86/unittests.cfg` is

  * translated for pykvm's machine: `-m` becomes --mem, `test_args` the
    command line, `-machine pit=off` --no-pit, `-cpu max`/`-cpu host` is what pykvm gives anyway (the
    CPUID KVM supports); or
  * skipped, with the reason: more than one CPU (unless `pykvm boot` has a
    --cpus or --smp option: then the count is passed on), another
    CPU model or CPU flags, QEMU-only devices and machine options, a host
    `check` that fails, i386 tests, the `nodefault` group;

then booted under QEMU (as the suite's own x86/run does it, with the same
devices pykvm has: pc-testdev and isa-debug-exit) and under
`pykvm boot --kernel`, one after the other, each with a time limit: --timeout
for a test without a `timeout` key, and for one with it that key scaled the
same way (the suite's default, when a test names none, is 90 s: a test with
`timeout = 180` gets twice --timeout).

    python tests/kvm_unit_tests.py [--timeout S] [--only NAME,...] [--vmm qemu,pykvm]

prints one line per configuration (QEMU's result, pykvm's, the reason for a
skip) and a summary; the exit status is 1 if any test QEMU passes does not
pass under pykvm.
"""
from __future__ import annotations

import argparse
import configparser
import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tiers import nested_under_tcg

__all__ = ["suite_dir", "Config", "Plan", "read_configs", "plan", "run", "result_of", "main",
           "time_limit", "SUBSET", "DEFAULT_TIMEOUT_S", "SUITE_DEFAULT_TIMEOUT_S", "MEM_MIB"]

ROOT = Path(__file__).resolve().parents[1]
ENV_DIR = "KVM_UNIT_TESTS_DIR"
QEMU = "qemu-system-x86_64"
MEM_MIB = 256                  # as the reference run in the suite's README (QEMU's own default is 128)
DEFAULT_TIMEOUT_S = 30
SUITE_DEFAULT_TIMEOUT_S = 90   # scripts/runtime.bash: a test without `timeout` gets 90 s
OK_CPU_MODELS = {"max", "host"}          # what pykvm's CPUID is: everything KVM supports
OK_CPU_FLAGS = {"host-phys-bits", "migratable=no"}
NO_OP_PARAMS = {"-enable-kvm"}           # pykvm always uses KVM
MACHINE_OPTIONS = {"pit=off": "--no-pit"}  # QEMU's -machine VALUE -> pykvm boot's option
# A fast subset for `make test` (tests/kvm/test_kvm_unit_tests.py): each ends in seconds
# under both VMMs on PVM-backed KVM.  Not realmode: its checks pass in seconds, but its
# timing loops run in KVM's instruction emulator here and take 10 s to over 30 s with load.
SUBSET = ("setjmp", "idt_test", "s3", "vmexit_cpuid")

PYKVM_ERROR = "pykvm: error:"
KILL_WAIT_S = 30               # for a killed VMM to go; one stuck in the kernel is left behind
REASON_CHARS = 90              # how much of a VMM's error line the report shows
# isa-debug-exit statuses: (code << 1) | 1
STATUS = {1: "PASS", 3: "FAIL", 77: "SKIP"}
# Tests that abort the hardware lane's outer QEMU (7.2, whose TCG emulates SVM for L1), under
# either VMM in L1: no result of theirs, and the crash would end every test after them.
ABORTS_NESTED_TCG = {
    "emulator": "aborts the lane's outer QEMU 7.2 (TCG) at its mov to %cr8, under either VMM: "
                "tcg_handle_interrupt asserts the BQL is held",
}


def suite_dir() -> Path | None:
    """Where the built suite is ($KVM_UNIT_TESTS_DIR, else shared/kvm-unit-tests up the tree)."""
    if os.environ.get(ENV_DIR):
        path = Path(os.environ[ENV_DIR])
        return path if (path / "x86" / "unittests.cfg").exists() else None
    for parent in ROOT.parents:
        candidate = parent / "shared" / "kvm-unit-tests"
        if (candidate / "x86" / "unittests.cfg").exists():
            return candidate
    return None


@dataclass
class Config:
    """One [section] of unittests.cfg."""

    name: str
    file: str
    smp: int = 1
    qemu_params: str = ""
    test_args: str = ""
    arch: str = ""
    groups: tuple[str, ...] = ()
    accel: str = ""
    check: str = ""
    timeout_s: float | None = None     # the `timeout` key: upstream's limit for this test


@dataclass
class Plan:
    """How to boot one configuration, or why not (`skip`)."""

    config: Config
    kernel: Path
    skip: str = ""
    mem_mib: int = MEM_MIB
    cpus: int = 1
    cpus_option: str | None = None     # pykvm's option for a CPU count, when it has one
    append: str = ""
    qemu_extra: list[str] = field(default_factory=list)
    pykvm_extra: list[str] = field(default_factory=list)


def read_configs(cfg: Path) -> list[Config]:
    """unittests.cfg: INI sections, `key = value`; quotes around values are the shell's."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read(cfg)
    configs = []
    for name in parser.sections():
        s = parser[name]
        configs.append(Config(name, s.get("file", ""), int(s.get("smp", "1") or 1),
                              s.get("qemu_params", s.get("extra_params", "")),
                              _unquote(s.get("test_args", "")), s.get("arch", ""),
                              tuple(s.get("groups", "").split()), s.get("accel", ""),
                              s.get("check", ""), _seconds(s.get("timeout", ""))))
    return configs


def _seconds(value: str) -> float | None:
    """A `timeout` value as timeout(1) reads it: a number, optionally s, m or h; None if absent."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", value.strip())
    if not match:
        return None
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def time_limit(p: Plan, timeout_s: float) -> float:
    """Seconds one VMM gets for `p`: `timeout_s`, or the test's own timeout scaled alike."""
    if p.config.timeout_s is None:
        return timeout_s
    return timeout_s * p.config.timeout_s / SUITE_DEFAULT_TIMEOUT_S


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return value.replace("`date +%s`", str(int(time.time())))   # kvmclock_test's one shell use


@functools.cache
def pykvm_cpus_option() -> str | None:
    """`pykvm boot`'s option for a CPU count (--cpus or --smp), or None while it has one vCPU."""
    usage = subprocess.run([sys.executable, "-m", "pykvm", "boot", "--help"], capture_output=True,
                           text=True, timeout=60).stdout
    return next((option for option in ("--cpus", "--smp") if re.search(rf"{option}\b", usage)), None)


def plan(config: Config, x86_dir: Path, cpus_option: str | None = None) -> Plan:
    """Translate one configuration for both VMMs, or give the reason it is skipped."""
    p = Plan(config, x86_dir / config.file, cpus=config.smp, cpus_option=cpus_option,
             append=config.test_args)
    p.skip = (_skip_reason(config, p.kernel, cpus_option) or _translate_params(p))
    return p


def _skip_reason(config: Config, kernel: Path, cpus_option: str | None) -> str:
    if config.arch == "i386":
        return "an i386 test; this suite is built for x86_64"
    if not kernel.exists():
        return f"{config.file} is not built"
    if "nodefault" in config.groups:
        return "group nodefault: the suite runs it only when asked"
    if config.accel == "tcg":
        return "needs QEMU's TCG"
    if config.smp > 1 and cpus_option is None:
        return f"needs {config.smp} CPUs; pykvm has one vCPU"
    if config.name in ABORTS_NESTED_TCG and nested_under_tcg():
        return ABORTS_NESTED_TCG[config.name]
    return _failed_check(config.check)


def _failed_check(check: str) -> str:
    """`check = /sys/...=Y ...`: every file must hold its value (the suite skips otherwise)."""
    for item in check.split():
        path, _, wanted = item.partition("=")
        try:
            found = Path(path).read_text().strip()
        except OSError:
            found = "absent"
        if found != wanted:
            return f"host check {path}={wanted} fails (it is {found})"
    return ""


def _translate_params(p: Plan) -> str:
    """QEMU options to pykvm's; a reason to skip for the ones pykvm's machine cannot honour."""
    args = shlex.split(p.config.qemu_params)
    while args:
        option = args.pop(0)
        if option in NO_OP_PARAMS:
            continue
        if not args:
            return f"QEMU option {option} without a value"
        value = args.pop(0)
        if option == "-m":
            p.mem_mib = _mem_mib(value)
            continue
        if option == "-cpu":
            model, *flags = value.split(",")
            unsupported = [f for f in flags if f not in OK_CPU_FLAGS]
            if model not in OK_CPU_MODELS or unsupported:
                return (f"CPU model -cpu {value}: pykvm gives the CPUID KVM supports "
                        "(as -cpu host), no models or flags")
            p.qemu_extra += [option, value]
            continue
        if option == "-machine" and value in MACHINE_OPTIONS:
            p.qemu_extra += [option, value]            # QEMU merges it with the runner's -machine
            p.pykvm_extra.append(MACHINE_OPTIONS[value])
            continue
        return f"QEMU-only option {option} {value}"
    return ""


def _mem_mib(value: str) -> int:
    match = re.fullmatch(r"(\d+)([mMgG]?)", value)
    if not match:
        raise ValueError(f"unknown -m value {value!r}")
    return int(match[1]) * (1024 if match[2] in ("g", "G") else 1)


def qemu_command(p: Plan) -> list[str]:
    """As the suite's x86/run: no defaults, pc-testdev + isa-debug-exit, serial on stdio."""
    return [QEMU, "--no-reboot", "-nodefaults", "-global", "kvm-pit.lost_tick_policy=discard",
            "-device", "pc-testdev", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x4",
            "-display", "none", "-serial", "stdio", "-machine", "pc,accel=kvm",
            "-smp", str(p.cpus), "-m", str(p.mem_mib), *p.qemu_extra,
            "-kernel", str(p.kernel), "-append", p.append]


def pykvm_command(p: Plan) -> list[str]:
    cpus = [p.cpus_option, str(p.cpus)] if p.cpus > 1 else []
    return [sys.executable, "-m", "pykvm", "boot", "--kernel", str(p.kernel), "--mem", f"{p.mem_mib}M",
            *cpus, *p.pykvm_extra, "--device", "pc-testdev", "--cmdline", p.append]


@dataclass
class Outcome:
    result: str          # PASS, FAIL, SKIP, TIMEOUT, ERROR n
    seconds: float
    log: str
    why: str = ""        # for an ERROR: the VMM's own first error line


def first_error(stderr: str) -> str:
    """The VMM's first line saying what went wrong, shortened for the report."""
    for line in stderr.splitlines():
        if "error" in line.lower():
            return line.replace(PYKVM_ERROR, "pykvm:").strip()[:REASON_CHARS]
    return ""


def result_of(status: int | None, stderr: str = "") -> str:
    """The test's result from the VMM's exit status.

    pykvm's own errors (a VM it had to stop) also end with status 1, the
    status of a passing test: its "pykvm: error:" line on stderr tells them apart.
    """
    if status is None:
        return "TIMEOUT"
    if PYKVM_ERROR in stderr:
        return "ERROR"
    return STATUS.get(status, f"ERROR {status}")


def run(command: list[str], timeout_s: float, log_path: Path | None = None) -> Outcome:
    """Boot one test; its console and result.  A test past its time is killed (TIMEOUT).

    The console goes to `log_path` (after the command line) as the test prints it, so a
    test that takes its VMM, or the whole machine, down with it still leaves its last
    lines there; the VMM's stderr follows when it ends."""
    start = time.monotonic()
    with open(log_path, "w+b") if log_path else tempfile.TemporaryFile() as console:
        console.write(shlex.join(command).encode() + b"\n")
        console.flush()
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=console,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout_s)
            status = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            try:
                _, err = proc.communicate(timeout=KILL_WAIT_S)
            except subprocess.TimeoutExpired:   # its KVM_RUN never returns, or a child escaped
                err = (f"\nkvm_unit_tests: {command[0]} still running {KILL_WAIT_S} s after SIGKILL "
                       f"(pid {proc.pid}); left behind\n").encode()
            status = None
        console.write(err)
        console.seek(0)
        log = console.read().decode("utf-8", "replace")
    stderr = err.decode("utf-8", "replace")
    result = result_of(status, stderr)
    return Outcome(result, time.monotonic() - start, log,
                   first_error(stderr) if result.startswith("ERROR") else "")


def run_plan(p: Plan, vmms: list[str], timeout_s: float, logs: Path | None) -> dict[str, Outcome]:
    outcomes = {}
    for vmm in vmms:
        if vmm == "qemu" and shutil.which(QEMU) is None:
            outcomes[vmm] = Outcome(f"SKIP ({QEMU} not installed)", 0, "")
            continue
        command = qemu_command(p) if vmm == "qemu" else pykvm_command(p)
        outcomes[vmm] = run(command, time_limit(p, timeout_s),
                            logs / f"{p.config.name}.{vmm}.log" if logs else None)
    return outcomes


def report_line(p: Plan, outcomes: dict[str, Outcome]) -> str:
    if p.skip:
        return f"{p.config.name:<28} {'SKIP':<9} {'SKIP':<9} {p.skip}"
    both = (outcomes.get("qemu"), outcomes.get("pykvm"))
    cells = ["-" if o is None else f"{o.result} {o.seconds:.0f}s" if o.result in ("PASS", "FAIL")
             else o.result for o in both]
    why = "; ".join(o.why for o in both if o is not None and o.why)
    return (f"{p.config.name:<28} " + " ".join(f"{c:<9}" for c in cells) + f" {why}").rstrip()


def summary(results: list[tuple[Plan, dict[str, Outcome]]]) -> tuple[str, list[str]]:
    """Counts per VMM, and the tests QEMU passes that pykvm does not."""
    ran = [(p, o) for p, o in results if not p.skip]
    count = {vmm: sum(o[vmm].result == "PASS" for _, o in ran if vmm in o) for vmm in ("qemu", "pykvm")}
    regressions = [p.config.name for p, o in ran
                   if "qemu" in o and "pykvm" in o and o["qemu"].result == "PASS"
                   and o["pykvm"].result != "PASS"]
    text = (f"{len(results)} configurations: {len(ran)} run, {len(results) - len(ran)} skipped; "
            f"PASS under QEMU {count['qemu']}, under pykvm {count['pykvm']}; "
            f"QEMU passes and pykvm does not: {', '.join(regressions) or 'none'}")
    return text, regressions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds per test and VMM (default %(default)s); a test with its "
                             f"own timeout gets it times this / {SUITE_DEFAULT_TIMEOUT_S}")
    parser.add_argument("--only", default="", help="comma-separated configuration names")
    parser.add_argument("--vmm", default="qemu,pykvm", help="which VMMs, comma-separated")
    parser.add_argument("--logs", type=Path, default=ROOT / ".cache" / "kvm-unit-tests",
                        help="folder for each run's console (default %(default)s)")
    args = parser.parse_args(argv)
    suite = suite_dir()
    if suite is None:
        print(f"kvm-unit-tests: skipped: no built suite (set {ENV_DIR}, or put it at "
              "shared/kvm-unit-tests beside the checkout)")
        return 0
    args.logs.mkdir(parents=True, exist_ok=True)
    only = set(filter(None, args.only.split(",")))
    configs = [c for c in read_configs(suite / "x86" / "unittests.cfg") if not only or c.name in only]
    print(f"kvm-unit-tests from {suite}; {args.timeout:.0f} s per test (its own timeout x "
          f"{args.timeout / SUITE_DEFAULT_TIMEOUT_S:.2f} if it has one); logs in {args.logs}")
    print(f"{'test':<28} {'QEMU':<9} {'pykvm':<9} note")
    results = []
    for config in configs:
        p = plan(config, suite / "x86", pykvm_cpus_option())
        outcomes = {} if p.skip else run_plan(p, args.vmm.split(","), args.timeout, args.logs)
        results.append((p, outcomes))
        print(report_line(p, outcomes), flush=True)
    text, regressions = summary(results)
    print(text)
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
