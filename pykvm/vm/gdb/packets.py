"""Packet framing of GDB's remote serial protocol.

GDB manual, "Remote Protocol" > "Overview": a packet is `$payload#cs`, `cs`
being two hex digits of the payload's byte sum modulo 256.  The receiver
answers `+` (good checksum) or `-` (send it again) until both sides agree to
"QStartNoAckMode".  A lone byte 0x03 outside any packet is an interrupt
request ("Interrupts": Ctrl-C in gdb).  Inside a payload, `}` escapes the next
byte (XORed with 0x20), so `$`, `#`, `}` and `*` can travel in binary data
("Binary Data", used by the X packet).

Framer turns the byte stream into events and never raises on bad input: bytes
outside a packet that are not `+`, `-` or 0x03 are noise and skipped, as
gdbserver skips them; a bad checksum or an oversized packet is an event the
connection answers with `-`.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["checksum", "frame", "escape", "unescape", "Framer", "Packet", "Ack", "Nak",
           "Interrupt", "Corrupt", "MAX_PACKET"]

PACKET_START = ord("$")
CHECKSUM_MARK = ord("#")
ESCAPE = ord("}")            # "Binary Data": } then the byte XOR 0x20
RUN_LENGTH = ord("*")        # "Run-length encoding": reserved in outgoing data
ESCAPE_XOR = 0x20
ACK, NAK = ord("+"), ord("-")
INTERRUPT_BYTE = 0x03        # "Interrupts": ^C from the debugger
MAX_PACKET = 16384           # the PacketSize we announce in qSupported (payload bytes)
NEEDS_ESCAPE = frozenset((PACKET_START, CHECKSUM_MARK, ESCAPE, RUN_LENGTH))


@dataclass(frozen=True)
class Packet:
    """A packet with a good checksum; `payload` is still escaped (only X carries binary)."""

    payload: bytes


@dataclass(frozen=True)
class Corrupt:
    """A packet with a bad checksum, or longer than MAX_PACKET: answer `-`."""

    why: str


@dataclass(frozen=True)
class Ack:
    """`+`: the other side received our last packet."""


@dataclass(frozen=True)
class Nak:
    """`-`: the other side wants our last packet again."""


@dataclass(frozen=True)
class Interrupt:
    """0x03 outside a packet: stop the running target."""


def checksum(payload: bytes) -> int:
    """The modulo-256 byte sum of the payload ("Overview")."""
    return sum(payload) & 0xFF


def escape(data: bytes) -> bytes:
    """Escape the bytes that may not appear raw in a payload ("Binary Data")."""
    out = bytearray()
    for byte in data:
        if byte in NEEDS_ESCAPE:
            out += bytes((ESCAPE, byte ^ ESCAPE_XOR))
        else:
            out.append(byte)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    """Undo escape(): `}x` becomes x ^ 0x20.  A trailing lone `}` is dropped."""
    out = bytearray()
    pending = False
    for byte in data:
        if pending:
            out.append(byte ^ ESCAPE_XOR)
            pending = False
        elif byte == ESCAPE:
            pending = True
        else:
            out.append(byte)
    return bytes(out)


def frame(payload: bytes) -> bytes:
    """`$payload#cs` for a payload that is already escaped where needed."""
    return b"$%s#%02x" % (payload, checksum(payload))


class Framer:
    """Incremental parser: feed() bytes as they arrive, get events back in order."""

    def __init__(self) -> None:
        self._payload: bytearray | None = None   # inside $...: the bytes so far
        self._digits: bytearray | None = None    # after #: the checksum digits so far
        self._too_long = False

    def feed(self, data: bytes) -> list:
        events = []
        for byte in data:
            event = self._byte(byte)
            if event is not None:
                events.append(event)
        return events

    def _byte(self, byte: int):
        if self._digits is not None:
            return self._checksum_digit(byte)
        if self._payload is not None:
            return self._payload_byte(byte)
        if byte == PACKET_START:
            self._payload, self._too_long = bytearray(), False
        elif byte == ACK:
            return Ack()
        elif byte == NAK:
            return Nak()
        elif byte == INTERRUPT_BYTE:
            return Interrupt()
        return None                                  # noise between packets: skipped

    def _payload_byte(self, byte: int):
        if byte == CHECKSUM_MARK:
            self._digits = bytearray()
        elif byte == PACKET_START:                   # a new packet restarts a broken one
            self._payload, self._too_long = bytearray(), False
        elif len(self._payload) >= MAX_PACKET:
            self._too_long = True                    # keep reading to the '#', keep nothing
        else:
            self._payload.append(byte)
        return None

    def _checksum_digit(self, byte: int):
        self._digits.append(byte)
        if len(self._digits) < 2:
            return None
        payload, digits, too_long = bytes(self._payload), bytes(self._digits), self._too_long
        self._payload = self._digits = None
        if too_long:
            return Corrupt(f"packet longer than {MAX_PACKET} bytes")
        try:
            expected = int(digits, 16)
        except ValueError:
            return Corrupt(f"checksum {digits!r} is not hex")
        if expected != checksum(payload):
            return Corrupt(f"checksum {digits.decode(errors='replace')} should be {checksum(payload):02x}")
        return Packet(payload)
