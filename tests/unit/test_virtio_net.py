"""virtio-net (virtio 1.2, 5.1) through the transport, a socketpair standing in for the tap.

A socketpair(AF_UNIX, SOCK_DGRAM) keeps frame boundaries as a tap does: what the
device writes to its end, the test reads from the other, one frame per datagram.
Hostile cases end as the block device's do: no exception reaches the caller, and the
guest sees DEVICE_NEEDS_RESET (a broken ring) or a dropped, counted frame.
"""
from __future__ import annotations

import random
import socket
import struct
import threading

import pytest

from clitools import wait_for
from pykvm.vm.devices.virtio import mmio
from pykvm.vm.devices.virtio.device import VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1
from pykvm.vm.devices.virtio.net import (ETH_HLEN, NET_HEADER, RECEIVEQ, TRANSMITQ, VIRTIO_ID_NET,
                                         VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
                                         VIRTIO_NET_F_STATUS, VIRTIO_NET_HDR_F_NEEDS_CSUM, Net,
                                         format_mac, parse_mac)
from pykvm.vm.devices.virtio.queue import VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
from pykvm.vm.devices.virtio.tap import MAX_FRAME, Tap, valid_ifname
from virtio_driver import DATA_AREA, LIVE, ToyDriver

MAC = bytes.fromhex("525400d50002")
NEXT, WRITE = VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
RX_BUFFERS = DATA_AREA                  # receive buffer n at RX_BUFFERS + n * RX_STRIDE
RX_STRIDE = 0x1000
TX_AREA = DATA_AREA + 0x80000
VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM = 1 << 0, 1 << 1
ALL = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS | VIRTIO_NET_F_MRG_RXBUF


def frame(n: int, seed: int = 1) -> bytes:
    """An Ethernet frame of n bytes: to the card's MAC, random payload."""
    return MAC + bytes.fromhex("020000000001") + random.Random(seed).randbytes(n - 12)


@pytest.fixture
def wire():
    """(the tap end the device gets, the host end the test reads and writes)."""
    device_end, host_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    host_end.settimeout(5)
    yield Tap(device_end.detach(), "test0"), host_end
    host_end.close()


def make_driver(tap, features=ALL, backlog_frames=256) -> ToyDriver:
    driver = ToyDriver(Net(tap, MAC, backlog_frames=backlog_frames))
    driver.start(features=features, queues=2)
    return driver


@pytest.fixture
def driver(wire):
    d = make_driver(wire[0])
    yield d
    d.close()


def lend(driver, index: int, length: int, head: int | None = None) -> None:
    """Lend receive buffer `index` (`length` bytes, device-writable) and kick."""
    head = index if head is None else head
    driver.descriptor(RECEIVEQ, head, RX_BUFFERS + index * RX_STRIDE, length, WRITE)
    driver.offer(RECEIVEQ, head)
    driver.kick(RECEIVEQ)


def buffer(driver, index: int, length: int) -> bytes:
    return driver.memory.read(RX_BUFFERS + index * RX_STRIDE, length)


def transmit(driver, data: bytes, pieces: int = 1, head: int = 0) -> None:
    """Offer `data` (header + frame) on the transmit queue in `pieces` descriptors and kick."""
    driver.memory.write(TX_AREA, data)
    cut = [len(data) * i // pieces for i in range(pieces + 1)]
    for i in range(pieces):
        more = i + 1 < pieces
        driver.descriptor(TRANSMITQ, head + i, TX_AREA + cut[i], cut[i + 1] - cut[i],
                          NEXT if more else 0, head + i + 1)
    driver.offer(TRANSMITQ, head)
    driver.kick(TRANSMITQ)


def header(flags=0, gso_type=0, num_buffers=0) -> bytes:
    return NET_HEADER.pack(flags, gso_type, 0, 0, 0, 0, num_buffers)


def assert_needs_reset(driver):
    assert driver.status & mmio.STATUS_DEVICE_NEEDS_RESET, f"status {driver.status:#x}"
    assert driver.read(mmio.INTERRUPT_STATUS) & mmio.INTERRUPT_CONFIG_CHANGE


# --- what the driver sees before any frame
def test_device_id_features_and_config(driver):
    assert driver.read(mmio.DEVICE_ID) == VIRTIO_ID_NET
    offered = driver.offered()
    assert offered & ALL == ALL, f"{offered:#x}"
    assert not offered & (VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_CSUM), "no checksum offload"
    config = bytes(driver.transport.read(mmio.CONFIG + i, 1) for i in range(8))
    assert config[:6] == MAC and struct.unpack("<H", config[6:])[0] == 1       # LINK_UP


def test_mac_text():
    assert parse_mac("52:54:00:d5:00:02") == MAC and format_mac(MAC) == "52:54:00:d5:00:02"
    for bad in ("52:54:00:d5:00", "52-54-00-d5-00-02", "52:54:00:d5:00:zz", "525:4:00:d5:00:02"):
        with pytest.raises(ValueError):
            parse_mac(bad)


def test_interface_names():
    assert valid_ifname("pkt0") and valid_ifname("a" * 15)
    assert not any(map(valid_ifname, ["", "a" * 16, ".", "..", "a/b", "a:b", "a b"]))


# --- transmit: the header stripped, the frame to the tap
def test_transmit_strips_the_header(driver, wire):
    data = frame(100)
    transmit(driver, header() + data, pieces=3)            # 2.7.4.2: split any way the driver likes
    assert wire[1].recv(MAX_FRAME) == data
    assert driver.used(TRANSMITQ) == [(0, 0)]
    assert driver.interrupts == 1 and driver.device.tx_frames == 1 and driver.device.tx_bytes == 100


@pytest.mark.parametrize("bad_header, why", [
    (header(flags=VIRTIO_NET_HDR_F_NEEDS_CSUM), "checksum offload was not offered"),
    (header(gso_type=1), "segmentation offload was not offered"),
])
def test_transmit_asking_for_offload_is_dropped(driver, wire, bad_header, why):
    transmit(driver, bad_header + frame(100))
    transmit(driver, header() + frame(60, seed=2), head=1)
    assert wire[1].recv(MAX_FRAME) == frame(60, seed=2), why       # only the good one went out
    assert driver.device.tx_dropped == 1 and driver.status == LIVE
    assert [head for head, _ in driver.used(TRANSMITQ)] == [0, 1]   # both given back


@pytest.mark.parametrize("length", [0, ETH_HLEN - 1, MAX_FRAME + 1])
def test_transmit_of_a_frame_too_short_or_too_long_is_dropped(driver, wire, length):
    transmit(driver, header() + bytes(length))
    assert driver.device.tx_dropped == 1 and driver.device.tx_frames == 0
    assert driver.used(TRANSMITQ) == [(0, 0)] and driver.status == LIVE
    wire[1].setblocking(False)
    with pytest.raises(BlockingIOError):
        wire[1].recv(MAX_FRAME)


def test_transmit_with_a_device_writable_buffer_is_dropped_and_not_written(driver, wire):
    driver.memory.write(TX_AREA, header() + frame(60))
    driver.memory.write(TX_AREA + 0x1000, b"\xee" * 64)
    driver.descriptor(TRANSMITQ, 0, TX_AREA, NET_HEADER.size + 60, NEXT, 1)
    driver.descriptor(TRANSMITQ, 1, TX_AREA + 0x1000, 64, WRITE)
    driver.offer(TRANSMITQ, 0)
    driver.kick(TRANSMITQ)
    assert driver.device.tx_dropped == 1 and driver.used(TRANSMITQ) == [(0, 0)]
    assert driver.memory.read(TX_AREA + 0x1000, 64) == b"\xee" * 64 and driver.status == LIVE


def test_transmit_without_even_a_header_is_dropped(driver):
    transmit(driver, b"\x00" * 5)
    assert driver.device.tx_dropped == 1 and driver.status == LIVE


# --- receive: header + frame into the driver's buffers
def test_receive_into_one_buffer(driver):
    lend(driver, 0, 2048)
    data = frame(98)
    assert driver.device.receive(data)
    assert driver.used(RECEIVEQ) == [(0, NET_HEADER.size + 98)]
    assert buffer(driver, 0, NET_HEADER.size + 98) == header(num_buffers=1) + data
    assert driver.interrupts == 1 and driver.device.rx_frames == 1


def test_mergeable_receive_buffers_split_a_frame(driver):
    """5.1.6.3.2: 12 + 150 bytes over three 64-byte buffers; num_buffers = 3 in the first."""
    for i in range(4):
        lend(driver, i, 64)
    data = frame(150)
    driver.device.receive(data)
    assert driver.used(RECEIVEQ) == [(0, 64), (1, 64), (2, 34)]
    stream = buffer(driver, 0, 64) + buffer(driver, 1, 64) + buffer(driver, 2, 34)
    assert stream == header(num_buffers=3) + data
    driver.device.receive(frame(40, seed=2))                        # the fourth is still there
    assert driver.used(RECEIVEQ)[3] == (3, NET_HEADER.size + 40)


def test_too_few_buffers_keep_the_frame_until_more_arrive(driver):
    lend(driver, 0, 64)
    data = frame(150)
    driver.device.receive(data)
    assert driver.used(RECEIVEQ) == [] and driver.device.rx_dropped == 0    # given back, kept
    lend(driver, 1, 64)
    assert driver.used(RECEIVEQ) == []
    lend(driver, 2, 64)                                             # the kick delivers it
    assert [head for head, _ in driver.used(RECEIVEQ)] == [0, 1, 2]
    assert buffer(driver, 0, 64)[:NET_HEADER.size] == header(num_buffers=3)


def test_too_few_buffers_ask_for_a_kick_at_the_next_buffer(wire):
    """2.7.10 with EVENT_IDX: avail_event = the avail.idx seen, so the next buffer kicks."""
    driver = make_driver(wire[0], features=ALL | VIRTIO_F_RING_EVENT_IDX)
    lend(driver, 0, 64)
    driver.device.receive(frame(150))
    assert driver.used_u16(RECEIVEQ, 4 + 8 * driver.sizes[RECEIVEQ]) == 1
    driver.close()


def test_without_mergeable_buffers_a_frame_needs_one_big_enough(wire):
    driver = make_driver(wire[0], features=VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC)
    lend(driver, 0, 64)
    driver.device.receive(frame(100))                               # 112 bytes: does not fit
    assert driver.used(RECEIVEQ) == [] and driver.device.rx_dropped == 1
    data = frame(40, seed=3)
    driver.device.receive(data)                                     # 52: the same buffer takes it
    assert driver.used(RECEIVEQ) == [(0, 52)]
    assert buffer(driver, 0, 52) == header(num_buffers=1) + data   # num_buffers is 1 (5.1.6.4)
    driver.close()


def test_the_backlog_is_bounded_and_keeps_order(wire):
    driver = make_driver(wire[0], backlog_frames=4)
    frames = [frame(60, seed=n) for n in range(10)]
    taken = [driver.device.receive(f) for f in frames]
    assert taken == [True] * 4 + [False] * 6 and driver.device.rx_dropped == 6
    for i in range(8):
        lend(driver, i, 2048)
    assert [head for head, _ in driver.used(RECEIVEQ)] == [0, 1, 2, 3]
    assert [buffer(driver, i, 72)[NET_HEADER.size:] for i in range(4)] == frames[:4]
    driver.close()


def test_no_driver_no_frames(wire):
    net = Net(wire[0], MAC)
    assert not net.receive(frame(60)) and net.rx_dropped == 1
    net.close()


def test_reset_forgets_the_backlog(driver):
    driver.device.receive(frame(60))
    driver.start(features=ALL, queues=2)
    lend(driver, 0, 2048)
    assert driver.used(RECEIVEQ) == []


# --- the reader thread, on a real file descriptor
def test_frames_from_the_wire_reach_the_guest(driver, wire):
    for i in range(4):
        lend(driver, i, 2048)
    driver.device.start()
    sent = [frame(60 + n, seed=n) for n in range(3)]
    for f in sent:
        wire[1].send(f)
    wait_for(lambda: len(driver.used(RECEIVEQ)) == 3, timeout=10)
    got = [buffer(driver, head, length)[NET_HEADER.size:] for head, length in driver.used(RECEIVEQ)]
    assert got == sent


# --- broken rings: DEVICE_NEEDS_RESET, never an exception
def test_device_readable_receive_buffer(driver):
    driver.descriptor(RECEIVEQ, 0, RX_BUFFERS, 2048)
    driver.offer(RECEIVEQ, 0)
    driver.device.receive(frame(60))
    assert_needs_reset(driver)


def test_receive_buffer_smaller_than_the_header(driver):
    lend(driver, 0, NET_HEADER.size - 1)
    driver.device.receive(frame(60))
    assert_needs_reset(driver)


def test_receive_buffer_outside_guest_memory(driver):
    driver.descriptor(RECEIVEQ, 0, 0x7FFF_0000_0000, 2048, WRITE)
    driver.offer(RECEIVEQ, 0)
    driver.device.receive(frame(60))
    assert_needs_reset(driver)


def test_transmit_loop(driver, wire):
    driver.descriptor(TRANSMITQ, 0, TX_AREA, 12, NEXT, 1)
    driver.descriptor(TRANSMITQ, 1, TX_AREA, 60, NEXT, 0)
    driver.offer(TRANSMITQ, 0)
    driver.kick(TRANSMITQ)
    assert_needs_reset(driver)


def test_device_works_again_after_reset(driver, wire):
    test_transmit_loop(driver, wire)
    driver.start(features=ALL, queues=2)
    lend(driver, 0, 2048)
    driver.device.receive(frame(60))
    assert driver.used(RECEIVEQ) == [(0, 72)]


def test_random_rings_never_raise(wire):
    """Random descriptor tables and available rings on both queues, frames both ways."""
    rng = random.Random(18)
    driver = make_driver(wire[0])
    for _ in range(200):
        driver.start(features=ALL, queues=2)
        driver.scramble(RECEIVEQ, rng)
        driver.scramble(TRANSMITQ, rng)
        driver.device.receive(frame(rng.randrange(ETH_HLEN, 3000)))
        driver.kick(TRANSMITQ)
    driver.close()


def test_the_reader_ends_when_the_wire_is_cut():
    """A read of 0 bytes (the other end closed) ends the reader thread instead of spinning."""
    device_end, host_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    net = Net(Tap(device_end.detach(), "test0"), MAC)
    net.start()
    host_end.close()
    net._reader.join(timeout=10)
    assert not net._reader.is_alive()
    net.close()


def test_a_reset_waits_for_the_frame_being_delivered(driver, wire):
    """The VMM's teardown resets the transport while the reader thread may be filling a
    receive buffer: the reset must wait for that frame, not release the queue under it."""
    net = driver.device
    entered, go = threading.Event(), threading.Event()
    deliver = net._deliver

    def slow_deliver(queue, data):
        entered.set()
        go.wait(timeout=10)
        return deliver(queue, data)

    net._deliver = slow_deliver
    errors = []
    threading.excepthook, old_hook = (lambda args: errors.append(args.exc_value)), threading.excepthook
    try:
        lend(driver, 0, 2048)
        net.start()
        wire[1].send(frame(60))
        assert entered.wait(timeout=10), "the reader thread never delivered the frame"
        resetter = threading.Thread(target=driver.transport.reset)
        resetter.start()
        resetter.join(timeout=0.3)
        reset_waited = resetter.is_alive()
        go.set()
        resetter.join(timeout=10)
        wire[1].send(frame(61))                          # after the reset: dropped, not fatal
        wait_for(lambda: net.rx_dropped == 1 or not net._reader.is_alive(), timeout=10)
        assert net._reader.is_alive(), f"the reader thread died: {errors}"
    finally:
        go.set()
        threading.excepthook = old_hook
    assert errors == []
    assert reset_waited, "the reset released the queue while a frame was being written into it"
