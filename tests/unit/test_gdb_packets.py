"""GDB remote protocol framing: checksums, escapes, noise, and one connection over a socketpair.

GDB manual, "Remote Protocol" > "Overview" ($payload#cs, +/-), "Binary Data",
"Interrupts".
"""
import socket

import pytest

from clitools import wait_for
from pykvm.vm.gdb.connection import DISCONNECTED, Connection
from pykvm.vm.gdb.packets import (MAX_PACKET, Ack, Corrupt, Framer, Interrupt, Nak, Packet, checksum,
                               escape, frame, unescape)


def test_checksum_is_the_byte_sum_modulo_256():
    assert checksum(b"g") == 0x67
    assert checksum(b"\xff\x02") == 0x01
    assert frame(b"OK") == b"$OK#9a"


def test_escape_round_trips_every_byte():
    data = bytes(range(256))
    escaped = escape(data)
    for reserved in b"$#*":
        assert reserved not in escaped, f"raw {chr(reserved)!r} in escaped data"
    assert unescape(escaped) == data


def test_framer_splits_packets_acks_and_interrupts_across_reads():
    framer = Framer()
    stream = b"+" + frame(b"qSupported:xmlRegisters=i386") + b"-\x03" + frame(b"g")
    events = []
    for i in range(len(stream)):                     # one byte at a time, as a slow link
        events += framer.feed(stream[i:i + 1])
    assert events == [Ack(), Packet(b"qSupported:xmlRegisters=i386"), Nak(), Interrupt(), Packet(b"g")]


def test_framer_skips_noise_and_reports_bad_checksums():
    events = Framer().feed(b"garbage\r\n$m0,4#00" + b"$g#zz" + frame(b"?"))
    assert isinstance(events[0], Corrupt) and "should be" in events[0].why
    assert isinstance(events[1], Corrupt) and "not hex" in events[1].why
    assert events[2:] == [Packet(b"?")]


def test_framer_refuses_an_oversized_packet_and_recovers():
    huge = b"$" + b"M" * (MAX_PACKET + 10) + b"#00"
    events = Framer().feed(huge + frame(b"?"))
    assert isinstance(events[0], Corrupt) and "longer" in events[0].why
    assert events[1:] == [Packet(b"?")]


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    interrupts = []
    connection = Connection(ours, on_interrupt=lambda: interrupts.append(1))
    connection.start()
    theirs.settimeout(5)
    yield connection, theirs, interrupts
    connection.close()
    theirs.close()


def receive(sock, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data


def test_connection_acks_good_packets_and_naks_bad_ones(pair):
    connection, gdb, _ = pair
    gdb.sendall(b"$g#00")
    assert receive(gdb, 1) == b"-"
    gdb.sendall(frame(b"g"))
    assert receive(gdb, 1) == b"+"
    assert connection.next_packet(timeout=5) == b"g"


def test_connection_resends_its_last_packet_on_nak(pair):
    connection, gdb, _ = pair
    connection.send(b"T05thread:01;")
    first = receive(gdb, len(frame(b"T05thread:01;")))
    gdb.sendall(b"-")
    assert receive(gdb, len(first)) == first


def test_interrupt_byte_calls_back_at_once(pair):
    _, gdb, interrupts = pair
    gdb.sendall(b"\x03")
    wait_for(lambda: interrupts == [1], timeout=5)


def test_no_ack_mode_sends_no_acks(pair):
    connection, gdb, _ = pair
    connection.ack_mode = False
    gdb.sendall(frame(b"g"))
    assert connection.next_packet(timeout=5) == b"g"
    connection.send(b"OK")
    assert receive(gdb, 6) == b"$OK#9a"               # no "+" before the reply


def test_a_vanished_client_is_an_event(pair):
    connection, gdb, _ = pair
    gdb.sendall(b"$m100")                              # half a packet, then gone
    gdb.close()
    assert connection.next_packet(timeout=5) is DISCONNECTED
    connection.send(b"OK")                             # sending to nobody is not an error
