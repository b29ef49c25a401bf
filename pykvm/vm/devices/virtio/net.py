"""virtio-net: an Ethernet card whose cable is a tap device on the host.

Spec: virtio 1.2, section 5.1 "Network Device" (5.1.3 feature bits, 5.1.4
config layout, 5.1.6 device operation, 5.1.6.3 receiving, 5.1.6.4
processing of incoming packets).  Two queues (5.1.2, without multiqueue):

    receiveq1   (0)  device-writable buffers the driver lends us; we fill them
                     with frames from the tap, each behind a virtio_net_hdr
    transmitq1  (1)  device-readable buffers: a virtio_net_hdr, then a frame
                     for us to write to the tap

Every frame on either queue starts with struct virtio_net_hdr (5.1.6), 12
bytes for a VIRTIO_F_VERSION_1 device:

    u8 flags | u8 gso_type | le16 hdr_len | le16 gso_size | le16 csum_start |
    le16 csum_offset | le16 num_buffers

No checksum or segmentation offload is offered, so a transmitted header must
say "no checksum to fill in, no segmentation" (flags 0, gso_type NONE); a
header asking for either is refused (the frame is dropped and counted). On
receive the header is all zeros but num_buffers.

VIRTIO_NET_F_MRG_RXBUF (5.1.6.3.2): the driver may lend small receive
buffers, and one frame then spreads over several of them; num_buffers in
the first says how many.  The device takes buffers one by one until the
frame fits; with too few, it gives them back (SplitQueue.rewind), keeps the
frame, and asks to be kicked when the driver adds more.

The host side: a reader thread sleeps in poll(2) on the tap and hands each
frame to receive(), which queues it (at most BACKLOG_FRAMES: beyond that,
frames are dropped, as a NIC drops when its ring is full) and kicks the
receive queue; the transport then runs process(0) under its lock and
interrupts the driver.  Nothing the guest writes is trusted: every chain is
checked by queue.py, receive buffers must be device-writable and hold a
header, a transmitted frame is at most MAX_FRAME bytes, and a malformed one
is dropped and counted, never raised past the device.
"""
from __future__ import annotations

import logging
import os
import select
import struct
import threading
from collections import deque

from pykvm.vm.devices.virtio.device import VirtioDevice, VirtioDeviceError
from pykvm.vm.devices.virtio.queue import DescriptorChain, SplitQueue, read_buffers, write_buffers
from pykvm.vm.devices.virtio.tap import MAX_FRAME, Tap

__all__ = ["Net", "VIRTIO_ID_NET", "RECEIVEQ", "TRANSMITQ", "NET_HEADER", "VIRTIO_NET_F_MAC",
           "VIRTIO_NET_F_STATUS", "VIRTIO_NET_F_MRG_RXBUF", "VIRTIO_NET_S_LINK_UP",
           "VIRTIO_NET_HDR_F_NEEDS_CSUM", "VIRTIO_NET_HDR_GSO_NONE", "BACKLOG_FRAMES",
           "ETH_HLEN", "parse_mac", "format_mac"]

log = logging.getLogger("pykvm.virtio")

VIRTIO_ID_NET = 1                      # 5: device ID
RECEIVEQ, TRANSMITQ = 0, 1             # 5.1.2
QUEUE_SIZE = 256

# 5.1.3 Feature bits
VIRTIO_NET_F_MAC = 1 << 5              # config `mac` holds the card's address
VIRTIO_NET_F_MRG_RXBUF = 1 << 15       # a received frame may span several buffers
VIRTIO_NET_F_STATUS = 1 << 16          # config `status` says whether the link is up

# 5.1.4 config: u8 mac[6]; le16 status; (le16 max_virtqueue_pairs, le16 mtu: not offered)
CONFIG = struct.Struct("<6sH")
VIRTIO_NET_S_LINK_UP = 1               # status: the cable is plugged in

# 5.1.6 struct virtio_net_hdr
NET_HEADER = struct.Struct("<BBHHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start,
                                        # csum_offset, num_buffers: 12 bytes
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1        # flags: the device is to fill in a checksum
VIRTIO_NET_HDR_GSO_NONE = 0            # gso_type: one frame, no segmentation

ETH_HLEN = 14                          # destination MAC, source MAC, EtherType
BACKLOG_FRAMES = 256                   # frames from the tap waiting for receive buffers, at most


def parse_mac(text: str) -> bytes:
    """'52:54:00:12:34:56' -> 6 bytes; ValueError if it is not six hex pairs."""
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"{text!r} is not a MAC address like 52:54:00:12:34:56")
    return bytes(int(p, 16) for p in parts)


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


class Net(VirtioDevice):
    """virtio-net on `tap` (a Tap), with the 6-byte MAC address `mac`."""

    device_id = VIRTIO_ID_NET
    name = "virtio-net"
    queue_sizes = (QUEUE_SIZE, QUEUE_SIZE)
    features = VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS | VIRTIO_NET_F_MRG_RXBUF

    def __init__(self, tap: Tap, mac: bytes, backlog_frames: int = BACKLOG_FRAMES):
        super().__init__()
        assert len(mac) == 6, mac
        self.tap, self.mac, self.backlog_frames = tap, mac, backlog_frames
        self._backlog: deque[bytes] = deque()
        self._backlog_lock = threading.Lock()   # the reader thread appends, the transport takes
        self._active = False
        self._stop_fd = -1
        self._reader: threading.Thread | None = None
        self.rx_frames = self.rx_bytes = self.rx_dropped = 0
        self.tx_frames = self.tx_bytes = self.tx_dropped = 0

    def config_bytes(self) -> bytes:
        return CONFIG.pack(self.mac, VIRTIO_NET_S_LINK_UP)

    @property
    def mergeable(self) -> bool:
        return bool(self.driver_features & VIRTIO_NET_F_MRG_RXBUF)

    # --- life cycle
    def activate(self, queues, driver_features, kick) -> None:
        super().activate(queues, driver_features, kick)
        self._active = True

    def reset(self) -> None:
        self._active = False
        super().reset()
        with self._backlog_lock:
            self._backlog.clear()

    def start(self) -> None:
        """Start the thread that reads frames from the tap."""
        self._stop_fd = os.eventfd(0, os.EFD_CLOEXEC)
        self._reader = threading.Thread(target=self._read_tap, daemon=True,
                                        name=f"pykvm-virtio-net-{self.tap.name}")
        self._reader.start()

    def close(self) -> None:
        if self._reader is not None:
            os.eventfd_write(self._stop_fd, 1)
            self._reader.join()
            self._reader = None
        if self._stop_fd >= 0:
            os.close(self._stop_fd)
            self._stop_fd = -1
        self.tap.close()

    # --- the queues, under the transport's lock
    def process(self, index: int) -> None:
        if index == TRANSMITQ:
            self.serve(TRANSMITQ, self._transmit)
        elif index == RECEIVEQ:
            self._fill_receive_buffers()

    def _transmit(self, chain: DescriptorChain) -> int:
        """One frame from the driver: check its header, write the frame to the tap (5.1.6.2)."""
        memory = self.queues[TRANSMITQ].memory
        length = chain.readable_length - NET_HEADER.size
        if chain.writable:             # 5.1.6.2: a transmit buffer is all device-readable
            return self._drop_transmit("a transmit buffer with device-writable descriptors")
        if length < ETH_HLEN or length > MAX_FRAME:
            return self._drop_transmit(f"a frame of {length} bytes after the header")
        flags, gso_type, *_ = NET_HEADER.unpack(read_buffers(memory, chain.readable, 0, NET_HEADER.size))
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM or gso_type != VIRTIO_NET_HDR_GSO_NONE:
            return self._drop_transmit(f"header flags {flags:#x} gso_type {gso_type}: checksum and "
                                       f"segmentation offload were not offered")
        frame = read_buffers(memory, chain.readable, NET_HEADER.size, length)
        try:
            self.tap.write(frame)
        except OSError as e:
            return self._drop_transmit(f"the tap did not take it: {e.strerror}")
        self.tx_frames += 1
        self.tx_bytes += length
        return 0                       # nothing written into a transmit buffer

    def _drop_transmit(self, why: str) -> int:
        self.tx_dropped += 1
        if self.tx_dropped == 1:       # once: a guest cannot flood the log
            log.warning("%s: dropped a transmitted frame: %s", self.name, why)
        return 0

    def _fill_receive_buffers(self) -> None:
        """Frames from the backlog into the driver's receive buffers, oldest first."""
        queue = self.queues[RECEIVEQ]
        while True:
            with self._backlog_lock:
                frame = self._backlog[0] if self._backlog else None
            if frame is None:
                return
            if not self._deliver(queue, frame):
                if not queue.want_more_buffers():
                    return             # kicked again when the driver lends more
                continue
            with self._backlog_lock:
                self._backlog.popleft()

    def _deliver(self, queue: SplitQueue, frame: bytes) -> bool:
        """Write header + frame into as many receive buffers as it takes (one without
        MRG_RXBUF); False, with the buffers given back, if the driver lent too few."""
        data_length = NET_HEADER.size + len(frame)
        taken: list[tuple[DescriptorChain, int]] = []
        filled = 0
        while filled < data_length:
            chain = queue.pop()
            if chain is None:
                queue.rewind(len(taken))
                return False
            _check_receive_buffer(chain)
            count = min(chain.writable_length, data_length - filled)
            taken.append((chain, count))
            filled += count
            if not self.mergeable:
                break
        if filled < data_length:       # 5.1.6.3.1: a buffer too small for the frame
            queue.rewind(1)
            self.rx_dropped += 1
            return True
        data = NET_HEADER.pack(0, VIRTIO_NET_HDR_GSO_NONE, 0, 0, 0, 0, len(taken)) + frame
        offset = 0
        for chain, count in taken:
            write_buffers(queue.memory, chain.writable, 0, data[offset:offset + count])
            queue.push(chain.head, count)
            offset += count
        self.rx_frames += 1
        self.rx_bytes += len(frame)
        return True

    # --- the host side: frames from the tap
    def receive(self, frame: bytes) -> bool:
        """Queue a frame for the guest and kick the receive queue; False if it was dropped
        (no driver, or BACKLOG_FRAMES already waiting)."""
        with self._backlog_lock:
            if not self._active or len(self._backlog) >= self.backlog_frames:
                self.rx_dropped += 1
                return False
            self._backlog.append(frame)
        self.kick(RECEIVEQ)
        return True

    def _read_tap(self) -> None:
        """The reader thread: poll(2) the tap, each frame to receive(), until close()."""
        poller = select.poll()
        poller.register(self.tap.fileno(), select.POLLIN)
        poller.register(self._stop_fd, select.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if self._stop_fd in ready:
                    return
                while (frame := self.tap.read()) is not None:
                    if not frame:              # end of file: the other side is gone
                        log.error("%s: tap %s was closed, the guest receives no more frames",
                                  self.name, self.tap.name)
                        return
                    self.receive(frame)
        except OSError as e:
            log.error("%s: reading tap %s failed, the guest receives no more frames: %s",
                      self.name, self.tap.name, e.strerror)


def _check_receive_buffer(chain: DescriptorChain) -> None:
    """5.1.6.3.1: receive buffers are device-writable and hold at least a header."""
    if chain.readable:
        raise VirtioDeviceError(f"receive buffer {chain.head} has device-readable descriptors")
    if chain.writable_length < NET_HEADER.size:
        raise VirtioDeviceError(f"receive buffer {chain.head} of {chain.writable_length} bytes "
                                f"has no room for the {NET_HEADER.size}-byte header")
