"""One debugger's TCP connection: acks, retransmission, and a reader thread.

The reader thread owns the receiving side for the whole session.  It answers
each packet with `+` (or `-` for a corrupt one, so gdb sends it again), resends
our last reply on `-`, and queues good packets for whoever serves the stopped
target.  An interrupt byte (0x03) does not wait in the queue: it calls
`on_interrupt` at once, because the target is running and nobody is reading
the queue.  When the socket closes or fails, the queue gets DISCONNECTED and
`on_disconnect` runs: a client that vanishes mid-session is an event, not an
exception (GDB manual, "Remote Protocol" > "Overview", "Interrupts").
"""
from __future__ import annotations

import logging
import queue
import socket
import threading

from pykvm.vm.gdb.packets import Ack, Corrupt, Framer, Interrupt, Nak, Packet, frame

__all__ = ["Connection", "DISCONNECTED"]

log = logging.getLogger("pykvm.vm.gdb")

DISCONNECTED = None          # what next_packet() returns once the client is gone
RECEIVE_SIZE = 65536


class Connection:
    """Packets in and out over a connected socket (TCP, or a socketpair in tests)."""

    def __init__(self, sock: socket.socket, on_interrupt=lambda: None, on_disconnect=lambda: None):
        self.sock = sock
        self.ack_mode = True                      # until QStartNoAckMode
        self.closed = False
        self._on_interrupt = on_interrupt
        self._on_disconnect = on_disconnect
        self._packets: queue.Queue = queue.Queue()
        self._send_lock = threading.Lock()
        self._last_sent = b""
        self._reader = threading.Thread(target=self._read_loop, name="gdb-reader", daemon=True)

    def start(self) -> None:
        self._reader.start()

    # --- sending -------------------------------------------------------------
    def send(self, payload: bytes) -> None:
        """Send one packet; kept for retransmission until the next one."""
        packet = frame(payload)
        with self._send_lock:
            self._last_sent = packet
            self._write(packet)

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.sock.sendall(data)
        except OSError as e:                      # the client went away: the reader will see EOF
            log.info("gdb connection: send failed: %s", e)

    # --- receiving -------------------------------------------------------------
    def next_packet(self, timeout: float | None = None) -> bytes | None:
        """The next good packet's payload; DISCONNECTED once the client is gone.

        Raises queue.Empty after `timeout` seconds without a packet.
        """
        return self._packets.get(timeout=timeout)

    def _read_loop(self) -> None:
        framer = Framer()
        try:
            while True:
                data = self.sock.recv(RECEIVE_SIZE)
                if not data:
                    break
                for event in framer.feed(data):
                    self._event(event)
        except OSError as e:
            log.info("gdb connection: receive failed: %s", e)
        finally:
            self.closed = True
            self._packets.put(DISCONNECTED)
            self._on_disconnect()

    def _event(self, event) -> None:
        match event:
            case Packet(payload=payload):
                if self.ack_mode:
                    self._raw(b"+")
                self._packets.put(payload)
            case Corrupt(why=why):
                log.info("gdb connection: %s; asking again", why)
                if self.ack_mode:
                    self._raw(b"-")
            case Nak():
                with self._send_lock:
                    self._write(self._last_sent)
            case Interrupt():
                self._on_interrupt()
            case Ack():
                pass

    def _raw(self, data: bytes) -> None:
        with self._send_lock:
            self._write(data)

    def close(self) -> None:
        """Shut the socket down; the reader thread sees EOF and ends."""
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
