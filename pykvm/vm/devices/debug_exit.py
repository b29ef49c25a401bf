"""QEMU's isa-debug-exit: a port a guest writes to end the VM with a chosen exit status.

QEMU's hw/misc/debugexit.c, as used by `-device isa-debug-exit,iobase=0xf4,iosize=0x04`:
a write of V (any width 1-4, any offset in the window) ends QEMU with exit
status (V << 1) | 1; a read returns 0.  The status is always odd, so a test
harness can tell "the guest chose this" from QEMU's own exit status 0.  As
with any process, only the low 8 bits survive as the exit code the shell sees:
`outb(0xf4, 0)` gives 1, `outb(0xf4, 0x10)` gives 33.

pykvm maps the same device at the same port, so one guest ends itself with
the same status under both VMMs.  The device does not exit the process
itself: it calls `stop(status)` and the machine ends the run loop.
"""
from __future__ import annotations

from typing import Callable

from pykvm.vm.devices.bus import BusDevice

__all__ = ["DebugExit", "DEBUG_EXIT_BASE", "DEBUG_EXIT_LENGTH", "exit_status"]

DEBUG_EXIT_BASE = 0xF4          # the iobase the QEMU test suites and pykvm use
DEBUG_EXIT_LENGTH = 4           # iosize=0x04: ports 0xf4-0xf7


def exit_status(value: int) -> int:
    """The exit status QEMU's isa-debug-exit gives for a guest write of `value`."""
    return (value << 1) | 1


class DebugExit(BusDevice):
    """The isa-debug-exit window.  `stop(status)` is called with (V << 1) | 1 for a write of V."""

    def __init__(self, stop: Callable[[int], None]):
        self._stop = stop

    def read(self, offset: int, size: int) -> int:
        """Reads return 0, as in QEMU (a guest can probe for the device this way)."""
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        """Any write ends the VM; the offset inside the window does not matter."""
        self._stop(exit_status(value))

    def get_state(self) -> dict:
        """No registers: nothing to keep."""
        return {}

    def set_state(self, state: dict) -> None:
        """No registers: nothing to restore."""
