"""One run of a command as a child process, measured from the outside.

    start = the monotonic clock just before fork(2) of the command
    first line = the moment the line we wait for is complete on the command's stdout pipe
    exit = the moment wait4(2) returns the command's status
    peak RSS, CPU time = the rusage wait4(2) returns: the command *and every descendant it
                         waited for* (getrusage(2), RUSAGE_CHILDREN semantics), so a launcher
                         that forks and reaps its helpers is counted whole

Why a spawner: a child's ru_maxrss can never be smaller than the resident set of
the process that forked it, because fork copies the parent's memory counters and
execve(2) folds the old memory's high-water mark into the child's (exec_mmap in
fs/exec.c).  Forked from `pykvm compare` itself, every run would report at least
compare's own size.  So each command is forked by a fresh, small Python
(`python -I -S`, SPAWNER below), which reports its own peak at fork time (VmHWM)
as the floor under every figure.  CLOCK_MONOTONIC is one clock for all processes, so the spawner's
fork time and our reading of the pipe can be subtracted.

Times are seconds; sizes are bytes (Linux reports ru_maxrss in KiB, getrusage(2)).
"""
from __future__ import annotations

import ast
import os
import re
import selectors
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

from pykvm.errors import PyKvmError

__all__ = ["Sample", "Stats", "run_once", "RunFailed", "KIB"]

KIB = 1024              # getrusage(2): ru_maxrss is in kilobytes (KiB) on Linux
READ_CHUNK = 65536      # bytes per read(2) from the child's pipes
# ECMA-48 control sequences (CSI: ESC [ params letter), which a shell's line editor sends to
# its terminal (busybox ash asks for the cursor position); they are not part of any line.
CSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

# Forks and execs argv[2:], waits, and writes to fd argv[1]: fork time, reap time, exit
# status, the command's ru_maxrss and CPU seconds, and its own VmHWM just before the fork (the
# floor; not its ru_maxrss, which includes the memory of the process that started it).
SPAWNER = """
import os, sys, time
report, argv = int(sys.argv[1]), sys.argv[2:]
with open("/proc/self/status") as status:   # proc(5): VmHWM, this memory's peak RSS in kB
    floor = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
start = time.monotonic()
pid = os.fork()
if pid == 0:
    os.close(report)
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
end = time.monotonic()
os.write(report, repr((start, end, os.waitstatus_to_exitcode(status), usage.ru_maxrss,
                       usage.ru_utime + usage.ru_stime, floor)).encode())
"""


class RunFailed(PyKvmError):
    """A measured run did not finish as expected (non-zero exit, no first line, timeout)."""


@dataclass(frozen=True)
class Sample:
    """What one run produced: its output and the four numbers measured from outside."""

    first_line_s: float     # launch -> the awaited line is complete on stdout
    exit_s: float           # launch -> wait4() returned
    peak_rss_bytes: int     # ru_maxrss of the child and its reaped descendants
    cpu_s: float            # ru_utime + ru_stime of the same
    floor_rss_bytes: int    # the spawner's peak RSS when it forked: no ru_maxrss can be below it
    status: int             # exit status (negative: killed by that signal)
    lines: list[str]        # stdout, split into lines, carriage returns removed
    stderr: str


@dataclass(frozen=True)
class Stats:
    """Median, min and max of some samples, plus the samples themselves."""

    median: float
    min: float
    max: float
    samples: list[float]

    @classmethod
    def of(cls, samples: list[float]) -> Stats:
        assert samples, "Stats of no samples"
        return cls(statistics.median(samples), min(samples), max(samples), list(samples))

    def as_dict(self) -> dict:
        return {"median": self.median, "min": self.min, "max": self.max, "samples": self.samples}


def run_once(argv: list[str], *, first_line=None, reply_after: str | None = None,
             reply: bytes = b"", timeout: float = 120.0, env: dict | None = None,
             label: str | None = None) -> Sample:
    """Run argv to completion and measure it; `label` names the run in errors.

    first_line: a predicate on a stdout line (None: the first non-empty line).
    reply_after / reply: when a line starting with reply_after appears, write
    `reply` to the child's stdin (the Linux guest's shell reads its console).
    timeout: seconds without any output after which the run is stopped; a bound on
    silence, not on the whole run, so a slow or loaded host only makes a live run longer.
    """
    awaited = first_line or (lambda line: line.strip() != "")
    label = label or f"`{_short(argv)}`"
    report_r, report_w = os.pipe()
    child = subprocess.Popen([sys.executable, "-I", "-S", "-c", SPAWNER, str(report_w), *argv],
                             stdin=subprocess.PIPE if reply_after else subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                             pass_fds=(report_w,), start_new_session=True)
    os.close(report_w)
    try:
        out, err, first = _read_until_eof(child, awaited, reply_after, reply, timeout, label)
        child.wait()
        start, end, status, maxrss_kib, cpu_s, floor_kib = _read_report(report_r, child, err)
    except BaseException:
        _kill(child)
        raise
    finally:
        os.close(report_r)
        for stream in (child.stdin, child.stdout, child.stderr):
            if stream is not None and not stream.closed:
                stream.close()
    lines = [_clean(line) for line in out.decode(errors="replace").split("\n")]
    if first is None:
        raise RunFailed(f"{label} printed no first line (exit status {status}): {_last_line(err)}")
    if status != 0:
        raise RunFailed(f"{label} exited with status {status}: {_last_line(err)}")
    # The line was written before the command ended: a reader that got to it after the
    # reporter saw the exit was late (a loaded host), so the exit bounds the first line.
    first = min(first, end)
    return Sample(first_line_s=first - start, exit_s=end - start, peak_rss_bytes=maxrss_kib * KIB,
                  cpu_s=cpu_s, floor_rss_bytes=floor_kib * KIB, status=status, lines=lines,
                  stderr=err.decode(errors="replace"))


def _read_report(fd: int, child, err: bytes) -> tuple:
    """The spawner's one-line report (see SPAWNER)."""
    data = b""
    while chunk := os.read(fd, READ_CHUNK):
        data += chunk
    if child.returncode != 0 or not data:
        raise RunFailed(f"the spawner failed (status {child.returncode}): {_last_line(err)}")
    return ast.literal_eval(data.decode())


def _read_until_eof(child, awaited, reply_after, reply, silence, label):
    """Drain stdout and stderr until both close; note when the awaited line completed.
    Give up when neither has said anything for `silence` seconds."""
    out, err, pending, first = bytearray(), bytearray(), b"", None
    deadline = time.monotonic() + silence
    with selectors.DefaultSelector() as sel:
        sel.register(child.stdout, selectors.EVENT_READ, "out")
        sel.register(child.stderr, selectors.EVENT_READ, "err")
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise RunFailed(f"{label} printed nothing for {silence:.0f} s; stopped it")
            for key, _ in sel.select(left):
                data = os.read(key.fileobj.fileno(), READ_CHUNK)
                if not data:
                    sel.unregister(key.fileobj)
                    continue
                deadline = time.monotonic() + silence
                if key.data == "err":
                    err += data
                    continue
                now = time.monotonic()
                out += data
                *complete, pending = (pending + data).split(b"\n")
                for raw in complete:
                    line = _clean(raw.decode(errors="replace"))
                    if first is None and awaited(line):
                        first = now
                    if reply_after and line.startswith(reply_after):
                        _send(child, reply)
    return bytes(out), bytes(err), first


def _clean(line: str) -> str:
    """A line as a reader sees it: no carriage returns (the UART sends CR LF), no control sequences."""
    return CSI_RE.sub("", line).replace("\r", "")


def _send(child, data: bytes) -> None:
    """Write the reply and close stdin (end of input, as when a user types it and leaves); once."""
    if child.stdin.closed:
        return
    try:
        child.stdin.write(data)
        child.stdin.close()
    except BrokenPipeError:
        pass


def _kill(child) -> None:
    """Stop a run we gave up on: the spawner and everything it started (its own session)."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait()


def _short(argv) -> str:
    text = " ".join(str(a) for a in argv)
    return text if len(text) <= 60 else text[:57] + "..."


def _last_line(stderr: bytes) -> str:
    lines = [line for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "(nothing on stderr)"
