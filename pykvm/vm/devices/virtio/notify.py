"""The kick and the interrupt: how a virtio-mmio device and its driver wake each other.

Two ways, chosen per machine (`pykvm boot --virtio-notify`):

  eventfd (default)                       exit (the plain path)
  guest writes QueueNotify                guest writes QueueNotify
   -> KVM matches the ioeventfd,           -> KVM_EXIT_MMIO: KVM_RUN returns,
      bumps an eventfd, re-enters the         the vCPU thread runs the device
      guest at once (no exit to us)           (pykvm.vm.machine's run loop ->
   -> the device's worker thread, asleep      Bus -> VirtioMmio.write -> kick)
      in read(2) on that eventfd, wakes   device done: KVM_IRQ_LINE 1 then 0
      and runs the device
  device done: write the irqfd's eventfd  (an edge on the device's IRQ)
   -> KVM injects the IRQ (an edge)

KVM_IOEVENTFD and KVM_IRQFD: Documentation/virt/kvm/api.rst 4.59 and 4.75.
On the eventfd path the vCPU never waits for the disk, and a kick costs no
exit to user space; `pykvm boot --trace` shows the difference.  This is how
Firecracker and QEMU run virtio devices.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Callable

from pykvm.vm.devices.virtio.mmio import QUEUE_NOTIFY, VirtioMmio
from pykvm.errors import KvmError

__all__ = ["EventfdNotifier", "ExitNotifier", "NOTIFY_MODES"]

log = logging.getLogger("pykvm.virtio")

NOTIFY_MODES = ("eventfd", "exit")
NOTIFY_WIDTH = 4                       # QueueNotify is written 32 bits wide (4.2.2.2)


class ExitNotifier:
    """The plain path: kicks arrive as MMIO exits; the interrupt is KVM_IRQ_LINE, pulsed."""

    mode = "exit"

    def __init__(self, vm, gsi: int):
        self.vm, self.gsi = vm, gsi
        self.transport: VirtioMmio | None = None

    def interrupt(self) -> None:
        """An edge on the device's line: raised then lowered (the driver reads InterruptStatus)."""
        self.vm.irq_line(self.gsi, 1)
        self.vm.irq_line(self.gsi, 0)

    def start(self, transport: VirtioMmio, base: int) -> None:
        self.transport = transport

    @property
    def eventfd_kicks(self) -> int:
        return 0

    def close(self) -> None:
        pass


class EventfdNotifier:
    """ioeventfd on QueueNotify, a worker thread per device, irqfd for the interrupt."""

    mode = "eventfd"

    def __init__(self, vm, gsi: int, on_error: Callable[[BaseException], None],
                 trace: Callable[[str], None] | None = None):
        self.vm, self.gsi, self._on_error, self._trace = vm, gsi, on_error, trace
        self.kick_fd = os.eventfd(0, os.EFD_CLOEXEC)     # blocking: the worker sleeps in read(2)
        self.irq_fd = os.eventfd(0, os.EFD_CLOEXEC)
        self._stopping = False
        self._notify_address: int | None = None
        self._thread: threading.Thread | None = None
        self.eventfd_kicks = 0             # worker wake-ups (kicks that cost no VM exit)
        vm.irqfd(self.irq_fd, gsi)

    def interrupt(self) -> None:
        """KVM_IRQFD: one write to the eventfd is one edge on the device's GSI."""
        os.eventfd_write(self.irq_fd, 1)

    def start(self, transport: VirtioMmio, base: int) -> None:
        """Register the ioeventfd on base + QueueNotify and start the worker."""
        self._notify_address = base + QUEUE_NOTIFY
        self.vm.ioeventfd(self.kick_fd, self._notify_address, NOTIFY_WIDTH)
        self._thread = threading.Thread(target=self._work, args=(transport,), daemon=True,
                                        name=f"pykvm-{transport.device.name}")
        self._thread.start()

    def _work(self, transport: VirtioMmio) -> None:
        """The worker: sleep until a kick (or close()), then run the device's queues.

        One read(2) per wake-up, no poll(2) in front of it: it sleeps until the
        eventfd's count is non-zero, returns the count (the kicks since the
        last wake-up, however many) and resets it.  close() wakes it the same way."""
        try:
            while True:
                os.eventfd_read(self.kick_fd)
                if self._stopping:
                    return
                self.eventfd_kicks += 1
                if self._trace is not None:
                    self._trace(f"pykvm: kick   {transport.device.name} by ioeventfd (no VM exit)")
                transport.kick_all()
        except BaseException as e:                     # a bug in pykvm: stop the VM, say why
            self._on_error(e)

    def close(self) -> None:
        """Stop the worker, unregister from KVM, close the eventfds."""
        if self._thread is not None:
            self._stopping = True
            os.eventfd_write(self.kick_fd, 1)           # wakes the worker, which sees _stopping
            self._thread.join()
            self._thread = None
        try:
            if self._notify_address is not None and not self.vm.closed:
                self.vm.ioeventfd(self.kick_fd, self._notify_address, NOTIFY_WIDTH, deassign=True)
            if not self.vm.closed:
                self.vm.irqfd(self.irq_fd, self.gsi, deassign=True)
        except KvmError as e:
            log.debug("virtio: unregistering eventfds: %s", e)
        for fd in (self.kick_fd, self.irq_fd):
            os.close(fd)
        self.kick_fd = self.irq_fd = -1
