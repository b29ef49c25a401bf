"""The tiny teaching kernel (guests/tiny), booted on pykvm and on QEMU.

Every test runs on both VMMs (parameter `vmm`): the same ELF, the same
kernel command line ("run=cmd1;cmd2;..."), so the guest needs no terminal.
Two scripted sessions carry most of the shell commands; each is booted once
per VMM and shared by the tests that look at its parts.  The QEMU side is
`slow` (its firmware takes seconds under PVM).
"""
from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tinyvm import MEM_MIB, Run, boot, build_tiny, output_of, vmm_problem

pytestmark = pytest.mark.kvm

VMMS = [pytest.param("pykvm", id="pykvm"), pytest.param("qemu", id="qemu", marks=pytest.mark.slow)]

SHELL_SESSION = ("help;info;uptime;echo hello   world;mem;run hello;mem;run;run bogus;frobnicate;"
                 "run sleeper;uptime;poweroff")
PROCESS_SESSION = "run ping pong;fault;echo still alive;run sleeper &;ps;poweroff"
COMMANDS = ["help", "info", "uptime", "mem", "echo", "ps", "cpus", "run", "fault", "disk", "dread",
            "dwrite", "dbench", "net", "ping", "poweroff", "reboot", "exit"]
DUMP_REGISTERS = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10",
                  "r11", "r12", "r13", "r14", "r15", "rip", "rfl"]


@functools.cache
def run_session(vmm: str, cmdline: str, stdin: bytes = b"") -> Run:
    """Boot once per (vmm, script); tests share the result."""
    problem = vmm_problem(vmm)
    if problem:
        pytest.skip(problem)
    build_tiny()
    return boot(vmm, cmdline, stdin)


@pytest.fixture(params=VMMS)
def vmm(request) -> str:
    return request.param


@pytest.fixture
def shell(vmm) -> Run:
    return run_session(vmm, "run=" + SHELL_SESSION)


@pytest.fixture
def procs(vmm) -> Run:
    return run_session(vmm, "run=" + PROCESS_SESSION)


def host_cpu_vendor() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("vendor_id"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no vendor_id in /proc/cpuinfo")


def ticks(line: str) -> int:
    match = re.fullmatch(r"up \d+\.\d\d s \((\d+) ticks at 100 Hz\)", line)
    assert match, f"not an uptime line: {line!r}"
    return int(match.group(1))


# --- the shell session ---------------------------------------------------------------

def test_boots_and_powers_off_with_status_0(shell):
    assert shell.lines[0] == "tiny 1.0: booting", shell.console
    banner = re.fullmatch(r"tiny 1\.0: (\d+) MiB RAM, 1 CPU, timer 100 Hz, 8 user programs\. Type 'help'\.",
                          shell.lines[1])
    assert banner and MEM_MIB - 2 <= int(banner.group(1)) <= MEM_MIB, shell.lines[1]
    assert shell.lines[-1] == "tiny$ poweroff", shell.console[-300:]
    assert shell.status == 0, f"exit status {shell.status}\n{shell.console}"


def test_help_lists_every_command(shell):
    listed = [line.split()[0] for line in output_of(shell, "help")]
    assert listed == COMMANDS


def test_info(shell):
    info = dict(line.split(":", 1) for line in output_of(shell, "info"))
    info = {key: value.strip() for key, value in info.items()}
    assert info["kernel"] == "tiny 1.0 (x86-64)"
    assert info["boot"] == "PVH (hvm_start_info version 1)"
    assert info["cpu"] == host_cpu_vendor()
    assert info["hypervisor"] == "KVMKVMKVM"      # CPUID 0x40000000 under KVM
    mib = int(info["memory"].split()[0])
    assert MEM_MIB - 2 <= mib <= MEM_MIB, info["memory"]
    assert info["cmdline"] == "run=" + SHELL_SESSION


def test_echo_joins_words(shell):
    assert output_of(shell, "echo hello   world") == ["hello world"]


def test_mem_shows_the_memory_map_and_no_leak(shell):
    first = output_of(shell, "mem")
    ram = [tuple(int(x, 16) for x in line.split()[0].split("-")) for line in first if line.endswith(" ram")]
    assert any(lo <= 0x100000 < hi for lo, hi in ram), f"the kernel (1 MiB) is not in RAM: {first}"
    pages = [line for line in first if line.startswith("pages:")]
    assert len(pages) == 1, first
    total, used, free = map(int, re.findall(r"(\d+) (?:total|used|free)", pages[0]))
    assert total == used + free and total > (MEM_MIB - 8) * 256, pages[0]
    # `run hello` between the two `mem`s allocated and freed a whole process.
    lines = shell.lines
    second_start = [i for i, line in enumerate(lines) if line == "tiny$ mem"][1]
    second = lines[second_start + 1:second_start + 1 + len(first)]
    assert second == first, "pages leaked by `run hello`"


def test_run_hello_in_user_mode(shell):
    assert output_of(shell, "run hello") == ["hello from user mode, pid 1", "[1 hello] exit 0"]


def test_run_lists_programs_and_rejects_unknown(shell):
    names = [line.split()[0] for line in output_of(shell, "run")]
    assert names == ["hello", "ping", "pong", "sleeper", "fault", "busy", "counter", "flood"]
    assert output_of(shell, "run bogus") == ["run: no program 'bogus' (try 'run' for a list)"]
    assert output_of(shell, "frobnicate") == ["frobnicate: unknown command (try 'help')"]


def test_sleeper_uses_sleep_and_yield_and_returns_7(shell):
    assert output_of(shell, "run sleeper") == [
        "sleeper: nap 1", "sleeper: nap 2", "sleeper: nap 3", "[2 sleeper] exit 7"]


def test_timer_advances(shell):
    """Coarse: the sleeper slept 3 x 100 ms between the two uptimes, i.e. >= 30 ticks."""
    before, after = [ticks(line) for line in shell.lines if line.startswith("up ")]
    assert after - before >= 30, (before, after)


# --- processes: preemption, faults, ps -------------------------------------------------

def test_ping_and_pong_interleave(procs):
    out = output_of(procs, "run ping pong")
    pings = [i for i, line in enumerate(out) if line.startswith("ping ")]
    pongs = [i for i, line in enumerate(out) if line.startswith("pong ")]
    assert [out[i] for i in pings] == [f"ping {n} (pid 1)" for n in range(1, 6)], out
    assert [out[i] for i in pongs] == [f"pong {n} (pid 2)" for n in range(1, 6)], out
    # Neither program yields: only the timer can have switched between them.
    assert pongs[0] < pings[-1] and pings[0] < pongs[-1], "no interleaving:\n" + "\n".join(out)
    assert out.index("[1 ping] exit 0") > pings[-1] and out.index("[2 pong] exit 0") > pongs[-1]
    assert len(out) == 12, out


def test_user_page_fault_is_reported_and_kills_only_the_program(procs):
    out = output_of(procs, "fault")
    text = "\n".join(out)
    assert out[0] == "fault: reading kernel memory at 0x100000 from ring 3"
    assert re.search(r"exception 14 \(#PF page fault\), error code 5, rip 0x00000080000[0-9a-f]{5}, "
                     r"user mode", text), text
    assert "  cr2 0x0000000000100000 (user read, protection violation)" in out
    dump = "\n".join(line for line in out if line.startswith("  r"))
    dumped = re.findall(r"\b(r\w+) +0x[0-9a-f]{16}", dump)
    assert dumped == DUMP_REGISTERS, dumped
    assert out[-1] == "[3 fault] killed: #PF page fault"
    assert "the kernel is not protected" not in text
    assert output_of(procs, "echo still alive") == ["still alive"]


def test_ps_shows_shell_and_background_program(procs):
    assert output_of(procs, "ps") == [
        "PID  STATE     CPU  NAME",
        "  0  running     0  shell",
        "  4  runnable    -  sleeper",              # not yet run: no CPU
    ]
    assert procs.status == 0


# --- ways out: status codes ---------------------------------------------------------------

def test_kernel_page_fault_panics(vmm):
    run = run_session(vmm, "run=fault kernel")
    text = run.console
    assert "exception 14 (#PF page fault), error code 0" in text, text
    assert "cr2 0x0000000000000000 (kernel read, page not present)" in text
    assert "panic: exception in kernel mode" in text
    assert run.status == 3, run.status              # debug-exit 1 -> (1 << 1) | 1


def test_exit_n_uses_debug_exit(vmm):
    run = run_session(vmm, "run=exit 5")
    assert run.status == 11, f"status {run.status}\n{run.console}"   # (5 << 1) | 1


def test_reboot_resets(vmm):
    run = run_session(vmm, "run=reboot")
    assert run.lines[-1] == "tiny$ reboot", run.console
    assert run.status == 0, run.status              # QEMU -no-reboot and pykvm: exit 0 on reset


def test_piped_stdin_reaches_the_shell(vmm):
    """No command line: the commands arrive through the UART's receive interrupt, with the
    line endings and the backspace (DEL) a terminal sends."""
    run = run_session(vmm, "", b"echo typed inn\x7f\r\nrun hello\rpoweroff\n")
    erased = re.sub(r"[^\n]\x08 \x08", "", run.console)    # the shell's echo of DEL: "\b \b"
    run = Run(run.status, erased)
    assert output_of(run, "echo typed in") == ["typed in"], run.console
    assert output_of(run, "run hello")[0] == "hello from user mode, pid 1"
    assert run.lines[-1] == "tiny$ poweroff"
    assert run.status == 0


def test_system_calls_through_the_idt_gate_on_tcg():
    """On PVM `int 0x80` reaches the kernel as #UD (trap.c); QEMU's TCG CPU delivers it
    through gate 0x80 like hardware KVM: the same programs must work on both paths."""
    run = run_session("qemu-tcg", "run=run hello;run sleeper;run ping pong;fault;poweroff")
    assert output_of(run, "run hello") == ["hello from user mode, pid 1", "[1 hello] exit 0"]
    assert output_of(run, "run sleeper")[-1] == "[2 sleeper] exit 7"
    assert len(output_of(run, "run ping pong")) == 12
    assert output_of(run, "fault")[-1] == "[5 fault] killed: #PF page fault"
    assert run.status == 0


def test_pykvm_knows_tiny_as_a_bundled_guest():
    if problem := vmm_problem("pykvm"):
        pytest.skip(problem)
    build_tiny()
    result = subprocess.run([sys.executable, "-m", "pykvm", "boot", "tiny", "--cmdline",
                             "run=echo bundled;poweroff"], capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    assert b"tiny$ echo bundled\r\nbundled\r\n" in result.stdout, result.stdout


# --- cross-check: pykvm and QEMU print the same session -------------------------------------

# Lines that may differ between VMMs or runs: timing, the memory map each VMM chooses, and
# the order in which the timer interleaves ping and pong.
VMM_DEPENDENT = re.compile(r"up \d|memory: |  [0-9a-f]{16}-|pages: |(ping|pong) \d|\[\d (ping|pong)\]")


@pytest.mark.slow
@pytest.mark.parametrize("script", [SHELL_SESSION, PROCESS_SESSION], ids=["shell", "processes"])
def test_same_session_on_pykvm_and_qemu(script):
    """Apart from those lines, pykvm and QEMU print the same session, exception reports included."""
    sessions = [run_session(vmm, "run=" + script) for vmm in ("pykvm", "qemu")]
    pykvm_lines, qemu_lines = ([line for line in s.lines if not VMM_DEPENDENT.match(line)]
                               for s in sessions)
    assert pykvm_lines == qemu_lines
    assert len(pykvm_lines) > 20
