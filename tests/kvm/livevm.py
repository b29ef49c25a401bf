"""A pykvm process driven as a user drives it: keys on its stdin, its console read as it comes.

Used by tests/kvm/test_snapshot.py and tests/bench/bench_snapshot.py.  Every
wait is a bounded poll for something the guest printed, never a fixed sleep.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

from clitools import ROOT

__all__ = ["LiveVm", "CTRL_A"]

CTRL_A = b"\x01"
WAIT_S = 60                 # a guest that has not printed what we wait for by then is stuck


class LiveVm:
    """`python -m pykvm ARGS` with pipes; stdout and stderr collected by two reader threads."""

    def __init__(self, *args: str):
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "pykvm", *args], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out = bytearray()
        self.err = bytearray()
        self.first_output: float | None = None      # monotonic time of the first stdout byte
        self._readers = [threading.Thread(target=self._read, args=(stream, buffer), daemon=True)
                         for stream, buffer in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, buffer: bytearray) -> None:
        while data := os.read(stream.fileno(), 65536):
            if buffer is self.out and self.first_output is None:
                self.first_output = time.monotonic()
            buffer += data

    @property
    def text(self) -> str:
        return self.out.decode(errors="replace").replace("\r\n", "\n")

    def send(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def wait_for(self, pattern: str, start: int = 0, stream: str = "out", timeout: float = WAIT_S) -> re.Match:
        """The first match of `pattern` in the console (or stderr) from character `start` on."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text if stream == "out" else self.err.decode(errors="replace")
            match = re.compile(pattern, re.M).search(text, start)
            if match:
                return match
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} on std{stream} (exit {self.proc.poll()}); "
                                     f"console:\n{self.text[-2000:]}\nstderr:\n{self.err.decode(errors='replace')}")
            time.sleep(0.02)

    def command(self, line: str, answer: str) -> re.Match:
        """Type `line` at the shell and wait for `answer` after it."""
        start = len(self.text)
        self.send(line.encode() + b"\r")
        return self.wait_for(answer, start)

    def snapshot_by_signal(self, timeout: float = WAIT_S) -> None:
        """SIGUSR2, then wait for pykvm to say the snapshot is written."""
        written = self.err.count(b"snapshot written")
        self.proc.send_signal(signal.SIGUSR2)
        self._wait_snapshots(written + 1, timeout)

    def snapshot_by_key(self) -> None:
        """Ctrl-A s, then wait for pykvm to say the snapshot is written."""
        written = self.err.count(b"snapshot written")
        self.send(CTRL_A + b"s")
        self._wait_snapshots(written + 1)

    def _wait_snapshots(self, count: int, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while self.err.count(b"snapshot written") < count:
            assert self.proc.poll() is None and time.monotonic() < deadline, \
                f"no snapshot written; stderr:\n{self.err.decode(errors='replace')}"
            time.sleep(0.02)

    def quit(self) -> int:
        """Ctrl-A x; the exit status (killed if it does not go within WAIT_S)."""
        if self.proc.poll() is None:
            try:
                self.send(CTRL_A + b"x")
            except BrokenPipeError:
                pass
        try:
            status = self.proc.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = self.proc.wait()
        for reader in self._readers:
            reader.join(WAIT_S)
        self.proc.stdin.close()
        return status

    def __enter__(self) -> LiveVm:
        return self

    def __exit__(self, *exc) -> None:
        self.quit()
