"""The host console: Ctrl-A commands, raw mode restored on every exit path, pipes, output.

Terminal tests use a real pseudo-terminal (os.openpty) and real signals.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import termios
import textwrap
import threading
import time
from pathlib import Path

import pytest

from pykvm.vm.console import HELP_TEXT, Console, ConsoleOutput, EscapeDecoder, write_all
from pykvm.vm.devices.serial import HOST_QUEUE_BYTES, Serial16550

ROOT = Path(__file__).resolve().parents[2]

LSR, RBR = 5, 0


def drain(uart: Serial16550, want: int, timeout: float = 10.0) -> bytes:
    """Read the UART's receiver like a polling guest until `want` bytes arrived (or time runs out)."""
    got = bytearray()
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        if uart.read(LSR, 1) & 0x01:
            got.append(uart.read(RBR, 1))
        else:
            time.sleep(0.001)
    return bytes(got)


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.005)
    return predicate()


@pytest.fixture
def uart():
    port = Serial16550(lambda data: None, lambda level: None)
    yield port
    port.close()


@pytest.fixture
def pty():
    master, slave = os.openpty()
    yield master, slave
    os.close(master)
    os.close(slave)


def is_raw(attrs) -> bool:
    lflag = attrs[3]
    return not lflag & (termios.ICANON | termios.ECHO | termios.ISIG) and attrs[1] & termios.OPOST


# --- the escape decoder


def test_decoder_passes_plain_input_through():
    assert EscapeDecoder().feed(b"ls -l\r") == [b"ls -l\r"]


def test_decoder_commands_and_literal_ctrl_a():
    d = EscapeDecoder()
    assert d.feed(b"ab\x01\x01c\x01hd\x01xe") == [b"ab\x01c", "h", b"d", "x", b"e"]


def test_decoder_escape_split_across_chunks_and_unknown_keys_swallowed():
    d = EscapeDecoder()
    assert d.feed(b"a\x01") == [b"a"]
    assert d.feed(b"x") == ["x"]
    assert d.feed(b"\x01qz") == [b"z"], "C-a q is not a command: swallowed, as in QEMU"


# --- terminal mode


def test_raw_mode_while_running_and_restored_after(pty, uart):
    master, slave = pty
    before = termios.tcgetattr(slave)
    assert not is_raw(before)
    with Console(uart, lambda: None, stdin_fd=slave, stdout_fd=master):
        assert is_raw(termios.tcgetattr(slave))
    assert termios.tcgetattr(slave) == before


def test_terminal_restored_when_the_block_raises(pty, uart):
    master, slave = pty
    before = termios.tcgetattr(slave)
    with pytest.raises(RuntimeError):
        with Console(uart, lambda: None, stdin_fd=slave, stdout_fd=master):
            raise RuntimeError("the VM failed")
    assert termios.tcgetattr(slave) == before


def test_signal_handlers_restored_after_close(pty, uart):
    master, slave = pty
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    with Console(uart, lambda: None, stdin_fd=slave, stdout_fd=master) as console:
        assert signal.getsignal(signal.SIGTERM) == console._on_signal
    assert {s: signal.getsignal(s) for s in before} == before


# The child starts with the dispositions an interactive shell gives a program: a test run
# started in the background by a non-interactive shell inherits SIGINT ignored, and Console
# rightly leaves an ignored signal alone (as under nohup).
CHILD = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    from pykvm.vm.console import Console
    from pykvm.vm.devices.serial import Serial16550
    uart = Serial16550(lambda data: None, lambda level: None)
    with Console(uart, lambda: None):
        print("ready", flush=True)
        time.sleep(600)
""")


@pytest.mark.parametrize("signum, expect", [
    (signal.SIGTERM, -signal.SIGTERM),      # default action: killed by the signal
    (signal.SIGHUP, -signal.SIGHUP),
    (signal.SIGINT, -signal.SIGINT),        # Python's handler: KeyboardInterrupt, which ends Python by SIGINT
])
def test_terminal_restored_on_signal(pty, signum, expect):
    master, slave = pty
    before = termios.tcgetattr(slave)
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=slave, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        assert child.stdout.readline() == b"ready\n"
        assert is_raw(termios.tcgetattr(slave)), "the child should have put the pty in raw mode"
        child.send_signal(signum)
        # Bounded, not timed: a slow machine (the lane's nested L1 under load took more than
        # 10 s once) only waits longer; a signal that did nothing fails at the bound.
        assert child.wait(timeout=120) == expect
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert termios.tcgetattr(slave) == before


# --- input


def test_ctrl_a_x_quits_and_stops_delivering(pty, uart):
    master, slave = pty
    quit_called = threading.Event()
    with Console(uart, quit_called.set, stdin_fd=slave, stdout_fd=master) as console:
        os.write(master, b"ab\x01xcd")
        assert quit_called.wait(5), "Ctrl-A x did not call on_quit"
        assert wait_for(lambda: not console.reading)
    assert drain(uart, 2) == b"ab"
    assert uart.pending_input == 0, "nothing after Ctrl-A x reaches the guest"


def test_ctrl_a_ctrl_a_and_keys_reach_the_guest_raw(pty, uart):
    master, slave = pty
    wakes = []
    with Console(uart, lambda: None, wake=lambda: wakes.append(1), stdin_fd=slave, stdout_fd=master):
        os.write(master, b"\x03\r\x01\x01z")           # Ctrl-C and CR pass untranslated in raw mode
        assert drain(uart, 4) == b"\x03\r\x01z"
    assert wakes, "wake() was never called"


def test_ctrl_a_h_prints_help(uart):
    stdin_r, stdin_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        with Console(uart, lambda: None, stdin_fd=stdin_r, stdout_fd=out_w):
            os.write(stdin_w, b"\x01h")
            assert os.read(out_r, 1000) == HELP_TEXT
    finally:
        for fd in (stdin_r, stdin_w, out_r, out_w):
            os.close(fd)


def test_piped_stdin_eof_stops_reading_guest_keeps_input(uart):
    read_end, write_end = os.pipe()
    os.write(write_end, b"echo hi\n")
    os.close(write_end)
    quit_called = []
    try:
        with Console(uart, lambda: quit_called.append(1), stdin_fd=read_end) as console:
            assert wait_for(lambda: not console.reading), "reader did not stop at EOF"
            assert drain(uart, 8) == b"echo hi\n"
    finally:
        os.close(read_end)
    assert quit_called == [], "EOF is not a quit"


def test_large_piped_input_is_not_lost_when_the_guest_is_slow(uart):
    data = bytes(i * 7 & 0xFF for i in range(2 * HOST_QUEUE_BYTES + 12345)).replace(b"\x01", b"")
    read_end, write_end = os.pipe()

    def writer():
        write_all(write_end, data)
        os.close(write_end)

    feeder = threading.Thread(target=writer)
    try:
        with Console(uart, lambda: None, stdin_fd=read_end):
            feeder.start()
            time.sleep(0.2)                         # let the host queue fill: back-pressure
            assert uart.pending_input <= HOST_QUEUE_BYTES + 16
            assert drain(uart, len(data), timeout=60) == data
        feeder.join()
    finally:
        os.close(read_end)


def test_closed_stdin_is_end_of_file(uart):
    closed = os.open(os.devnull, os.O_RDONLY)
    os.close(closed)                                # a closed fd, as fd 0 is after `<&-`
    quit_called = []
    with Console(uart, lambda: quit_called.append(1), stdin_fd=closed) as console:
        assert not console.reading
        assert uart.receive(b"still works") == 11
    assert quit_called == []


def test_echo_guest_through_a_real_terminal(pty):
    """Keys typed on a pty reach a polling "guest" through the UART, and its echo comes back."""
    master, slave = pty
    uart = Serial16550(ConsoleOutput(slave).write, lambda level: None)
    stop = threading.Event()

    def echo_guest():                               # what a guest's polled echo loop does
        while not stop.is_set():
            if uart.read(LSR, 1) & 0x01:
                uart.write(0, 1, uart.read(RBR, 1))
            else:
                time.sleep(0.001)

    guest = threading.Thread(target=echo_guest)
    guest.start()
    try:
        with Console(uart, lambda: None, stdin_fd=slave, stdout_fd=slave):
            os.write(master, b"hello")
            echoed = b""
            deadline = time.monotonic() + 5
            while len(echoed) < 5 and time.monotonic() < deadline:
                echoed += os.read(master, 100)
            assert echoed == b"hello", "raw mode: no line buffering, no local echo, only the guest's"
    finally:
        stop.set()
        guest.join()
        uart.close()


# --- output


def _readable_within(fd: int, seconds: float) -> bool:
    import select
    return bool(select.select([fd], [], [], seconds)[0])


def test_output_goes_out_a_line_at_a_time():
    """Byte by byte in (as a guest's THR writes come), one write(2) per line out."""
    r, w = os.pipe()
    out = ConsoleOutput(w)
    for byte in b"Linux version 6.1\r":
        out.write(bytes([byte]))
    out.write(b"\n")                                  # the newline writes the line, synchronously
    assert os.read(r, 100) == b"Linux version 6.1\r\n"
    out.close()
    os.close(r)
    os.close(w)


def test_a_prompt_without_a_newline_still_shows_at_once():
    """A human must not wait for `$ `: the flusher thread writes it FLUSH_SECONDS later."""
    from pykvm.vm.console import FLUSH_SECONDS
    r, w = os.pipe()
    out = ConsoleOutput(w)
    out.write(b"$")
    out.write(b" ")
    assert _readable_within(r, 1.0), "a prompt stayed in the buffer"
    assert os.read(r, 100) == b"$ "
    out.write(b"x")                                    # a second burst gets its own flush
    start = time.monotonic()
    assert _readable_within(r, 1.0) and os.read(r, 100) == b"x"
    assert time.monotonic() - start < 0.5 + FLUSH_SECONDS
    out.close()
    os.close(r)
    os.close(w)


def test_close_writes_what_is_still_queued():
    r, w = os.pipe()
    out = ConsoleOutput(w)
    out.write(b"last words")
    out.close()
    assert os.read(r, 100) == b"last words"
    out.close()                                        # idempotent
    os.close(r)
    os.close(w)


def test_output_to_a_closed_pipe_stops_quietly_and_reports_once():
    r, w = os.pipe()
    os.close(r)
    broken = []
    out = ConsoleOutput(w, on_broken=lambda: broken.append(1))
    out.write(b"hello\n")
    out.write(b"again\n")
    out.write(b"and a prompt")
    out.close()
    assert out.broken and broken == [1]
    os.close(w)


def test_output_waits_out_eagain_on_a_nonblocking_fd():
    r, w = os.pipe()
    os.set_blocking(w, False)
    data = os.urandom(1 << 20)                      # far more than a pipe buffer
    got = bytearray()

    def reader():
        while len(got) < len(data):
            got.extend(os.read(r, 65536))
            time.sleep(0.001)

    thread = threading.Thread(target=reader)
    thread.start()
    ConsoleOutput(w).write(data)
    thread.join(timeout=30)
    assert bytes(got) == data
    os.close(r)
    os.close(w)


def _blocked_signals(thread: threading.Thread) -> int:
    """The thread's blocked-signal mask, from /proc (SigBlk, hex)."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigBlk:")), 16)


def test_the_console_threads_leave_termination_signals_to_the_main_thread(pty, uart):
    """A signal the kernel gave a helper thread would wait for the main thread to run Python
    again: the console's reader and flusher block them, so the main thread gets them."""
    master, slave = pty
    wanted = sum(1 << (s - 1) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT))
    with Console(uart, lambda: None, stdin_fd=slave, stdout_fd=master) as console:
        reader = console._thread
        deadline = time.monotonic() + 10
        while _blocked_signals(reader) & wanted != wanted and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _blocked_signals(reader) & wanted == wanted
    assert _blocked_signals(threading.main_thread()) & wanted == 0
