"""Run the `pykvm` CLI as a user would: a separate process, stdin piped."""
from __future__ import annotations

import os
import selectors
import subprocess
import sys
import termios
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pykvm(*args: str, input: bytes = b"", env: dict | None = None, timeout: float = 120,
          prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`python -m pykvm ARGS`; returns the CompletedProcess (stdout/stderr as bytes)."""
    return subprocess.run([*prefix, sys.executable, "-m", "pykvm", *args], input=input,
                          capture_output=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})})


def one_error_line(result) -> str:
    """Assert the CLI failed the way bad input should: non-zero, one line, no traceback."""
    err = result.stderr.decode()
    assert result.returncode != 0, f"exit 0 for bad input; stderr: {err!r}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    return lines[0]


def wait_for(predicate, timeout: float = 10.0) -> None:
    """Poll `predicate` every 50 ms until it is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def output_until_exit(proc: subprocess.Popen, silence: float) -> bytes:
    """proc's stdout (its stderr drained) until it exits; stops it after `silence` s of quiet.

    A bound on silence, not on the run: under nested virtualization on a loaded host a
    guest may take minutes while it prints all the way."""
    streams = {stream: bytearray() for stream in (proc.stdout, proc.stderr) if stream is not None}
    with selectors.DefaultSelector() as sel:
        for stream in streams:
            sel.register(stream, selectors.EVENT_READ)
        while sel.get_map():
            ready = sel.select(silence)
            if not ready:
                proc.kill()
                raise AssertionError(f"{proc.args[0]} printed nothing for {silence:.0f} s; stopped it. "
                                     f"Its console so far:\n{streams[proc.stdout].decode(errors='replace')}")
            for key, _ in ready:
                data = os.read(key.fileobj.fileno(), 65536)
                streams[key.fileobj] += data
                if not data:
                    sel.unregister(key.fileobj)
    proc.wait()
    return bytes(streams[proc.stdout])
def kill_9_after(argv: list[str], marker: bytes, timeout: float = 120, before_kill=None) -> bytes:
    """Run `argv`, wait until its stdout shows `marker`, then SIGKILL it; return its output.

    `before_kill(pid)`, if given, runs between the marker and the kill (to look at the
    process while it is still running)."""
    import signal

    proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    output = bytearray()
    os.set_blocking(proc.stdout.fileno(), False)

    def seen() -> bool:
        output.extend(proc.stdout.read() or b"")
        return marker in output

    try:
        wait_for(seen, timeout)
        if before_kill is not None:
            before_kill(proc.pid)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.returncode
    return bytes(output)


@contextmanager
def on_a_terminal(kernel, *args: str):
    """`pykvm boot --kernel KERNEL ARGS` on a new pty, in raw mode; yields (proc, master, settings before).

    On the way out, the process is killed if it still runs and the pty is closed.
    """
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen([sys.executable, "-m", "pykvm", "boot", "--kernel", str(kernel), *args],
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    try:
        deadline = time.monotonic() + 30
        while termios.tcgetattr(slave)[3] & termios.ICANON:   # wait for raw mode
            assert time.monotonic() < deadline, "pykvm never put the terminal in raw mode"
            time.sleep(0.05)
        yield proc, master, lambda: termios.tcgetattr(slave) == before
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)


def containers_in(state_root: Path) -> list[str]:
    """The container directories under a state root: every entry but the runtime's own
    .cache (compiled seccomp filters, kept between containers)."""
    return sorted(p.name for p in state_root.iterdir() if p.name != ".cache") if state_root.is_dir() else []
