"""The machine's virtio step: which devices, in which slot, and how the guest finds them.

    VirtioConfig (from the CLI)  ->  VirtioDevices(config)      opens the images (bad input: one line)
                                     .slots                     base, size, IRQ, device: for the
                                     .windows()                 command line and the ACPI DSDT
                                     .attach(machine, output)   transports on the MMIO bus,
                                                                eventfds, worker threads
                                     .paused()                  every transport's lock held
                                     .get_state() / .set_state()  for a snapshot
                                     .close()

Slots come from pykvm.vm.layout (VIRTIO_MMIO_BASE + n * VIRTIO_MMIO_SIZE,
IRQ VIRTIO_MMIO_IRQS[n]): disks first, in command-line order, then the
console (and a second one, hvc1, and a third, hvc2, when asked for), then the entropy device, then the
network card.  The guest learns them from
`virtio_mmio.device=4K@0xd0000000:5` on its command line (Linux's
virtio_mmio.c with CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES, Firecracker's way;
the tiny kernel parses the same) and from the DSDT (pykvm.vm.arch.x86.aml).
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pykvm.vm import layout
from pykvm.vm.devices.virtio.blk import Block
from pykvm.vm.devices.virtio.console import VirtioConsole
from pykvm.vm.devices.virtio.device import VirtioDevice
from pykvm.vm.devices.virtio.mmio import VirtioMmio
from pykvm.vm.devices.virtio.net import Net
from pykvm.vm.devices.virtio.notify import NOTIFY_MODES, EventfdNotifier, ExitNotifier
from pykvm.vm.devices.virtio.rng import Rng
from pykvm.vm.devices.virtio.tap import Tap
from pykvm.errors import ConfigError, KvmError

__all__ = ["VirtioConfig", "DiskSpec", "NetSpec", "VirtioDevices", "VirtioSlot", "parse_disk",
           "MAX_DEVICES"]

log = logging.getLogger("pykvm.virtio")

MAX_DEVICES = len(layout.VIRTIO_MMIO_IRQS)
READ_ONLY_SUFFIX = "ro"
EVENTFD_CAPABILITIES = ("KVM_CAP_IOEVENTFD", "KVM_CAP_IRQFD")


@dataclass(frozen=True)
class DiskSpec:
    """One --disk FILE[,ro]."""

    path: Path
    read_only: bool = False


@dataclass
class NetSpec:
    """One network card: its tap, opened by whoever set the network up, and its MAC address.
    The card owns the tap from then on and closes it with the machine."""

    tap: Tap
    mac: bytes


@dataclass
class VirtioConfig:
    """The virtio devices a machine gets (all optional)."""

    disks: list[DiskSpec] = field(default_factory=list)
    console: bool = False              # a virtio console (hvc0) takes the terminal's input
    rng: bool = False
    net: NetSpec | None = None         # a virtio-net card on a tap (`pykvm boot --net`)
    notify: str = "eventfd"            # "eventfd" (ioeventfd + irqfd) or "exit" (MMIO exits)
    # Where console output goes when not with the serial port's (the machine's output):
    console_output: Callable[[bytes], None] | None = None      # hvc0's
    error_console: Callable[[bytes], None] | None = None       # a second console, hvc1, and its output
    input_console: Callable[[bytes], None] | None = None       # a third, hvc2, for input; its output

    @property
    def count(self) -> int:
        return len(self.disks) + self.console + (self.error_console is not None) + \
            (self.input_console is not None) + self.rng + (self.net is not None)


@dataclass(frozen=True)
class VirtioSlot:
    """Where one device sits: the MMIO window and the interrupt the guest is told about."""

    base: int
    size: int
    irq: int
    device: VirtioDevice


def parse_disk(text: str) -> DiskSpec:
    """`FILE` or `FILE,ro`; ConfigError for anything else."""
    path, sep, option = text.rpartition(",")
    if not sep:
        return DiskSpec(Path(text))
    if option != READ_ONLY_SUFFIX or not path:
        raise ConfigError(f"--disk {text}: expected FILE or FILE,{READ_ONLY_SUFFIX}")
    return DiskSpec(Path(path), read_only=True)


class VirtioDevices:
    """The machine's virtio devices, from creation to close."""

    def __init__(self, config: VirtioConfig):
        if config.notify not in NOTIFY_MODES:
            raise ConfigError(f"--virtio-notify {config.notify}: choose from {', '.join(NOTIFY_MODES)}")
        if config.count > MAX_DEVICES:
            raise ConfigError(f"{config.count} virtio devices asked for; pykvm has {MAX_DEVICES} "
                              "virtio-mmio slots")
        self.config = config
        self.console: VirtioConsole | None = None
        self.input_console: VirtioConsole | None = None
        self.slots: list[VirtioSlot] = []
        self.transports: list[VirtioMmio] = []
        self.notifiers: list = []
        try:
            for device in self._create(config):
                base, irq = layout.virtio_mmio_slot(len(self.slots))
                self.slots.append(VirtioSlot(base, layout.VIRTIO_MMIO_SIZE, irq, device))
        except BaseException:
            self.close()
            raise

    def _create(self, config: VirtioConfig):
        for disk in config.disks:
            yield Block(disk.path, disk.read_only)
        if config.console:
            self.console = VirtioConsole(out=config.console_output or self._console_out)
            yield self.console
        if config.error_console is not None:
            yield VirtioConsole(out=config.error_console)
        if config.input_console is not None:
            self.input_console = VirtioConsole(out=config.input_console)
            yield self.input_console
        if config.rng:
            yield Rng()
        if config.net is not None:
            yield Net(config.net.tap, config.net.mac)

    _output = None

    def _console_out(self, data: bytes) -> None:
        if self._output is not None:
            self._output(data)

    def windows(self) -> list[tuple[int, int, int]]:
        """(base, size, irq) of every device: what the command line and the DSDT describe."""
        return [(s.base, s.size, s.irq) for s in self.slots]

    def attach(self, machine, output) -> None:
        """Put each device's transport on the machine's MMIO bus and wire its kick and interrupt."""
        self._output = output
        trace = _trace_line if machine.config.trace else None
        if self.slots and self.config.notify == "eventfd":
            for capability in EVENTFD_CAPABILITIES:
                machine.kvm.require(capability, "virtio kicks and interrupts without VM exits "
                                                "(--virtio-notify exit does without)")
        for slot in self.slots:
            notifier = self._notifier(machine, slot.irq, trace)
            self.notifiers.append(notifier)
            transport = VirtioMmio(slot.device, machine.memory, notifier.interrupt)
            self.transports.append(transport)
            machine.mmio.insert(transport, slot.base, slot.size)
            notifier.start(transport, slot.base)
            slot.device.start()

    def answered_registers(self) -> list[tuple[int, int, object]]:
        """Every transport's InterruptStatus and InterruptACK, for Vcpu.answer_in_c(); none on
        the plain path (--virtio-notify exit), where every access is an exit to Python."""
        if self.config.notify != "eventfd":
            return []
        return [register for slot, transport in zip(self.slots, self.transports)
                for register in transport.answered_registers(slot.base)]

    def _notifier(self, machine, gsi: int, trace):
        if self.config.notify == "exit":
            return ExitNotifier(machine.vm, gsi)

        def worker_failed(error: BaseException) -> None:
            log.error("a virtio device's worker failed, stopping the VM: %r", error)
            machine.stop(1)

        return EventfdNotifier(machine.vm, gsi, on_error=worker_failed, trace=trace)

    @contextlib.contextmanager
    def paused(self):
        """Hold every transport's lock: no worker thread serves a queue until the block ends
        (a snapshot reads the queues' indexes and guest memory meanwhile)."""
        with contextlib.ExitStack() as stack:
            for transport in self.transports:
                stack.enter_context(transport.lock)
            yield

    def get_state(self) -> list[dict]:
        """Each transport's state, slot by slot (call inside paused())."""
        return [transport.get_state() for transport in self.transports]

    def set_state(self, states: list[dict]) -> None:
        """Each transport back to its state, then one kick each: requests the driver made
        available while the snapshot was taken are served, as the kick they came with
        reached the old VM's worker and was lost with it."""
        if len(states) != len(self.transports):
            raise ValueError(f"{len(states)} virtio devices saved, {len(self.transports)} built")
        for transport, state in zip(self.transports, states):
            transport.set_state(state)
        for transport in self.transports:
            transport.kick_all()

    def summary(self) -> list[str]:
        """For --trace: each device's kicks, by MMIO exit and by ioeventfd."""
        return [f"{t.device.name:<16} kicks: {t.exit_kicks} by MMIO exit, {n.eventfd_kicks} by ioeventfd"
                for t, n in zip(self.transports, self.notifiers)]

    def close(self) -> None:
        """Stop the workers first (they touch guest memory), then release queues and files."""
        for notifier in self.notifiers:
            try:
                notifier.close()
            except KvmError as e:
                log.debug("virtio: %s", e)
        for transport in self.transports:
            transport.reset()
        for slot in self.slots:
            slot.device.close()
        self.notifiers, self.transports = [], []


def _trace_line(text: str) -> None:
    os.write(2, (text + "\n").encode())
