"""virtio-console: one port, the guest's hvc0, connected to this terminal.

Spec: virtio 1.2, section 5.3 "Console Device".  Without
VIRTIO_CONSOLE_F_MULTIPORT the device has exactly two queues (5.3.2):

    receiveq0   (0)  device-writable buffers the driver lends us for input
    transmitq0  (1)  device-readable buffers holding the guest's output

No features are offered, so the config space is empty.  Output is one
request per buffer, not one VM exit per byte as with the 16550A.  Input
from the host waits in a small queue until the driver has lent receive
buffers; receive() and wait_for_room() are the same calls the UART offers,
so pykvm.vm.console.Console can feed either.
"""
from __future__ import annotations

import threading
from typing import Callable

from pykvm.vm.devices.virtio.device import VirtioDevice
from pykvm.vm.devices.virtio.queue import DescriptorChain, read_buffers, write_buffers

__all__ = ["VirtioConsole", "VIRTIO_ID_CONSOLE", "RECEIVEQ", "TRANSMITQ", "HOST_QUEUE_BYTES"]

VIRTIO_ID_CONSOLE = 3                  # 5: device ID
RECEIVEQ, TRANSMITQ = 0, 1             # 5.3.2
QUEUE_SIZE = 64
HOST_QUEUE_BYTES = 4096                # host input held while the guest has no receive buffer
MAX_OUTPUT_BYTES = 64 << 10            # guest output taken from one transmit buffer, at most


class VirtioConsole(VirtioDevice):
    """A single-port virtio console; guest output goes to `out(bytes)`."""

    device_id = VIRTIO_ID_CONSOLE
    name = "virtio-console"
    queue_sizes = (QUEUE_SIZE, QUEUE_SIZE)

    def __init__(self, out: Callable[[bytes], None]):
        super().__init__()
        self._out = out
        self._host = bytearray()
        self._room = threading.Condition()

    def process(self, index: int) -> None:
        if index == TRANSMITQ:
            self.serve(TRANSMITQ, self._transmit)
        elif index == RECEIVEQ:
            self._fill_receive_buffers()

    def _transmit(self, chain: DescriptorChain) -> int:
        length = min(chain.readable_length, MAX_OUTPUT_BYTES)
        self._out(read_buffers(self.queues[TRANSMITQ].memory, chain.readable, 0, length))
        return 0

    def _fill_receive_buffers(self) -> None:
        """Move queued host input into the receive buffers the driver lent (runs under the
        transport's lock: from a kick, or from receive() through self.kick)."""
        queue = self.queues[RECEIVEQ]
        with self._room:
            while self._host and (chain := queue.pop()) is not None:
                data = bytes(self._host[:chain.writable_length])
                write_buffers(queue.memory, chain.writable, 0, data)
                queue.push(chain.head, len(data))
                del self._host[:len(data)]
            queue.want_notifications()
            self._room.notify_all()

    # --- the host side, as Serial16550 offers it
    def receive(self, data: bytes) -> int:
        """Queue host input for the guest; how many bytes were taken (see wait_for_room)."""
        with self._room:
            taken = data[:HOST_QUEUE_BYTES - len(self._host)]
            self._host += taken
        self.kick(RECEIVEQ)
        return len(taken)

    def wait_for_room(self, timeout: float | None = None) -> bool:
        with self._room:
            return self._room.wait_for(lambda: len(self._host) < HOST_QUEUE_BYTES, timeout)

    def get_state(self) -> dict:
        """Host input the guest has not taken yet: typed before the snapshot, delivered after it."""
        with self._room:
            return {"host_queue": bytes(self._host).hex()}

    def set_state(self, state: dict) -> None:
        with self._room:
            self._host = bytearray(bytes.fromhex(state["host_queue"])[:HOST_QUEUE_BYTES])

    def reset(self) -> None:
        super().reset()
        with self._room:
            self._host.clear()
            self._room.notify_all()
