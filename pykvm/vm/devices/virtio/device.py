"""What every virtio device is to its transport: an ID, features, a config space, queues.

Spec: virtio 1.2, chapter 2 "Basic Facilities of a Virtio Device" and 6
"Reserved Feature Bits".  A device module (blk.py, console.py, rng.py)
subclasses VirtioDevice and knows nothing of MMIO; the transport (mmio.py)
knows nothing of disks or consoles.  The split is QEMU's VirtIODevice /
virtio-mmio and Firecracker's VirtioDevice / MmioTransport.
"""
from __future__ import annotations

from typing import Callable

from pykvm.vm.devices.virtio.queue import DescriptorChain, SplitQueue
from pykvm.errors import PyKvmError

__all__ = ["VirtioDevice", "VirtioDeviceError", "VIRTIO_F_INDIRECT_DESC", "VIRTIO_F_RING_EVENT_IDX",
           "VIRTIO_F_VERSION_1", "TRANSPORT_FEATURES", "config_read"]

# Chapter 6: feature bits every device may be offered, whatever it is.
VIRTIO_F_INDIRECT_DESC = 1 << 28       # descriptors may point to tables of descriptors (2.7.5.3)
VIRTIO_F_RING_EVENT_IDX = 1 << 29      # used_event / avail_event suppress notifications (2.7.10)
VIRTIO_F_VERSION_1 = 1 << 32           # this is a virtio 1.x device, not a legacy one: required
TRANSPORT_FEATURES = VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_RING_EVENT_IDX


class VirtioDeviceError(PyKvmError):
    """A request so malformed the device cannot even answer it: the device needs a reset (2.1.2)."""


def config_read(config: bytes, offset: int, size: int) -> int:
    """A little-endian read of `size` bytes at `offset` of a config space; 0 beyond its end."""
    return int.from_bytes(config[offset:offset + size].ljust(size, b"\0"), "little")


def _inactive(index: int) -> None:
    """The kick of a device no driver has set up: nothing to do."""


class VirtioDevice:
    """The device side of virtio; subclasses fill in the class attributes and process()."""

    device_id = 0                      # chapter 5: 1 net, 2 block, 3 console, 4 entropy, ...
    name = "virtio"                    # for traces and errors
    queue_sizes: tuple[int, ...] = ()  # the largest size each queue may have (QueueNumMax)
    features = 0                       # device-specific feature bits offered (below bit 24)

    def __init__(self):
        self.queues: list[SplitQueue | None] = []
        self.driver_features = 0
        self.config_generation = 0
        self.kick: Callable[[int], None] = _inactive

    # --- the config space (chapter 5, "Device configuration layout" of each device)
    def config_bytes(self) -> bytes:
        """The device's config space as the driver reads it (little-endian fields)."""
        return b""

    def read_config(self, offset: int, size: int) -> int:
        return config_read(self.config_bytes(), offset, size)

    def write_config(self, offset: int, size: int, value: int) -> None:
        """Writable config fields are rare; by default writes are ignored."""

    # --- life cycle, called by the transport with its lock held
    def activate(self, queues: list[SplitQueue | None], driver_features: int,
                 kick: Callable[[int], None]) -> None:
        """DRIVER_OK: the queues are set up.  `kick(queue_index)` asks the transport to run
        process(queue_index) now, for work the host starts (console input arriving)."""
        self.queues, self.driver_features, self.kick = queues, driver_features, kick

    def reset(self) -> None:
        """Back to the state before the driver found us (the transport releases the queues)."""
        self.queues, self.driver_features, self.kick = [], 0, _inactive

    def process(self, index: int) -> None:
        """Handle what the driver made available on queue `index`, pushing answers to its used
        ring; the transport then interrupts the driver if 2.7.10 says it wants one."""
        raise NotImplementedError

    def serve(self, index: int, handle: Callable[[DescriptorChain], int]) -> None:
        """Answer every request on queue `index` with `handle(chain) -> bytes written`.

        With EVENT_IDX the device asks for the next kick only after the ring
        looked empty, and looks once more after asking (2.7.10): a request
        that arrived in between would otherwise wait for a kick never sent.
        """
        queue = self.queues[index]
        while True:
            while (chain := queue.pop()) is not None:
                queue.push(chain.head, handle(chain))
            if not queue.want_notifications():
                return

    def start(self) -> None:
        """The device's transport is on the bus: start any host-side work (a reader thread)."""

    def get_state(self) -> dict:
        """What the device holds besides its queues (for a snapshot); most devices hold nothing."""
        return {}

    def set_state(self, state: dict) -> None:
        """Back to get_state()'s `state`, before the transport activates the device again."""

    def close(self) -> None:
        """Let go of host resources (files, threads)."""
