"""What every process of the tree shares: the launcher's modes, the exit codes, the event
pipe, and the plumbing of a forked child (its main, its stdio, its fds, its exit status).

launcher.py, monitor.py, init.py and command.py each hold one process's own work (the
module docstring of launcher.py draws the tree); exec.py's launcher and joiner use the
same plumbing.
"""
from __future__ import annotations

import json
import os
import signal

from pykvm.errors import ContainerError, PyKvmError

__all__ = ["FOREGROUND", "DETACHED", "CREATED", "EXIT_NOT_FOUND", "EXIT_CANNOT_EXEC",
           "EXIT_SETUP_FAILED", "EventPipe", "ExecFailed", "SignalForwarder", "child_main",
           "install_stdio", "close_other_fds", "preserved_fds", "inherit_preserved_fds", "detach_stdio",
           "kill_quietly", "exit_code", "waitpid_retry", "FIRST_PRESERVED_FD"]

# The launcher's three modes.
FOREGROUND = "foreground"         # `run`: wait for the container, stdio passed through
DETACHED = "detached"             # `run -d`: output to container.log, return at once
CREATED = "created"               # `oci create`: set up, then wait for `oci start`

EXIT_NOT_FOUND = 127              # a shell's "command not found" (and Docker's)
EXIT_CANNOT_EXEC = 126            # found but not executable
EXIT_SETUP_FAILED = 125           # the runtime itself failed (Docker's convention)
MAX_FD = 1 << 20                  # fs.nr_open's default: no fd number is above it
FIRST_PRESERVED_FD = 3            # --preserve-fds N: the caller's fds 3 .. 3+N-1 (runc's ExtraFiles)


class EventPipe:
    """The child -> launcher event pipe (one JSON object per line) and its ack pipe."""

    def __init__(self):
        self.events_r, self.events_w = os.pipe2(os.O_CLOEXEC)
        self.ack_r, self.ack_w = os.pipe2(os.O_CLOEXEC)
        self._buffer = b""

    def send(self, **event) -> None:
        os.write(self.events_w, json.dumps(event).encode() + b"\n")

    def receive(self) -> dict | None:
        while b"\n" not in self._buffer:
            chunk = os.read(self.events_r, 4096)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def wait_ack(self, launcher_reports: bool = False) -> None:
        """Wait for the launcher's go-ahead.  `launcher_reports`: no go-ahead means the
        launcher failed at something it reports itself (a hook): leave without a word."""
        if os.read(self.ack_r, 1) != b"1":
            if launcher_reports:
                os._exit(EXIT_SETUP_FAILED)
            raise ContainerError("the launcher went away during setup")

    def ack(self) -> None:
        try:
            os.write(self.ack_w, b"1")
        except BrokenPipeError:
            pass                          # the child died: its error, if any, is next in the event pipe

    def child_side(self) -> None:
        os.close(self.events_r)
        os.close(self.ack_w)

    def launcher_side(self) -> None:
        os.close(self.events_w)
        os.close(self.ack_r)


class ExecFailed(Exception):
    """The command could not be started: an exit code and a message for the user."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def child_main(body, pipe: EventPipe | None = None) -> None:
    """Run a forked child's body and _exit with its status: never return into the parent's code."""
    code = EXIT_SETUP_FAILED
    try:
        code = body()
    except ExecFailed as e:
        code = e.code
        _report(pipe, str(e), code)
    except PyKvmError as e:
        _report(pipe, str(e), code)
    except BrokenPipeError:
        pass            # the launcher stopped reading: it has reported the first error already
    except BaseException as e:                                  # noqa: BLE001 - must not escape a child
        _report(pipe, f"container setup failed: {type(e).__name__}: {e}", code)
    finally:
        os._exit(code if isinstance(code, int) else EXIT_SETUP_FAILED)


def _report(pipe: EventPipe | None, message: str, code: int) -> None:
    try:
        if pipe is not None:
            pipe.send(error=message, code=code)
        else:
            os.write(2, f"pykvm: error: {message}\n".encode())
    except OSError:
        os.write(2, f"pykvm: error: {message}\n".encode())


def install_stdio(stdio: dict) -> dict:
    """Make the container's stdio our 0, 1, 2 (so no child inherits the launcher's)."""
    for target, fd in enumerate((stdio["in"], stdio["out"], stdio["err"])):
        if fd != target:
            os.dup2(fd, target)
    for fd in stdio["close"]:
        if fd > 2:
            os.close(fd)
    return {"in": 0, "out": 1, "err": 2, "close": []}


def close_other_fds(keep: set[int], preserved: int = 0) -> None:
    """Close every fd above 2 except `keep` and the `preserved` fds the caller passed on
    (preserved_fds): a host fd left open in the container is a way out (CVE-2024-21626,
    runc's leaked cgroup directory fd)."""
    low = 3
    for fd in sorted(fd for fd in {*keep, *preserved_fds(preserved)} if fd >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, MAX_FD)


def preserved_fds(count: int) -> range:
    """runc's --preserve-fds N: the caller's fds 3 .. 3+N-1, which reach the container's process
    at the same numbers.  They are open before pykvm opens anything (pykvm-runc checks that
    first), so none of pykvm's own fds can take one of these numbers."""
    return range(FIRST_PRESERVED_FD, FIRST_PRESERVED_FD + count)


def inherit_preserved_fds(count: int) -> None:
    """The last step before execve(2): the preserved fds without close-on-exec, so that they
    survive it (runc passes them as exec.Cmd's ExtraFiles, which the child gets the same way)."""
    for fd in preserved_fds(count):
        os.set_inheritable(fd, True)


def detach_stdio() -> None:
    """0, 1, 2 to /dev/null.  The monitor keeps no terminal or pipe open (the command's output
    ends with the command); nor does init once the command has its copies."""
    try:
        null = os.open(os.devnull, os.O_RDWR)
    except OSError:                                      # a container without /dev/null
        os.closerange(0, 3)
        return
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def kill_quietly(pid: int) -> None:
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def exit_code(status: int) -> int:
    """A wait status as a shell shows it: the exit code, or 128 + the signal number."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def waitpid_retry(pid: int) -> tuple[int, int]:
    while True:
        try:
            return os.waitpid(pid, 0)
        except InterruptedError:
            continue


class SignalForwarder:
    """While a launcher waits: SIGINT/SIGTERM/SIGHUP go to the container's init instead."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)

    def __init__(self, target):
        self.target = target
        self.saved = {}
        for sig in self.SIGNALS:
            try:
                self.saved[sig] = signal.signal(sig, self._forward)
            except ValueError:                         # not the main thread: leave signals alone
                break

    def _forward(self, signo, _frame) -> None:
        pid = self.target()
        if pid:
            try:
                os.kill(pid, signo)
            except ProcessLookupError:
                pass

    def restore(self) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
