"""--isolation vm, the host's half of hvc2 (pykvm/vm/command_channel.py): our stdin (-i) into
a virtio console's host queue, escaped, with its end marked, and signals for the command;
only after the guest said READY.

The console is the real device, not yet set up by a driver: what the guest would be handed
stays in its host queue, which get_state() shows (the guest's half: tests/unit/test_rundisk.py).
"""
from __future__ import annotations

import os
import time

import pytest

from pykvm.errors import ConfigError
from pykvm.vm.command_channel import CommandChannel
from pykvm.vm.devices.virtio.console import VirtioConsole
from pykvm.vm.rundisk import END_OF_INPUT, STDIN_READY, escape_stdin, signal_message

WAIT_S = 30.0       # a bound on waiting for the reader thread on a loaded machine


def queued(console: VirtioConsole) -> bytes:
    return bytes.fromhex(console.get_state()["host_queue"])


def wait_for_queue(console: VirtioConsole, expected: bytes) -> bytes:
    deadline = time.monotonic() + WAIT_S
    while queued(console) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return queued(console)


def stdin_with(data: bytes) -> int:
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    return read_end


def test_stdin_is_sent_escaped_after_ready_then_its_end():
    console = VirtioConsole(out=lambda data: None)
    fd = stdin_with(b"a\0b\n")
    with CommandChannel(fd) as pipe:
        pipe.start(console)
        pipe.guest_output(STDIN_READY)
        assert wait_for_queue(console, escape_stdin(b"a\0b\n") + END_OF_INPUT) == b"a\0\0b\n" + END_OF_INPUT
    os.close(fd)


def test_nothing_is_sent_without_ready_and_close_stops_the_waiting_reader():
    console = VirtioConsole(out=lambda data: None)
    fd = stdin_with(b"typed early")
    pipe = CommandChannel(fd)
    pipe.start(console)
    pipe.guest_output(b"kernel noise, not the word")
    pipe.close()
    assert queued(console) == b""
    os.close(fd)


def test_a_closed_stdin_is_an_immediate_end():
    console = VirtioConsole(out=lambda data: None)
    closed = 999                        # not open, as fd 0 after `<&-`
    with pytest.raises(OSError):
        os.fstat(closed)
    with CommandChannel(closed) as pipe:
        pipe.start(console)
        pipe.guest_output(STDIN_READY)
        assert wait_for_queue(console, END_OF_INPUT) == END_OF_INPUT


def test_signals_are_sent_whole_between_stdin_s_bytes_and_without_stdin():
    console = VirtioConsole(out=lambda data: None)
    with CommandChannel(None) as channel:
        channel.start(console)
        channel.send_signal(15)                 # before READY: kept until the guest can hear it
        assert queued(console) == b""
        channel.guest_output(STDIN_READY)
        channel.send_signal(2)
        assert wait_for_queue(console, b"\0S\x0f\0S\x02") == signal_message(15) + signal_message(2)


def test_a_signal_number_that_does_not_fit_a_byte_is_refused():
    with CommandChannel(None) as channel, pytest.raises(ConfigError, match="signal 300"):
        channel.send_signal(300)
