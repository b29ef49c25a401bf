"""Drive real gdb (Debian's, batch mode) against `pykvm boot --gdb` or QEMU's gdbstub.

Used by tests/kvm/test_gdb.py and the example in docs/07-stopping-a-running-kernel.md.
Each gdb command list is wrapped in markers (`echo @@ NAME\\n`), so a test can
cut gdb's output into the answer of each step.
"""
from __future__ import annotations

import os
import re
import select
import shutil
import socket
import subprocess
import sys
import time

from tinyvm import ROOT, TINY_ELF, qemu_command

__all__ = ["GDB", "gdb_problem", "start_pykvm", "start_qemu", "gdb_argv", "sections", "symbol", "Reader"]

GDB = "gdb"
STARTUP_TIMEOUT = 60
LISTENING = re.compile(rb"gdb: (?:waiting for a debugger|listening) on [\w.:]+:(\d+)")


def gdb_problem() -> str | None:
    return None if shutil.which(GDB) else f"{GDB} is not installed (.ci/packages installs gdb)"


def start_pykvm(cmdline: str, *extra: str) -> tuple[subprocess.Popen, int]:
    """`pykvm boot --gdb 127.0.0.1:0 --gdb-wait`, and the port it got (from its stderr line)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pykvm", "boot", "--kernel", str(TINY_ELF), "--cmdline", cmdline,
         "--gdb", "127.0.0.1:0", "--gdb-wait", *extra],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    found = Reader(proc.stderr).until(LISTENING, STARTUP_TIMEOUT)
    return proc, int(found.group(1))


def symbol(elf, name: str) -> int:
    """The address of `name` in the ELF's symbol table (binutils' nm)."""
    table = subprocess.run(["nm", str(elf)], capture_output=True, text=True, check=True).stdout
    for line in table.splitlines():
        address, _, found = line.split()
        if found == name:
            return int(address, 16)
    raise AssertionError(f"{name} not in {elf}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_qemu(cmdline: str) -> tuple[subprocess.Popen, int]:
    """QEMU TCG booting the same ELF, stopped (-S), its gdbstub on a free port."""
    port = free_port()
    argv = qemu_command(TINY_ELF, cmdline, accel="tcg") + ["-gdb", f"tcp:127.0.0.1:{port}", "-S"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, port


def gdb_argv(port: int, steps: list[tuple[str, list[str]]]) -> list[str]:
    """gdb in batch mode: connect (retrying while the VMM starts), then each named step."""
    argv = [GDB, "-batch", "-nx", "-ex", "set pagination off", "-ex", "set confirm off",
            "-ex", "set tcp auto-retry on", "-ex", "set tcp connect-timeout 30",
            "-ex", f"target remote 127.0.0.1:{port}"]
    for name, commands in steps:
        argv += ["-ex", f"echo @@ {name}\\n"]
        for command in commands:
            argv += ["-ex", command]
    return argv + [str(TINY_ELF)]


def sections(output: str) -> dict[str, str]:
    """gdb's output cut at the `@@ NAME` markers: {NAME: what the step printed}."""
    parts = re.split(r"^@@ (\S+)\n", output, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


class Reader:
    """Read a pipe as it fills, with a deadline: wait for a pattern without fixed sleeps."""

    def __init__(self, pipe):
        self.pipe, self.data = pipe, b""

    def until(self, pattern: re.Pattern | bytes, timeout: float, start: int = 0):
        """Wait for `pattern` in what was read from offset `start` on."""
        deadline = time.monotonic() + timeout
        while True:
            found = pattern.search(self.data, start) if isinstance(pattern, re.Pattern) else (
                self.data.find(pattern, start) >= 0 or None)
            if found:
                return found
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} within {timeout}s; got {self.data[-2000:]!r}"
            ready, _, _ = select.select([self.pipe], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(self.pipe.fileno(), 65536)
                assert chunk, f"pipe closed before {pattern!r}; got {self.data[-2000:]!r}"
                self.data += chunk
