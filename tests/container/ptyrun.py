"""Run a command with a pseudo-terminal as its controlling terminal, as a user's shell would.

The test holds the master (the "terminal emulator"); the command gets the slave
as stdin/stdout/stderr and as its controlling terminal (a new session), so it
receives SIGWINCH when the test resizes the terminal, and the test can read the
terminal's settings after the command has gone.
"""
from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import termios
import time
from dataclasses import dataclass, field

__all__ = ["PtyRun", "run_on_pty", "set_size", "lines"]


@dataclass
class PtyRun:
    """What a command run on a pty did."""

    status: int
    output: bytes
    mode_before: list = field(default_factory=list)
    mode_after: list = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")


def set_size(fd: int, rows: int, cols: int) -> None:
    """TIOCSWINSZ (struct winsize: rows, columns, x pixels, y pixels; tty_ioctl(4))."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _controlling_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)        # after start_new_session's setsid(), before exec


def run_on_pty(argv: list[str], env: dict, size: tuple[int, int] = (24, 80),
               steps: list | None = None, timeout: float = 60) -> PtyRun:
    """Run argv on a new pty of `size`; `steps` is a list of (bytes to wait for, action(master)),
    each action run once its bytes have appeared in the output, in order."""
    master, slave = os.openpty()
    set_size(slave, *size)
    before = termios.tcgetattr(slave)
    pending = list(steps or [])
    output = b""
    try:
        proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                start_new_session=True, preexec_fn=_controlling_terminal)
        deadline = time.monotonic() + timeout
        while True:
            assert time.monotonic() < deadline, f"timed out; output so far: {output!r}"
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                output += os.read(master, 65536)
            while pending and pending[0][0] in output:
                pending.pop(0)[1](master)
            if not ready and proc.poll() is not None:
                break
        after = termios.tcgetattr(slave)
    finally:
        os.close(master)
        os.close(slave)
    return PtyRun(proc.returncode, output, before, after)


def lines(output: bytes) -> list[str]:
    """The output's lines, a terminal's "\\r\\n" line ends and colour-free."""
    return output.decode(errors="replace").replace("\r\n", "\n").split("\n")
