"""Run a program with given fds at the numbers 3, 4, ...: what an engine does before it
calls a runtime with --preserve-fds N.

A shell's `3<&12` is no help (dash reads one digit there), and subprocess's pass_fds keeps
numbers as they are; so a small Python step renumbers them, then execs the program.
"""
from __future__ import annotations

import os
import subprocess
import sys

__all__ = ["run_with_fds", "pipe_holding"]

# Each fd first to a number >= 10 (out of the way of 3, 4, ...), then down to its place.
RENUMBER = """\
import fcntl, os, sys
count = int(sys.argv[1])
fds = [int(fd) for fd in sys.argv[2:2 + count]]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in fds]
for fd in fds:
    os.close(fd)
for place, fd in enumerate(high, start=3):
    os.dup2(fd, place)
    os.close(fd)
os.execvp(sys.argv[2 + count], sys.argv[2 + count:])
"""


def run_with_fds(argv: list, fds: list[int], **kw) -> subprocess.CompletedProcess:
    """subprocess.run(argv) with fds[0] as its fd 3, fds[1] as its fd 4, ..."""
    return subprocess.run([sys.executable, "-c", RENUMBER, str(len(fds)), *map(str, fds),
                           *map(str, argv)], pass_fds=fds, **kw)


def pipe_holding(text: str) -> int:
    """The read end of a pipe that holds `text`, its write end closed (a reader gets EOF)."""
    r, w = os.pipe()
    os.write(w, text.encode())
    os.close(w)
    return r
