"""The host end of the guest's serial line: your terminal.

    keyboard -> stdin (fd 0) -> reader thread -> Ctrl-A filter -> Serial16550.receive -> guest RBR
    guest THR -> Serial16550 out() -> ConsoleOutput.write -> stdout (fd 1)

Like QEMU's `-nographic`:
  * When stdin is a terminal it goes to raw mode, so every key (Ctrl-C
    included) reaches the guest as typed, and nothing is echoed twice.  Output
    post-processing stays on, as QEMU leaves it, so a guest's "\\n" still
    starts a new line.  The terminal is restored on every way out: close(),
    leaving the `with` block normally or by an exception, and SIGTERM, SIGHUP
    or SIGINT (the handler restores the terminal, then lets the signal do what
    it would have done: the default action, or the handler that was there).
  * Ctrl-A is the escape key: Ctrl-A x quits, Ctrl-A h prints help,
    Ctrl-A s writes a snapshot of the VM (`pykvm boot --snapshot-dir`),
    Ctrl-A Ctrl-A sends one Ctrl-A to the guest; any other key after Ctrl-A
    is swallowed.
  * Piped stdin works: the bytes go to the guest; at end of file the reader
    just stops and the guest keeps running.  If the guest reads slower than
    the pipe delivers, the reader waits for the UART's host queue to drain
    (back-pressure to the writer of the pipe), so no input is lost.

Output comes one byte per VM exit (a THR write), but goes out one write(2)
per line: ConsoleOutput collects bytes and writes them at a newline, when
FLUSH_BYTES have gathered, or FLUSH_SECONDS after the first byte of a burst
(a flusher thread), so a prompt without a newline still shows at once to a
human.  A write(2) per byte would double what a console byte costs: in the
L1 lane a Linux boot prints ~22,000 bytes, each write ~90 us there.  A full
non-blocking stdout (EAGAIN) is waited out; a closed one (EPIPE, as in
`pykvm boot | head -1`) ends the VM through ConsoleOutput's `on_broken`, as
`yes | head -1` ends `yes`.
"""
from __future__ import annotations

import errno
import os
import select
import signal
import termios
import threading
import time
from typing import Callable

__all__ = ["Console", "ConsoleOutput", "EscapeDecoder", "RawTerminal", "write_all",
           "ESCAPE_KEY", "HELP_TEXT", "QUIT", "HELP", "SNAPSHOT"]

ESCAPE_KEY = 0x01               # Ctrl-A, QEMU's default escape character
QUIT = "x"                      # Ctrl-A x: quit
HELP = "h"                      # Ctrl-A h: print HELP_TEXT
SNAPSHOT = "s"                  # Ctrl-A s: pause, write a snapshot, go on (pykvm.vm.snapshot)
HELP_TEXT = (b"\r\n"
             b"C-a h    print this help\r\n"
             b"C-a s    write a snapshot (pykvm boot --snapshot-dir DIR)\r\n"
             b"C-a x    exit pykvm\r\n"
             b"C-a C-a  send C-a to the guest\r\n")
READ_CHUNK = 4096               # bytes per os.read of stdin
ROOM_POLL_SECONDS = 0.1         # how often a reader waiting for the guest checks for close()
FLUSH_BYTES = 4096              # guest output written at once when this much has gathered ...
FLUSH_SECONDS = 0.005           # ... or this long after the first byte without a newline
SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)   # restore the terminal on these


def write_all(fd: int, data: bytes) -> None:
    """Write every byte to `fd`, waiting out EAGAIN on a non-blocking fd.  EPIPE raises BrokenPipeError."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            _wait_writable(fd)
            continue
        view = view[written:]


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _wait_writable(fd: int) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    poller.poll()


class ConsoleOutput:
    """Guest output to a host fd, a line per write(2).  Pass `write` as the UART's `out`;
    call flush() before anything else is printed (pykvm's own messages), close() at the end."""

    def __init__(self, fd: int = 1, on_broken: Callable[[], None] | None = None,
                 flush_bytes: int = FLUSH_BYTES):
        self.fd = fd
        self._on_broken = on_broken
        self._flush_bytes = flush_bytes     # 1: every byte at once (pykvm boot --trace)
        self.broken = False             # the reading end went away; output is dropped from now on
        self._pending = bytearray()
        self._lock = threading.Lock()
        self._burst = threading.Event()     # set: bytes wait for the flusher
        self._scheduled = False             # the same, read on the hot path without a call
        self._closed = False
        self._flusher: threading.Thread | None = None

    def write(self, data: bytes) -> None:
        """Queue `data`; write it now if it ends a line or fills FLUSH_BYTES, else soon.

        On the VM-exit path (a call per guest byte), so: one lock, no method calls
        unless a line ends or a burst begins."""
        with self._lock:
            pending = self._pending
            pending += data
            if b"\n" in data or len(pending) >= self._flush_bytes:
                self._write_pending()
                return
            if self._scheduled:
                return
            self._scheduled = True
        self._start_flusher()
        self._burst.set()

    def flush(self) -> None:
        """Write what is queued, now."""
        with self._lock:
            self._write_pending()

    def close(self) -> None:
        """Flush and stop the flusher thread (idempotent)."""
        self._closed = True
        self._burst.set()
        if self._flusher is not None:
            self._flusher.join()
        self.flush()

    def _write_pending(self) -> None:
        """Called with the lock held.  After EPIPE, drop output and tell `on_broken` (once)."""
        self._scheduled = False
        if not self._pending or self.broken:
            self._pending.clear()
            return
        data, self._pending = bytes(self._pending), bytearray()
        try:
            write_all(self.fd, data)
        except OSError:         # EPIPE (reader gone), EIO (terminal hung up), EBADF: no output any more
            self.broken = True
            if self._on_broken is not None:
                self._on_broken()

    def _start_flusher(self) -> None:
        if self._flusher is None and not self._closed:
            self._flusher = threading.Thread(target=self._flush_bursts, name="pykvm-console-out",
                                             daemon=True)
            self._flusher.start()

    def _flush_bursts(self) -> None:
        """The flusher thread: FLUSH_SECONDS after a burst's first byte, write the burst."""
        leave_signals_to_the_main_thread()
        while not self._closed:
            self._burst.wait()
            time.sleep(FLUSH_SECONDS)
            self._burst.clear()
            self.flush()


def leave_signals_to_the_main_thread() -> None:
    """Block SIGNALS in the calling (helper) thread.

    The kernel may hand a signal sent to the process to any thread that does
    not block it, and Python runs its handlers in the main thread only: a
    SIGTERM taken by a helper thread waits until the main thread next runs
    Python (after its sleep, or after KVM_RUN returns), so a VM could ignore it
    for minutes.  Blocked here, the signal goes to the main thread and wakes it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)


class EscapeDecoder:
    """Splits host input into guest bytes and Ctrl-A commands, keeping state across chunks."""

    def __init__(self, escape: int = ESCAPE_KEY):
        self.escape = escape
        self._pending = False           # the previous byte was the escape key

    def feed(self, chunk: bytes) -> list[bytes | str]:
        """Guest data as bytes and commands (QUIT, HELP, SNAPSHOT) as str, in input order."""
        if not self._pending and self.escape not in chunk:
            return [chunk] if chunk else []
        items: list[bytes | str] = []
        data = bytearray()
        for byte in chunk:
            if self._pending:
                self._pending = False
                if byte == self.escape:
                    data.append(byte)           # Ctrl-A Ctrl-A: one literal Ctrl-A
                elif chr(byte) in (QUIT, HELP, SNAPSHOT):
                    if data:
                        items.append(bytes(data))
                        data.clear()
                    items.append(chr(byte))
            elif byte == self.escape:
                self._pending = True
            else:
                data.append(byte)
        if data:
            items.append(bytes(data))
        return items


class RawTerminal:
    """A terminal in QEMU's stdio raw mode while active; its previous settings restored on exit."""

    def __init__(self, fd: int):
        self.fd = fd
        self._saved: list | None = None

    def enter(self) -> None:
        """Save the settings and switch to raw input (keeping output post-processing, like QEMU)."""
        self._saved = termios.tcgetattr(self.fd)
        attrs = termios.tcgetattr(self.fd)
        iflag, oflag, cflag, lflag, cc = attrs[0], attrs[1], attrs[2], attrs[3], attrs[6]
        attrs[0] = iflag & ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
                             | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON)
        attrs[1] = oflag | termios.OPOST
        attrs[2] = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
        attrs[3] = lflag & ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.IEXTEN | termios.ISIG)
        cc[termios.VMIN] = 1
        cc[termios.VTIME] = 0
        termios.tcsetattr(self.fd, termios.TCSANOW, attrs)

    def restore(self) -> None:
        """Put the saved settings back (safe to call more than once, and from a signal handler)."""
        saved, self._saved = self._saved, None
        if saved is not None:
            try:
                termios.tcsetattr(self.fd, termios.TCSANOW, saved)
            except termios.error:
                pass                    # the terminal is gone (hung up): nothing left to restore

    def __enter__(self) -> RawTerminal:
        self.enter()
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


class Console:
    """Connects a terminal (or pipe) on `stdin_fd` to a UART's receiver.

    `on_quit()` is called from the reader thread on Ctrl-A x; the machine
    should stop the vCPU.  `wake()`, if given, is called after each chunk of
    input reached the UART (the UART raises its own interrupt; wake is for a
    machine that needs to kick its vCPU loop as well).  `on_snapshot()`, if
    given, is called on Ctrl-A s; without it the key does nothing.
    Guest output is not the Console's business: give the UART a ConsoleOutput.
    """

    def __init__(self, serial, on_quit: Callable[[], None], *, wake: Callable[[], None] | None = None,
                 stdin_fd: int = 0, stdout_fd: int = 1, handle_signals: bool = True,
                 on_snapshot: Callable[[], None] | None = None):
        self._serial = serial
        self._on_quit = on_quit
        self._on_snapshot = on_snapshot
        self._wake = wake
        self._stdin_fd = stdin_fd
        self._stdout_fd = stdout_fd
        self._handle_signals = handle_signals
        self._decoder = EscapeDecoder()
        self._terminal: RawTerminal | None = None
        self._saved_handlers: dict[int, object] = {}
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop_r = self._stop_w = -1

    # --- lifecycle

    def start(self) -> None:
        """Raw mode (if stdin is a terminal), signal handlers, then the reader thread."""
        if os.isatty(self._stdin_fd):
            self._terminal = RawTerminal(self._stdin_fd)
            self._terminal.enter()
        if self._handle_signals:
            self._install_signal_handlers()
        if not _is_open(self._stdin_fd):
            return                              # stdin closed (`<&-`): end of file from the start
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._read_loop, name="pykvm-console", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the reader, restore the terminal and the signal handlers.  Idempotent."""
        if self._closing.is_set():
            return
        self._closing.set()
        if self._stop_w >= 0:
            os.write(self._stop_w, b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._restore_terminal()
        self._restore_signal_handlers()
        for fd in (self._stop_r, self._stop_w):
            if fd >= 0:
                os.close(fd)
        self._stop_r = self._stop_w = -1

    def __enter__(self) -> Console:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def reading(self) -> bool:
        """True while the reader thread runs (False after EOF, Ctrl-A x or close())."""
        return self._thread is not None and self._thread.is_alive()

    # --- the terminal and signals

    def _restore_terminal(self) -> None:
        if self._terminal is not None:
            self._terminal.restore()

    def _install_signal_handlers(self) -> None:
        """Catch SIGNALS (main thread only, and not ones the user chose to ignore, as under nohup)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in SIGNALS:
            previous = signal.getsignal(signum)
            if previous is signal.SIG_IGN or previous is None:
                continue
            self._saved_handlers[signum] = previous
            signal.signal(signum, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        saved, self._saved_handlers = self._saved_handlers, {}
        for signum, handler in saved.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame) -> None:
        """Restore the terminal, then let the signal have the effect it would have had without us."""
        previous = self._saved_handlers.get(signum, signal.SIG_DFL)
        self._restore_terminal()
        self._restore_signal_handlers()
        if callable(previous):
            previous(signum, frame)             # e.g. SIGINT's KeyboardInterrupt
        else:
            os.kill(os.getpid(), signum)        # SIG_DFL: die of it, exit status 128 + signum

    # --- the reader thread

    def _read_loop(self) -> None:
        """Read stdin until EOF, Ctrl-A x or close()."""
        leave_signals_to_the_main_thread()
        poller = select.poll()
        poller.register(self._stdin_fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while not self._closing.is_set():
            ready = dict(poller.poll())
            if self._stop_r in ready:
                return
            chunk = self._read_chunk()
            if chunk is None:
                continue
            if not chunk or not self._handle(chunk):
                return                          # EOF: stop reading, the guest runs on

    def _read_chunk(self) -> bytes | None:
        """One read of stdin: bytes, b"" at EOF (or a hung-up terminal), None to retry."""
        try:
            return os.read(self._stdin_fd, READ_CHUNK)
        except BlockingIOError:
            return None
        except OSError as e:
            if e.errno == errno.EIO:            # the pty's other end closed
                return b""
            raise

    def _handle(self, chunk: bytes) -> bool:
        """Deliver a chunk and act on its Ctrl-A commands; False after Ctrl-A x."""
        for item in self._decoder.feed(chunk):
            if item == QUIT:
                self._on_quit()
                return False
            if item == HELP:
                write_all(self._stdout_fd, HELP_TEXT)
            elif item == SNAPSHOT:
                if self._on_snapshot is not None:
                    self._on_snapshot()
            else:
                self._deliver(item)
        return True

    def _deliver(self, data: bytes) -> None:
        """Hand `data` to the UART, waiting for room while the guest is behind (back-pressure)."""
        while data and not self._closing.is_set():
            taken = self._serial.receive(data)
            data = data[taken:]
            if taken and self._wake is not None:
                self._wake()
            if data:
                self._serial.wait_for_room(ROOM_POLL_SECONDS)
