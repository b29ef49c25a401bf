"""VMM processes driven through their consoles, one or many at once.

Each VMM is a whole process, as a user starts it (`python -m pykvm boot ...` or
QEMU), with the guest's serial console on its stdin and stdout.  One selector
reads every VMM's stdout and stderr as they come, so fifty guests waiting at
their prompts need no thread each, and no pipe fills up and stalls a VMM.
Every wait has a deadline; `kill_all` ends what is left (by pid), for a
`finally:`.

Used by tests/bench/bench_vmm_memory.py and bench_density.py.
"""
from __future__ import annotations

import os
import selectors
import subprocess
import time
from typing import Callable, Iterable

__all__ = ["Vmm", "spawn_all", "wait_all", "kill_all", "TINY_PROMPT", "tiny_idle"]

TINY_PROMPT = b"tiny$ "
REAP_S = 10             # a VMM whose stdout is closed has exited or is about to


class Vmm:
    """One VMM process with pipes; what it printed so far, and when it ended."""

    def __init__(self, argv: list[str]):
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.console = bytearray()
        self.errors = bytearray()
        self.open = {self.proc.stdout: self.console, self.proc.stderr: self.errors}
        self.ended: float | None = None         # monotonic time we saw it exit

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read(self, stream) -> None:
        """Take what `stream` has; at end of file stop reading it, and reap once both are closed."""
        data = os.read(stream.fileno(), 65536)
        self.open[stream] += data
        if not data:
            del self.open[stream]
            if not self.open:
                self.proc.wait(timeout=REAP_S)
                self.ended = time.monotonic()

    def send(self, data: bytes) -> None:
        """Type `data` on the guest's console; a VMM that is already gone is left to its status."""
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass

    def tail(self) -> str:
        """The last lines it printed, console and stderr, for a report of what went wrong."""
        console = self.console.decode(errors="replace").replace("\r\n", "\n")[-300:]
        return f"console ...{console!r}; stderr ...{self.errors.decode(errors='replace')[-300:]!r}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except BrokenPipeError:
                pass


def spawn_all(argv: list[str], count: int) -> list[Vmm]:
    """`count` copies of `argv`, started back to back; none is left running if one cannot start."""
    vmms: list[Vmm] = []
    try:
        for _ in range(count):
            vmms.append(Vmm(argv))
    except BaseException:
        kill_all(vmms)
        raise
    return vmms


def wait_all(vmms: list[Vmm], done: Callable[[Vmm], bool], deadline: float) -> list[Vmm]:
    """Read every console until `done(vm)` holds for each VM that is still running, or until
    `deadline` (time.monotonic()).  Returns the VMs for which it never held."""
    pending = [vm for vm in vmms if not done(vm)]
    with selectors.DefaultSelector() as sel:
        for vm in pending:
            for stream in vm.open:
                sel.register(stream, selectors.EVENT_READ, vm)
        while pending and (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(min(left, 1.0)):
                vm = key.data
                vm.read(key.fileobj)
                if key.fileobj not in vm.open:
                    sel.unregister(key.fileobj)
            pending = [vm for vm in pending if not done(vm) and vm.ended is None]
    return [vm for vm in vmms if not done(vm)]


def kill_all(vmms: Iterable[Vmm]) -> None:
    for vm in vmms:
        vm.kill()


def tiny_idle(vm: Vmm) -> bool:
    """guests/tiny ran a one-command script (cmdline "run=COMMAND") and waits at its shell:
    the prompt after the script's own `tiny$ COMMAND` line is the last thing on the console."""
    return vm.console.count(TINY_PROMPT) >= 2 and vm.console.endswith(TINY_PROMPT)
