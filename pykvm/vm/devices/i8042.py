"""The i8042 keyboard controller, reduced to what a VM needs: status, a few commands, reset.

References: the IBM PC/AT Technical Reference (8042 keyboard controller) and
the OSDev summary at https://wiki.osdev.org/%228042%22_PS/2_Controller .  Two
ports matter:

    port 0x60  data: read the output buffer; write a byte to the keyboard, or
               the parameter of a pending controller command
    port 0x64  read: status register; write: a controller command

The bus maps the controller at 0x60 with length 5, as Firecracker does, so the
device sees offset 0 (data) and offset 4 (command/status).  Ports 0x61-0x63
inside that window belong to other chips.  Port 0x61 is system control port B
(PIT channel 2 gate, speaker enable, OUT2): KVM's in-kernel PIT answers it,
because pykvm.vm.machine creates the PIT with KVM_PIT_SPEAKER_DUMMY (as
Firecracker does), so those accesses never leave the kernel.  0x62 and 0x63
read as all-ones here.

What is here: the status register (no data pending unless a command produced
a reply), the command byte (0x20/0x60), the self tests (0xAA, 0xAB, 0xA9),
keyboard/aux enable and disable, the output port (0xD0/0xD1), and the CPU
reset line: command 0xFE, or output port bit 0 written as 0, calls `reset()`.
Firecracker treats a guest reset as "the VM ends" and so does pykvm.
Not here yet: scancodes from the host, and IRQ 1/12 (nothing here produces
unsolicited data, so no interrupt is ever due).
"""
from __future__ import annotations

import collections
from typing import Callable

from pykvm.vm.devices.bus import BusDevice

__all__ = ["I8042", "I8042_BASE", "I8042_LENGTH"]

I8042_BASE = 0x60               # data port; the command/status port is I8042_BASE + 4
I8042_LENGTH = 5                # 0x60..0x64
DATA = 0                        # offset of port 0x60
COMMAND = 4                     # offset of port 0x64 (write: command, read: status)
STATUS = 4

# --- status register bits (read from port 0x64)
STATUS_OBF = 0x01               # output buffer full: a byte waits at port 0x60
STATUS_IBF = 0x02               # input buffer full: the controller is busy (never: it is instant)
STATUS_SYS = 0x04               # system flag: POST passed (set through the command byte)
STATUS_CMD = 0x08               # last write went to port 0x64 (a command), not 0x60 (data)
STATUS_UNLOCKED = 0x10          # keyboard inhibit switch off (keyboard usable)
STATUS_AUX_OBF = 0x20           # the waiting byte is from the aux (mouse) port
STATUS_TIMEOUT = 0x40           # transmit timeout
STATUS_PARITY = 0x80            # parity error

# --- the command byte (read with 0x20, written with 0x60)
CB_KBD_INT = 0x01               # raise IRQ 1 when keyboard data is ready
CB_AUX_INT = 0x02               # raise IRQ 12 when aux data is ready
CB_SYS = 0x04                   # the system flag, mirrored in STATUS_SYS
CB_KBD_DISABLE = 0x10           # keyboard clock off
CB_AUX_DISABLE = 0x20           # aux clock off
CB_TRANSLATE = 0x40             # translate scancode set 2 to set 1
CB_RESET_VALUE = CB_KBD_INT | CB_SYS | CB_TRANSLATE   # what a PC BIOS leaves behind

# --- controller commands (written to port 0x64)
CMD_READ_CB = 0x20              # reply: the command byte
CMD_WRITE_CB = 0x60             # next data byte: the new command byte
CMD_AUX_DISABLE = 0xA7          # aux clock off
CMD_AUX_ENABLE = 0xA8           # aux clock on
CMD_AUX_TEST = 0xA9             # reply: 0x00 (aux interface ok)
CMD_SELF_TEST = 0xAA            # reply: 0x55 (controller ok)
CMD_KBD_TEST = 0xAB             # reply: 0x00 (keyboard interface ok)
CMD_KBD_DISABLE = 0xAD          # keyboard clock off
CMD_KBD_ENABLE = 0xAE           # keyboard clock on
CMD_READ_OUTPUT_PORT = 0xD0     # reply: the output port
CMD_WRITE_OUTPUT_PORT = 0xD1    # next data byte: the output port
CMD_PULSE_RESET = 0xFE          # pulse output port bit 0 low: reset the CPU

# --- replies
SELF_TEST_OK = 0x55             # reply to CMD_SELF_TEST
INTERFACE_OK = 0x00             # reply to CMD_KBD_TEST and CMD_AUX_TEST
KBD_ACK = 0xFA                  # a keyboard acknowledges every command byte

# --- the output port (read with 0xD0, written with 0xD1)
OUT_RESET_N = 0x01              # CPU reset line, active low: writing 0 resets the machine
OUT_A20 = 0x02                  # A20 gate
OUT_RESET_VALUE = OUT_RESET_N | OUT_A20


class I8042(BusDevice):
    """The keyboard controller; `reset()` is called when the guest pulls the CPU reset line."""

    def __init__(self, reset: Callable[[], None]):
        self._reset = reset
        self._output: collections.deque[int] = collections.deque()   # bytes waiting at port 0x60
        self._last = 0                  # port 0x60 keeps its last byte when the buffer is empty
        self._command_byte = CB_RESET_VALUE
        self._output_port = OUT_RESET_VALUE
        self._pending: int | None = None   # a command waiting for its data byte
        self._last_was_command = False

    def get_state(self) -> dict:
        """The output buffer, the command byte, the output port and a command awaiting its data."""
        return {"output": list(self._output), "last": self._last, "command_byte": self._command_byte,
                "output_port": self._output_port, "pending_command": self._pending,
                "last_was_command": self._last_was_command}

    def set_state(self, state: dict) -> None:
        self._output = collections.deque(b & 0xFF for b in state["output"])
        self._last, self._command_byte = state["last"] & 0xFF, state["command_byte"] & 0xFF
        self._output_port = state["output_port"] & 0xFF
        self._pending = state["pending_command"]
        self._last_was_command = bool(state["last_was_command"])

    def read(self, offset: int, size: int) -> int:
        """Port 0x60: the next waiting byte; port 0x64: status."""
        if offset == DATA:
            if self._output:
                self._last = self._output.popleft()
            return self._last
        if offset == STATUS:
            return self._status()
        return super().read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        """Port 0x60: data (a command parameter or a keyboard byte); port 0x64: a command."""
        value &= 0xFF
        if offset == DATA:
            self._last_was_command = False
            self._write_data(value)
        elif offset == COMMAND:
            self._last_was_command = True
            self._command(value)

    def _status(self) -> int:
        status = STATUS_UNLOCKED
        if self._output:
            status |= STATUS_OBF
        if self._command_byte & CB_SYS:
            status |= STATUS_SYS
        if self._last_was_command:
            status |= STATUS_CMD
        return status

    def _reply(self, *data: int) -> None:
        self._output.extend(data)

    def _command(self, command: int) -> None:
        replies = {
            CMD_READ_CB: lambda: self._command_byte,
            CMD_SELF_TEST: lambda: SELF_TEST_OK,
            CMD_KBD_TEST: lambda: INTERFACE_OK,
            CMD_AUX_TEST: lambda: INTERFACE_OK,
            CMD_READ_OUTPUT_PORT: lambda: self._output_port,
        }
        self._pending = None
        if command in replies:
            self._reply(replies[command]())
        elif command in (CMD_WRITE_CB, CMD_WRITE_OUTPUT_PORT):
            self._pending = command
        elif command == CMD_KBD_DISABLE:
            self._command_byte |= CB_KBD_DISABLE
        elif command == CMD_KBD_ENABLE:
            self._command_byte &= ~CB_KBD_DISABLE
        elif command == CMD_AUX_DISABLE:
            self._command_byte |= CB_AUX_DISABLE
        elif command == CMD_AUX_ENABLE:
            self._command_byte &= ~CB_AUX_DISABLE
        elif command == CMD_PULSE_RESET:
            self._reset()

    def _write_data(self, value: int) -> None:
        pending, self._pending = self._pending, None
        if pending == CMD_WRITE_CB:
            self._command_byte = value
        elif pending == CMD_WRITE_OUTPUT_PORT:
            self._output_port = value
            if not value & OUT_RESET_N:
                self._reset()
        else:
            self._reply(KBD_ACK)        # a byte for the keyboard: acknowledged, otherwise ignored
