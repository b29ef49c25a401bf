"""`pykvm boot --gdb` with the real gdb (batch mode): break, bt, p, x/i, stepi, finish,
watch, Ctrl-C, continue, detach, kill; and the same session against QEMU's gdbstub.

GDB manual, "Remote Protocol"; KVM api.rst, KVM_SET_GUEST_DEBUG.  On PVM
breakpoints are debug registers and the watchpoint is kept by single-stepping
(pykvm.vm.gdb.stub says why); on hardware KVM breakpoints are int3 and the
watchpoint a debug register.  Both paths answer gdb the same way, so one test
serves both hosts; each test that needs a way of stopping the guest asks the
probes in hwdebug.py whether this KVM has it.
"""
import re
import signal
import socket
import subprocess
import time

import pytest

from clitools import one_error_line, pykvm
from hwdebug import gdb_breakpoint_problem, gdb_watchpoint_problem
from gdbsession import Reader, gdb_argv, gdb_problem, sections, start_pykvm, start_qemu, symbol
from pykvm.vm.gdb import KILL_STATUS
from pykvm.vm.gdb.packets import frame
from tinyvm import TINY_ELF, build_tiny, vmm_problem

pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(gdb_problem() is not None, reason=str(gdb_problem()))]


@pytest.fixture
def breakpoints_stop_guests():
    """For tests that use `break`: where this KVM cannot stop a guest that way, they cannot run."""
    if (problem := gdb_breakpoint_problem()) is not None:
        pytest.skip(problem)

GDB_TIMEOUT = 180
SESSION = [
    ("break", ["break cmd_uptime", "continue"]),
    ("bt", ["bt"]),
    ("rip", ["info registers rip"]),
    ("x4i", ["x/4i $pc"]),
    ("stepi", ["stepi", "info registers rip"]),
    ("ticks", ["p ticks", "p $rcx"]),
    ("finish", ["finish"]),
    ("kill", ["kill"]),
]


def run_gdb(port: int, steps) -> dict[str, str]:
    done = subprocess.run(gdb_argv(port, steps), capture_output=True, text=True, timeout=GDB_TIMEOUT)
    return sections(done.stdout + done.stderr)


def finish_vmm(proc, timeout: float = 60) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(errors="replace").replace("\r\n", "\n")


@pytest.fixture(scope="module")
def elf():
    return build_tiny()


def test_break_backtrace_registers_step_finish_and_kill(elf, breakpoints_stop_guests):
    proc, port = start_pykvm("run=uptime;poweroff")
    out = run_gdb(port, SESSION)
    status, console = finish_vmm(proc)

    assert re.search(r"Breakpoint 1, cmd_uptime \(", out["break"]), out["break"]
    frames = re.findall(r"^#(\d+)\s+(?:0x\w+ in )?(\w+) \(", out["bt"], re.M)
    assert [name for _, name in frames] == ["cmd_uptime", "execute", "shell_run", "long_mode"], out["bt"]
    assert "??" not in out["bt"], f"the backtrace runs past the outermost frame:\n{out['bt']}"
    assert int(out["rip"].split()[1], 16) == symbol(elf, "cmd_uptime"), out["rip"]
    first, second = out["x4i"].splitlines()[:2]
    assert first.startswith("=> ") and "<cmd_uptime>" in first and "<ticks>" in first, out["x4i"]
    after_step = int(re.search(r"^rip\s+(0x\w+)", out["stepi"], re.M).group(1), 16)
    assert after_step == int(re.search(r"(0x\w+) <cmd_uptime\+\d+>", second).group(1), 16), out["stepi"]
    ticks, rcx = (int(v) for v in re.findall(r"^\$\d+ = (\d+)", out["ticks"], re.M))
    assert ticks == rcx, "stepi ran the load of ticks into rcx: both must agree"
    assert re.search(r"^execute \(.*\) at shell\.c:\d+$", out["finish"], re.M), out["finish"]
    assert f"up 0.{ticks:02d} s ({ticks} ticks" in console or f"({ticks} ticks at" in console, (
        f"the guest printed another tick count than gdb's p ticks = {ticks}:\n{console}")
    assert "killed" in out["kill"], out["kill"]
    assert status == KILL_STATUS, f"pykvm exited {status} after gdb's kill"


def test_watchpoint_on_the_tick_counter_fires_when_the_timer_changes_it(elf):
    if (problem := gdb_watchpoint_problem()) is not None:
        pytest.skip(problem)
    proc, port = start_pykvm("run=uptime;poweroff")
    out = run_gdb(port, [("watch", ["watch ticks", "continue"]), ("again", ["continue"]),
                         ("where", ["bt 1"]), ("kill", ["kill"])])
    finish_vmm(proc)
    values = []
    for step in ("watch", "again"):
        assert "Hardware watchpoint 1: ticks" in out[step], out[step]
        old, new = (int(v) for v in re.search(r"Old value = (\d+)\s+New value = (\d+)", out[step]).groups())
        assert new == old + 1, out[step]
        values.append((old, new))
    assert values[1][0] == values[0][1], f"the second hit must start where the first ended: {values}"
    assert re.search(r"#0\s+timer_intr \(", out["where"]), out["where"]


def test_ctrl_c_stops_the_guest_continue_resumes_it_and_detach_lets_it_power_off(elf):
    proc, port = start_pykvm("run=uptime")          # then the shell waits on the console
    gdb = subprocess.Popen(gdb_argv(port, [("run1", ["continue"]), ("ticks1", ["p ticks"]),
                                           ("run2", ["continue"]), ("ticks2", ["p ticks"]),
                                           ("detach", ["detach"])]),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    gdb_out, console = Reader(gdb.stdout), Reader(proc.stdout)
    try:
        gdb_out.until(b"@@ run1", GDB_TIMEOUT)
        console.until(b"tiny$ uptime\r\nup ", GDB_TIMEOUT)        # the guest runs
        gdb.send_signal(signal.SIGINT)                              # Ctrl-C: gdb sends 0x03
        gdb_out.until(b"@@ run2", GDB_TIMEOUT)
        stopped_at = int(re.search(rb"@@ ticks1.*?\$\d+ = (\d+)", gdb_out.data, re.S).group(1))
        # A tick is 10 ms and the guest may get this far inside one: ask its uptime until the
        # console shows the counter past where gdb saw it, so the second stop must see it too.
        seen, deadline = 0, time.monotonic() + GDB_TIMEOUT
        while seen <= stopped_at:
            assert time.monotonic() < deadline, f"ticks stayed at {seen} while the guest ran"
            proc.stdin.write(b"uptime\n")
            proc.stdin.flush()
            answer = console.until(re.compile(rb"\((\d+) ticks at"), GDB_TIMEOUT, start=len(console.data))
            seen = int(answer.group(1))
            time.sleep(0.01)
        gdb.send_signal(signal.SIGINT)
        gdb.wait(timeout=GDB_TIMEOUT)
        out = sections((gdb_out.data + gdb.stdout.read()).decode())
        proc.stdin.write(b"poweroff\n")                             # after detach the guest runs on
        proc.stdin.flush()
        status, _ = finish_vmm(proc)
    finally:
        for p in (gdb, proc):
            if p.poll() is None:
                p.kill()
    for step in ("run1", "run2"):
        assert "Program received signal SIGINT" in out[step], out[step]
    ticks1, ticks2 = (int(re.search(r"\$\d+ = (\d+)", out[s]).group(1)) for s in ("ticks1", "ticks2"))
    assert ticks2 > ticks1, f"the guest did not run between the two Ctrl-Cs: {ticks1} then {ticks2}"
    assert "detached" in out["detach"], out["detach"]
    assert status == 0, f"pykvm exited {status} after detach and poweroff"


def test_garbage_a_huge_request_and_a_vanished_client_leave_pykvm_serving(elf):
    proc, port = start_pykvm("run=uptime")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            replies = Reader(raw)
            raw.sendall(b"\x00noise\xff$g#00")                        # noise, then a bad checksum
            replies.until(b"-", 30)
            raw.sendall(b"$" + b"m" * 20000 + b"#00")                  # longer than PacketSize
            replies.until(b"--", 30)
            raw.sendall(frame(b"m100000,ffffffff"))                    # 4 GiB: one packet's worth back
            found = replies.until(re.compile(rb"\$([0-9a-f]*)#[0-9a-f]{2}"), 30)
            assert len(found.group(1)) == 0x4000, len(found.group(1))
            raw.sendall(b"$m1000")                                     # half a packet, and gone
        Reader(proc.stdout).until(b"tiny$ uptime\r\nup ", GDB_TIMEOUT)  # the guest ran on
        out = run_gdb(port, [("ticks", ["p ticks"]), ("kill", ["kill"])])
        status, _ = finish_vmm(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert re.search(r"\$1 = \d+", out["ticks"]), f"a second gdb was not served:\n{out}"
    assert status == KILL_STATUS


def test_a_port_in_use_is_one_error_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = pykvm("boot", "--kernel", str(TINY_ELF), "--gdb", f"127.0.0.1:{port}", timeout=60)
    line = one_error_line(result)
    assert "in use" in line and str(port) in line, line
    assert result.returncode == 2


@pytest.mark.skipif(vmm_problem("qemu-tcg") is not None, reason=str(vmm_problem("qemu-tcg")))
def test_the_same_session_on_qemu_gives_the_same_answers(elf, breakpoints_stop_guests):
    compared = [step for step in SESSION if step[0] not in ("ticks", "kill")]
    answers = {}
    for name, start in (("pykvm", start_pykvm), ("qemu", start_qemu)):
        proc, port = start("run=uptime;poweroff")
        answers[name] = run_gdb(port, compared + [("kill", ["kill"])])
        if proc.poll() is None:
            finish_vmm(proc)
    assert "cmd_uptime" in answers["qemu"]["bt"], answers["qemu"]     # QEMU's session ran too
    for step, _ in compared:
        assert answers["pykvm"][step] == answers["qemu"][step], (
            f"{step}: pykvm said\n{answers['pykvm'][step]}\nQEMU said\n{answers['qemu'][step]}")
