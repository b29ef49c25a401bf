"""pykvm's channel to the command in a `container run --isolation vm` guest: hvc2.

    stdin (fd 0, with -i) -> escape_stdin -> VirtioConsole.receive -> hvc2 -> the guest's relay
                             at end of file: END_OF_INPUT              -> the command's pipe
    send_signal(N)        -> signal_message(N)                        -> kill(command, N)
    hvc2 output (the guest's relay) -> guest_output: READY starts the sending

The guest's half and the byte protocol are pykvm/vm/rundisk.py's and container-init.c's:
the relay in the guest makes hvc2 raw and then says READY, so nothing is sent before a
byte could be read as typed text (echoed, \\r turned into \\n).  Unlike a terminal's
console (pykvm.vm.console), this one has no escape key and no raw mode: stdin may be a
file or a pipe of any bytes, and its end must reach the command as an end of file.

One thread sends everything, so a signal message never lands inside a half-sent escape.
send_signal() only writes a byte to a pipe that thread watches: safe from a signal
handler.  If the guest reads slower than stdin delivers, the thread waits for the
console's host queue to drain (back-pressure to whoever writes our stdin).
"""
from __future__ import annotations

import os
import select
import threading

from pykvm.vm.rundisk import END_OF_INPUT, STDIN_READY, escape_stdin, signal_message

__all__ = ["CommandChannel"]

READ_CHUNK = 4096               # bytes per read(2) of stdin
ROOM_POLL_SECONDS = 0.1         # how often a sender waiting for the guest checks for close()
STOP = 0                        # on the wake-up pipe: close(); any other byte is a signal number


class CommandChannel:
    """Sends `stdin_fd` (None: no stdin, as without -i) and signals to the guest's relay
    through a virtio console, once the guest is READY.

    Give `guest_output` to the console as its output callback, and the console itself
    to start() once the machine has it; close() stops the sender wherever it is."""

    def __init__(self, stdin_fd: int | None = 0):
        self._stdin_fd = stdin_fd
        self._console = None
        self._ready = threading.Event()
        self._closing = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="pykvm-channel", daemon=True)

    def guest_output(self, data: bytes) -> None:
        """What the guest writes on the console: READY, once its end is raw."""
        if STDIN_READY in data:
            self._ready.set()

    def start(self, console) -> None:
        self._console = console
        self._thread.start()

    def send_signal(self, signo: int) -> None:
        """Have the guest send signal `signo` to the command (once it is READY)."""
        signal_message(signo)                   # checked here, where the caller can hear of it
        os.write(self._wake_w, bytes([signo]))

    def close(self) -> None:
        """Stop the sender (idempotent)."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._ready.set()
        os.write(self._wake_w, bytes([STOP]))
        if self._thread.is_alive():
            self._thread.join()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> CommandChannel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self) -> None:
        self._ready.wait()
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        if self._stdin_fd is not None:
            poller.register(self._stdin_fd, select.POLLIN)
        while not self._closing.is_set():
            ready = dict(poller.poll())
            if self._wake_r in ready:
                for signo in os.read(self._wake_r, READ_CHUNK):
                    if signo == STOP:
                        return
                    self._deliver(signal_message(signo))
            if self._stdin_fd in ready and (chunk := self._read_stdin()) is not None:
                self._deliver(escape_stdin(chunk) if chunk else END_OF_INPUT)
                if not chunk:
                    poller.unregister(self._stdin_fd)   # said once; signals may still come

    def _read_stdin(self) -> bytes | None:
        """Bytes of stdin; b"" at its end (also a hung-up terminal, and stdin closed, `<&-`:
        EBADF); None when a non-blocking stdin has nothing after all."""
        try:
            return os.read(self._stdin_fd, READ_CHUNK)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    def _deliver(self, data: bytes) -> None:
        """All of `data` into the console's host queue, waiting for room while the guest is behind."""
        while data and not self._closing.is_set():
            data = data[self._console.receive(data):]
            if data:
                self._console.wait_for_room(ROOM_POLL_SECONDS)
