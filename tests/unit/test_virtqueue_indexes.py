"""The indexes a device publishes, as the driver's CPU sees them while they are written.

A guest's driver reads used.idx (and, with EVENT_IDX, avail_event) whenever it likes, on
another CPU, while the device writes them.  Each must go from one value to the next in
one store: a moment's 0 in used.idx tells the driver that entries are used which the
device never wrote.  Linux then finds a head it does not have out ("virtio_net virtio0:
output.0:id 2 is not a head!"), marks the queue broken, and every later frame fails with
"net eth0: Unexpected TXQ (0) queue failure: -5".  A moment's 0 in avail_event can cost a
kick the device asked for.

Here a forked process plays the driver's CPU: guest memory is mapped MAP_SHARED, so the
child sees the parent's stores as a vCPU sees pykvm's, and it reads both indexes in a
loop while the parent pushes used entries and asks for kicks, counting every value it saw
that the device never published.  struct.pack_into, which zeroes its destination before
it writes the value, shows such values within a few hundred thousand pushes.
"""
from __future__ import annotations

import mmap
import os
import struct
import time

from pykvm.vm.devices.virtio.queue import USED_ELEM, SplitQueue, ring_sizes
from pykvm.vm.memory import GuestMemory, MemoryRegion

SIZE = 256
DESC, AVAIL, USED = 0x10000, 0x20000, 0x30000
USED_IDX = USED + 2
AVAIL_EVENT = USED + 4 + USED_ELEM.size * SIZE
DONE = 0x40000                         # the parent sets this word when it has finished
FIRST = 0x100                          # the device publishes only FIRST..0xFFFF here
BURSTS = 8                             # each FIRST+1 .. 0xFFFF: about 520,000 stores of each
WATCH_SECONDS = 60                     # the child gives up after this, whatever happens


class SharedGuestMemory(GuestMemory):
    """Guest RAM mapped MAP_SHARED: a forked child sees the parent's stores as they happen."""

    def _add_region(self, guest_addr: int, size: int) -> None:
        mapping = mmap.mmap(-1, size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self.regions.append(MemoryRegion(len(self.regions), guest_addr, size, memoryview(mapping), mapping))


def watch(memory: GuestMemory, report: int) -> None:
    """In the child: read both indexes until DONE; write 'unpublished-used unpublished-event reads'."""
    words = memory.view(USED, ring_sizes(SIZE)[2]).cast("H")
    done = memory.view(DONE, 2).cast("H")
    idx_word, event_word = (USED_IDX - USED) // 2, (AVAIL_EVENT - USED) // 2
    bad_used = bad_event = reads = 0
    deadline = time.monotonic() + WATCH_SECONDS
    while not done[0] and time.monotonic() < deadline:
        for _ in range(1000):
            bad_used += words[idx_word] < FIRST
            bad_event += words[event_word] < FIRST
        reads += 1000
    os.write(report, f"{bad_used} {bad_event} {reads}".encode())


def test_used_idx_and_avail_event_never_show_a_value_the_device_did_not_publish():
    memory = SharedGuestMemory(4 << 20)
    queue = SplitQueue(memory, SIZE, DESC, AVAIL, USED, event_idx=True)
    memory.write(USED_IDX, struct.pack("<H", FIRST))
    memory.write(AVAIL_EVENT, struct.pack("<H", FIRST))
    report_r, report_w = os.pipe()
    child = os.fork()
    if child == 0:                     # the driver's CPU
        try:
            watch(memory, report_w)
        finally:
            os._exit(0)
    os.close(report_w)
    try:
        for _ in range(BURSTS):
            queue.set_state({"last_avail": FIRST, "used_idx": FIRST, "signalled": FIRST})
            for _ in range(0xFFFF - FIRST):
                queue.push(0, 0)
                queue.last_avail = queue.used_idx
                queue.want_notifications()
    finally:
        memory.write(DONE, struct.pack("<H", 1))
        report = os.read(report_r, 100).decode()
        os.waitpid(child, 0)
        os.close(report_r)
    bad_used, bad_event, reads = map(int, report.split())
    assert reads >= 10_000, f"the watching process read only {reads} times"
    assert (bad_used, bad_event) == (0, 0), (
        f"of {reads} reads, {bad_used} saw used.idx and {bad_event} saw avail_event below "
        f"{FIRST:#x}, values the device never published")
