"""`pykvm container logs [-f] [--tail N]`: a detached container's container.log.

Who writes the log (launcher.py, monitor.py): with `run -d` the container's command has
container.log as its stdout and stderr (O_APPEND), so its bytes land there with
no copy; with `run -d -t` the monitor copies the pty's master into it.  Either
way the writers are gone once the monitor has written exit.json, which it does
last.  So following a log means: copy what is there, then keep copying what
is appended, until exit.json exists and nothing more was appended after it.

A foreground container has no log: its command writes straight to your
terminal or pipe (its fds 1 and 2 are the launcher's), with nobody in between
to keep a copy.  Docker's daemon sits in between for every container, so
`docker logs` works for both; we would need a relay process copying every byte,
and a command's `isatty(1)` would change.  `logs` says so in one line instead.
"""
from __future__ import annotations

import os
import select
import time

from pykvm.container.runtime.state import ContainerState, StateStore, pid_alive
from pykvm.errors import ConfigError, ContainerError

__all__ = ["parse_tail", "tail_offset", "copy_log", "LOG_NAME"]

LOG_NAME = "container.log"
CHUNK = 65536                     # bytes per read
POLL_S = 0.1                      # -f: how long to wait for new bytes before looking again
GRACE_S = 1.0                     # -f: init gone but no exit.json yet: the monitor's last copy


def parse_tail(text: str) -> int | None:
    """Docker's --tail: "all" (None: everything) or a number of lines, 0 or more."""
    if text == "all":
        return None
    if not text.isdigit():
        raise ConfigError(f"bad --tail {text!r}: give a number of lines (0 or more) or 'all'")
    return int(text)


def tail_offset(fd: int, lines: int | None) -> int:
    """Where the last `lines` lines of the file start (0 for None: all of it).

    Reads backwards a chunk at a time, so a long log is not read whole.  A
    final newline ends the last line; it does not start another one.
    """
    if lines is None:
        return 0
    end = os.fstat(fd).st_size
    if lines == 0:
        return end
    wanted = lines + 1                                 # the newline *before* the first line we keep
    pos = end
    skip_last = True                                   # the file's final "\n" is not a line start
    while pos > 0:
        start = max(0, pos - CHUNK)
        block = os.pread(fd, pos - start, start)
        for i in range(len(block) - 1, -1, -1):
            if block[i] != 0x0A:
                skip_last = False
                continue
            if skip_last:
                skip_last = False
                continue
            wanted -= 1
            if wanted == 1:
                return start + i + 1
        pos = start
    return 0


def copy_log(store: StateStore, state: ContainerState, out: int, lines: int | None = None,
             follow: bool = False) -> None:
    """Write the log (its last `lines` lines) to fd `out`; with `follow`, go on until the
    container has stopped and its log has no more to say."""
    path = os.path.join(store.dir(state.id), LOG_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ContainerError(f"container {state.id} has no log: only detached (-d) containers "
                             f"keep one; a foreground container's output went to your terminal") from None
    try:
        os.lseek(fd, tail_offset(fd, lines), os.SEEK_SET)
        _copy_all(fd, out)
        if follow:
            _follow(store, state, fd, out)
    finally:
        os.close(fd)


def _copy_all(fd: int, out: int) -> bool:
    """Copy from fd's position to its end; True if anything was copied."""
    copied = False
    while chunk := os.read(fd, CHUNK):
        view = memoryview(chunk)
        while view:
            view = view[os.write(out, view):]
        copied = True
    return copied


def _follow(store: StateStore, state: ContainerState, fd: int, out: int) -> None:
    """Copy appended bytes until the writers are gone: exit.json written (by the monitor,
    after its last copy), or init dead for GRACE_S without one (a monitor killed with -9)."""
    pidfd = _pidfd(state)
    gone_since = None
    try:
        while True:
            finished = store.exit_info(state.id) is not None
            if _copy_all(fd, out):
                continue
            if finished:
                return                                   # exit.json, then one more empty read
            if not pid_alive(state.pid, state.pid_start):
                gone_since = gone_since or time.monotonic()
                if time.monotonic() - gone_since > GRACE_S:
                    return
            _wait(pidfd)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _pidfd(state: ContainerState) -> int | None:
    """A pidfd for init (readable once it has exited: we wake at once), if it still runs."""
    try:
        fd = os.pidfd_open(state.pid)
    except OSError:
        return None
    if not pid_alive(state.pid, state.pid_start):        # the PID is someone else's now
        os.close(fd)
        return None
    return fd


def _wait(pidfd: int | None) -> None:
    if pidfd is None:
        time.sleep(POLL_S)
        return
    ready, _, _ = select.select([pidfd], [], [], POLL_S)
    if ready:
        time.sleep(0.01)          # init is gone: the monitor writes exit.json next; don't spin
