"""virtio-rng: entropy for the guest, from the host's getrandom(2).

Spec: virtio 1.2, section 5.4 "Entropy Device".  One queue (requestq); the
driver makes device-writable buffers available and the device fills them
with random bytes.  No features, no config space.  At most MAX_BYTES go into
one buffer, so a guest cannot make pykvm produce gigabytes at once.
"""
from __future__ import annotations

import os

from pykvm.vm.devices.virtio.device import VirtioDevice
from pykvm.vm.devices.virtio.queue import DescriptorChain, write_buffers

__all__ = ["Rng", "VIRTIO_ID_ENTROPY", "MAX_BYTES"]

VIRTIO_ID_ENTROPY = 4                  # 5: device ID
QUEUE_SIZE = 64
MAX_BYTES = 64 << 10                   # random bytes per request, at most


class Rng(VirtioDevice):
    """virtio-rng: each device-writable buffer comes back full of os.urandom()."""

    device_id = VIRTIO_ID_ENTROPY
    name = "virtio-rng"
    queue_sizes = (QUEUE_SIZE,)

    def process(self, index: int) -> None:
        self.serve(index, self.fill)

    def fill(self, chain: DescriptorChain) -> int:
        """Random bytes into the chain's device-writable buffers; how many."""
        length = min(chain.writable_length, MAX_BYTES)
        write_buffers(self.queues[0].memory, chain.writable, 0, os.urandom(length))
        return length
