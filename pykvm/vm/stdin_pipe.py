"""The host end of `container run -i --isolation vm`: the caller's stdin, to the guest's hvc2.

    stdin (fd 0) -> reader thread -> escape_stdin -> VirtioConsole.receive -> hvc2
                                  -> at end of file: END_OF_INPUT
    hvc2 output (the guest's relay) -> guest_output: READY starts the reader

The guest's half and the byte protocol are pykvm/vm/rundisk.py's and container-init.c's:
the relay in the guest makes hvc2 raw and then says READY, so nothing is sent before a
byte could be read as typed text (echoed, \\r turned into \\n).  Unlike a terminal's
console (pykvm.vm.console), this one has no escape key and no raw mode: stdin may be a
file or a pipe of any bytes, and its end must reach the command as an end of file.

If the guest reads slower than stdin delivers, the reader waits for the console's host
queue to drain (back-pressure to whoever writes our stdin), so no input is lost.
"""
from __future__ import annotations

import os
import select
import threading

from pykvm.vm.rundisk import END_OF_INPUT, STDIN_READY, escape_stdin

__all__ = ["StdinPipe"]

READ_CHUNK = 4096               # bytes per read(2) of stdin
ROOM_POLL_SECONDS = 0.1         # how often a reader waiting for the guest checks for close()


class StdinPipe:
    """Copies `stdin_fd` to a virtio console once the guest is READY, then END_OF_INPUT.

    Give `guest_output` to the console as its output callback, and the console itself
    to start() once the machine has it; close() stops the reader wherever it is."""

    def __init__(self, stdin_fd: int = 0):
        self._stdin_fd = stdin_fd
        self._console = None
        self._ready = threading.Event()
        self._closing = threading.Event()
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="pykvm-stdin", daemon=True)

    def guest_output(self, data: bytes) -> None:
        """What the guest writes on the console: READY, once its end is raw."""
        if STDIN_READY in data:
            self._ready.set()

    def start(self, console) -> None:
        self._console = console
        self._thread.start()

    def close(self) -> None:
        """Stop the reader (idempotent)."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._ready.set()
        os.write(self._stop_w, b"x")
        if self._thread.is_alive():
            self._thread.join()
        os.close(self._stop_r)
        os.close(self._stop_w)

    def __enter__(self) -> StdinPipe:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self) -> None:
        self._ready.wait()
        while not self._closing.is_set():
            chunk = self._read_chunk()
            if chunk is None:
                return                          # close()
            self._deliver(escape_stdin(chunk) if chunk else END_OF_INPUT)
            if not chunk:
                return                          # end of file: said, and done

    def _read_chunk(self) -> bytes | None:
        """Bytes of stdin, b"" at its end (or when it is not open), None on close()."""
        poller = select.poll()
        poller.register(self._stop_r, select.POLLIN)
        poller.register(self._stdin_fd, select.POLLIN)
        while True:
            ready = dict(poller.poll())
            if self._stop_r in ready:
                return None
            try:
                return os.read(self._stdin_fd, READ_CHUNK)
            except BlockingIOError:
                continue
            except OSError:                     # a hung-up terminal; stdin closed (`<&-`, EBADF)
                return b""

    def _deliver(self, data: bytes) -> None:
        """All of `data` into the console's host queue, waiting for room while the guest is behind."""
        while data and not self._closing.is_set():
            data = data[self._console.receive(data):]
            if data:
                self._console.wait_for_room(ROOM_POLL_SECONDS)
