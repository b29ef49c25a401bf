"""Run the `pykvm` CLI as a user would: a separate process, stdin piped."""
from __future__ import annotations

import os
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
