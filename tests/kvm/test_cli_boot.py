"""`pykvm boot` and `pykvm check` end to end, as separate processes with stdin piped."""
import os
import re
import select
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from clitools import on_a_terminal, one_error_line, pykvm
from guestasm import pvh_elf

pytestmark = pytest.mark.kvm


def test_boot_default_guest_is_the_tiny_kernel():
    result = pykvm("boot", input=b"info\npoweroff\n")
    assert result.returncode == 0, result.stderr
    assert b"kernel:     tiny" in result.stdout, result.stdout


def test_boot_hello():
    result = pykvm("boot", "hello")
    assert result.returncode == 0, result.stderr
    assert b"Hello from a PVH guest" in result.stdout


def test_boot_trace_prints_exits_and_a_summary():
    result = pykvm("boot", "hello", "--trace")
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert "IO_OUT" in err and "port=0x3f8" in err
    assert "VM exits" in err and "IO_IN" in err
    summary, = exit_summaries(err)
    assert len(EXIT_LINE.findall(err)) == summary.total, err     # one line per exit counted


EXIT_LINE = re.compile(r"^pykvm: vcpu\d+ exit ", re.MULTILINE)         # --trace's line per exit
SUMMARY_HEAD = re.compile(r"pykvm: (?:vCPU (\d+): )?(\d+) VM exits")
SUMMARY_REASON = re.compile(r"  ([A-Z_]+) +(\d+) +[\d.]+%")
SUMMARY_KVM = re.compile(r"KVM counted (\d+) exits in all \(KVM_GET_STATS_FD\)")


@dataclass
class ExitSummary:
    """One vCPU's part of the summary: the total printed, the count of each reason, KVM's."""
    total: int
    reasons: dict[str, int] = field(default_factory=dict)
    kvm: int | None = None


def exit_summaries(err: str) -> list[ExitSummary]:
    """The summary's parts, one per vCPU, in the order printed."""
    summaries = []
    for line in err.splitlines():
        if head := SUMMARY_HEAD.fullmatch(line):
            assert head.group(1) in (None, str(len(summaries))), line
            summaries.append(ExitSummary(int(head.group(2))))
        elif summaries and (reason := SUMMARY_REASON.fullmatch(line)):
            summaries[-1].reasons[reason.group(1)] = int(reason.group(2))
        elif summaries and (kvm := SUMMARY_KVM.match(line)):
            summaries[-1].kvm = int(kvm.group(1))
    return summaries


@pytest.mark.parametrize("cpus", [1, 2])
def test_exit_summary_counts_without_a_line_per_exit(cpus):
    result = pykvm("boot", "--exit-summary", "--cpus", str(cpus),
                   "--cmdline", "run=info;run hello;poweroff")
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert b"tiny$ poweroff" in result.stdout, result.stdout[-300:]
    assert not EXIT_LINE.search(err), err[:500]
    summaries = exit_summaries(err)
    assert len(summaries) == cpus, err
    assert {"IO_OUT", "IO_IN"} <= summaries[0].reasons.keys(), err    # the console's bytes
    for summary in summaries:
        assert sum(summary.reasons.values()) == summary.total, err
        assert summary.kvm is not None, f"no KVM_GET_STATS_FD count: {err}"
        # KVM counts every exit from the guest, also those it handles itself.  A kick that
        # finds the vCPU halted inside KVM_RUN returns to pykvm (INTR) without one.
        assert summary.kvm >= summary.total - summary.reasons.get("INTR", 0), err


# A PVH guest that polls the UART and echoes each byte; {after} runs after each echo.
ECHO_GUEST = """
poll:
    mov $0x3fd, %dx           # LSR
    in %dx, %al
    test $1, %al              # DR: a byte is waiting
    jz poll
    mov $0x3f8, %dx           # RBR, then THR
    in %dx, %al
    out %al, %dx
    {after}
    jmp poll
"""
ECHO_FOREVER = ECHO_GUEST.format(after="")
ECHO_UNTIL_BANG = ECHO_GUEST.format(after="""
    cmp $'!', %al
    jne poll
    mov $0x604, %dx           # ACPI power off
    mov $0x2000, %ax
    out %ax, %dx
""")


def test_boot_echo_guest_with_piped_stdin(tmp_path):
    kernel = pvh_elf(ECHO_UNTIL_BANG, tmp_path / "echo.elf")
    result = pykvm("boot", "--kernel", str(kernel), input=b"typed on stdin!")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"typed on stdin!"


def test_check_reports_capabilities():
    result = pykvm("check")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "KVM API version 12" in out and "KVM_CAP_IRQCHIP" in out


def test_check_says_what_pvm_means_for_linux_once():
    from pykvm.vm.guests import LINUX_ON_PVM
    from tiers import kvm_flavour

    out = pykvm("check").stdout.decode()
    assert "very slowly" not in out, out
    assert out.count(LINUX_ON_PVM) == (1 if kvm_flavour() == "pvm" else 0), out


def test_boot_linux_on_pvm_says_where_linux_can_boot():
    from tiers import kvm_flavour

    if kvm_flavour() != "pvm":
        pytest.skip(f"/dev/kvm here is {kvm_flavour()}: Linux boots (the linux tier checks it)")
    line = one_error_line(pykvm("boot", "linux"))
    assert "stock Linux cannot finish booting on this /dev/kvm" in line, line
    assert "hardware KVM" in line and "make test-hw" in line, line
    assert "make linux-guest" not in line, line


def test_boot_help_lists_the_bundled_guests():
    result = pykvm("boot", "--help")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "Bundled guests (GUEST):" in out, out
    for name in ("hello", "tiny", "linux"):
        assert f"\n    {name} " in out, out


@pytest.mark.parametrize("args, expected", [
    (["--kernel", "/nonexistent/kernel"], "no such file"),
    (["--kernel", "README.md"], "not an ELF"),
    (["--mem", "0"], "too small"),
    (["--mem", "1T"], "more than this host"),
    (["--mem", "banana"], "not a size"),
    (["no-such-guest"], "unknown guest"),
    (["--exit-summary=yes"], "does not take a value"),
])
def test_bad_input_is_one_line(args, expected):
    line = one_error_line(pykvm("boot", *args))
    assert expected in line, line


def test_truncated_elf(tmp_path):
    elf = pykvm_hello().read_bytes()
    (tmp_path / "cut.elf").write_bytes(elf[:100])
    assert "truncated" in one_error_line(pykvm("boot", "--kernel", str(tmp_path / "cut.elf")))


def test_segment_outside_guest_memory(tmp_path):
    kernel = pvh_elf("""
        hlt
        .fill 3 * 1024 * 1024, 1, 0     # 3 MiB of code: past the end of a 2 MiB guest
    """, tmp_path / "big.elf")
    line = one_error_line(pykvm("boot", "--kernel", str(kernel), "--mem", "2M"))
    assert "outside guest memory" in line, line


def test_no_dev_kvm():
    line = one_error_line(pykvm("boot", "hello", env={"PYKVM_KVM_DEVICE": "/nonexistent/kvm"}))
    assert "modprobe" in line, line


@pytest.mark.root
def test_permission_denied_on_dev_kvm(tmp_path):
    # A copy of the /dev/kvm node owned by nobody, mode 0600, opened by root without
    # CAP_DAC_OVERRIDE: the same EACCES a user outside the kvm group gets.
    node = tmp_path / "kvm"
    st = os.stat("/dev/kvm")
    os.mknod(node, stat.S_IFCHR | 0o600, st.st_rdev)
    os.chown(node, 65534, 65534)
    tmp_path.chmod(0o755)
    drop = ("setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search")
    line = one_error_line(pykvm("boot", "hello", env={"PYKVM_KVM_DEVICE": str(node)}, prefix=drop))
    assert "kvm group" in line, line


def pykvm_hello():
    from pykvm.vm.guests import GUESTS

    return GUESTS["hello"].kernel




def test_interactive_terminal_ctrl_a_x_quits_and_restores_it(tmp_path):
    """On a real terminal: raw mode while the guest runs, Ctrl-A x quits, the terminal is restored."""
    with on_a_terminal(pvh_elf(ECHO_FOREVER, tmp_path / "echo.elf")) as (proc, master, restored):
        os.write(master, b"ping")
        seen = b""
        while b"ping" not in seen:
            ready, _, _ = select.select([master], [], [], 30)
            assert ready, f"no echo from the guest; saw {seen!r}"
            seen += os.read(master, 100)
        os.write(master, b"\x01x")                            # Ctrl-A x
        assert proc.wait(timeout=30) == 0
        assert restored(), "terminal settings not restored"


def test_ctrl_a_x_stops_a_guest_that_never_exits(tmp_path):
    """A guest spinning without VM exits is stopped too: immediate_exit plus a signal to the vCPU thread."""
    with on_a_terminal(pvh_elf("1: jmp 1b", tmp_path / "spin.elf")) as (proc, master, restored):
        os.write(master, b"\x01x")
        assert proc.wait(timeout=30) == 0
        assert restored()


def test_sigterm_restores_the_terminal(tmp_path):
    with on_a_terminal(pvh_elf("1: jmp 1b", tmp_path / "spin.elf")) as (proc, master, restored):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) != 0
        assert restored()


def test_a_guest_talking_to_a_closed_pipe_is_stopped(tmp_path):
    """`pykvm boot ... | head -c 20`: once nobody reads the console, the VM ends (status 0),
    as `yes | head -1` ends yes, instead of running on with its output dropped."""
    guest = pvh_elf("mov $0x3f8, %dx\n1: mov $'y', %al\nout %al, %dx\nmov $'\\n', %al\n"
                    "out %al, %dx\njmp 1b", tmp_path / "yes.elf")
    proc = subprocess.Popen([sys.executable, "-m", "pykvm", "boot", "--kernel", str(guest)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.read(20) == b"y\n" * 10
    proc.stdout.close()
    try:
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert b"Traceback" not in proc.stderr.read()


@pytest.mark.slow                      # a dozen Ctrl-Cs, a second or two each
def test_ctrl_c_to_an_idle_guest_ends_pykvm_cleanly(tmp_path):
    """Ctrl-C while the vCPU thread idles in `sti; hlt` and its watchdog looks at it: status
    130 and one line, every time.  (A KeyboardInterrupt inside Thread.join() once let run()
    return while the vCPU thread still ran: it then touched a closed vCPU, or a kick arrived
    after Python had reset SIGUSR1 at exit and killed pykvm with it.)"""
    guest = tmp_path / "idle.bin"
    guest.write_bytes(bytes([0xFB, 0xF4]))            # sti; hlt
    for delay in [1.0 + 0.17 * i for i in range(12)]:   # all around the watchdog's looks (1 s apart)
        proc = subprocess.Popen([sys.executable, "-m", "pykvm", "boot", "--kernel", str(guest),
                                 "--format", "raw", "--mem", "4M"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        _wait_for_a_vm(proc)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert (proc.returncode, err.decode().strip()) == (130, "pykvm: aborted"), (delay, proc.returncode, err)


def _wait_for_a_vm(proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until `proc` holds a KVM VM fd: from then on, a Ctrl-C reaches a running machine."""
    fds, deadline = Path(f"/proc/{proc.pid}/fd"), time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if any("kvm-vm" in os.readlink(fd) for fd in fds.iterdir()):
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"pykvm made no VM in {timeout} s (status {proc.poll()})")
