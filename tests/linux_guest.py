"""Locate (and if need be, prepare) the Linux guest that `make linux-guest` builds.

Shared by the bzImage unit tests, the PVM slow tests and the `linux` tier.
The recipe lives in guests/linux/Makefile; its outputs are cached in
.cache/linux/ (never committed).
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "linux"
RECIPE = ROOT / "guests" / "linux"

__all__ = ["CACHE", "guest_file", "SerialSession", "pykvm_argv"]


def guest_file(name: str, target: str) -> Path:
    """Path of .cache/linux/NAME, running `make -C guests/linux TARGET` first if it is missing.

    Skips (with the recipe's own error) only when the recipe cannot run here,
    e.g. on a machine without apt-get.
    """
    path = CACHE / name
    if not path.exists():
        proc = subprocess.run(["make", "-s", "-C", str(RECIPE), target],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not path.exists():
            pytest.skip(f"cannot prepare the Linux guest ({target}): "
                        f"{(proc.stderr or proc.stdout).strip()[-300:]}")
    return path


class SerialSession:
    """A VMM (pykvm or QEMU) running with its serial console on a pseudo-terminal.

    Like a user at a terminal: `expect` waits for text on the console,
    `send` types a line, `wait` collects the exit status.  The process is
    killed (by its own pid) if the test ends early.
    """

    def __init__(self, argv: list[str], env: dict | None = None):
        import os
        import pty

        self.argv = argv
        master, slave = pty.openpty()
        self._tty_raw(slave)
        self.master = master
        self.output = b""
        self.first_output: float | None = None      # time.monotonic() when the first byte was read
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     start_new_session=True, close_fds=True,
                                     preexec_fn=_die_with_parent)
        os.close(slave)

    @staticmethod
    def _tty_raw(fd: int) -> None:
        import tty

        tty.setraw(fd)

    def _pump(self, timeout: float) -> bool:
        """Read what is there within `timeout`; False once the console is closed."""
        import os
        import select

        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:          # EIO: every writer is gone
            return False
        if chunk and self.first_output is None:
            import time

            self.first_output = time.monotonic()
        self.output += chunk
        return bool(chunk)

    def expect(self, text: bytes | str, timeout: float, start: int = 0) -> int:
        """Wait until `text` appears in the console output after `start`; returns its end offset.

        `timeout` bounds the console's silence, not the wait: a guest that keeps printing
        (a kernel booting, however slowly a loaded host runs it) is given more time."""
        import time

        needle = text.encode() if isinstance(text, str) else text
        deadline, seen = time.monotonic() + timeout, len(self.output)
        while (at := self.output.find(needle, start)) < 0:
            if len(self.output) > seen:
                deadline, seen = time.monotonic() + timeout, len(self.output)
            left = deadline - time.monotonic()
            ended = left > 0 and not self._pump(min(left, 0.5)) and self.proc.poll() is not None
            if left <= 0 or ended:
                why = (f"it exited with status {self.proc.returncode}" if ended
                       else f"nothing new for {timeout} s")
                tail = self.output[-2000:].decode(errors="replace")
                raise AssertionError(f"{needle!r} not seen on the console of {' '.join(self.argv[:3])}... "
                                     f"({why}); last output:\n{tail}")
        return at + len(needle)

    def drain(self, seconds: float) -> None:
        """Read what the console has written meanwhile, for at most `seconds` (a guest that
        goes on printing is not waited for)."""
        import time

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            before = len(self.output)
            if not self._pump(0.2) or len(self.output) == before:
                return

    def send(self, line: str) -> None:
        import os

        os.write(self.master, line.encode() + b"\r")

    def wait(self, timeout: float) -> int:
        """The exit status, draining the console meanwhile."""
        import time

        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._pump(0.2)
        while self._pump(0.05):
            pass
        return self.proc.wait(timeout=max(0.0, deadline - time.monotonic()) or 0.1)

    def close(self) -> None:
        import os
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        try:
            os.close(self.master)
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _die_with_parent() -> None:
    """In the child: SIGKILL when the test process dies, even if it is killed without cleanup.

    prctl(PR_SET_PDEATHSIG, SIGKILL), as `unshare --kill-child` does.
    """
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1                  # <linux/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def pykvm_argv(*args: str) -> list[str]:
    """`pykvm ARGS` run by this test's interpreter (the venv's), without needing PATH."""
    import sys

    return [sys.executable, "-m", "pykvm", *args]
