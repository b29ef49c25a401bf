"""virtio-mmio, version 2: a virtio device as a page of registers at a fixed address.

Spec: virtio 1.2, section 4.2 "Virtio Over MMIO" (4.2.2 the register layout,
4.2.3.1 device initialization, 4.2.3.2 virtqueue configuration, 4.2.3.3
notifications) and 3.1 "Device Initialization".  No PCI: the guest learns
each device's address and interrupt from its command line
(`virtio_mmio.device=4K@0xd0000000:5`) or from an ACPI DSDT entry, as on
QEMU's microvm and on Firecracker.

A driver brings a device up like this (3.1.1):

    Status = 0                      reset
    Status |= ACKNOWLEDGE | DRIVER  "I see you, I can drive you"
    DeviceFeaturesSel/DeviceFeatures, DriverFeaturesSel/DriverFeatures
    Status |= FEATURES_OK           the device clears it again if it refuses them
    for each queue: QueueSel, QueueNumMax, QueueNum, QueueDesc/Driver/Device, QueueReady = 1
    Status |= DRIVER_OK             the device is live
    QueueNotify = n                 "queue n has new buffers" (the kick)
    InterruptStatus / InterruptACK  "why did you interrupt me?" / "seen"

The transport knows no device: it speaks for any VirtioDevice (device.py).
The vCPU thread calls read()/write() for register accesses; a kick either
arrives here too (the plain path: a QueueNotify write is an MMIO exit) or
bypasses the vCPU through an ioeventfd to a worker thread (notify.py), which
calls kick().  `lock` keeps the threads apart: it guards the device, its
queues and registers, and is held while the device works on a request.
InterruptStatus is not under it: the word lives in C memory and changes only
by atomic operations (pykvm/vm/kvm/answered.c), so a driver which saw its
answer in the used ring and acknowledges the interrupt (InterruptACK) never
waits for the worker to finish.  The same word lets the vCPU answer those two
registers in C, without an exit to Python at all (answered_registers()).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

from pykvm.vm.devices.bus import BusDevice
from pykvm.vm.kvm.bindings import ffi, lib
from pykvm.vm.devices.virtio.device import (TRANSPORT_FEATURES, VIRTIO_F_INDIRECT_DESC,
                                         VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1, VirtioDevice,
                                         VirtioDeviceError)
from pykvm.vm.devices.virtio.queue import SplitQueue, VirtqueueError

__all__ = ["VirtioMmio", "MMIO_WINDOW", "QUEUE_NOTIFY", "MAGIC_VALUE", "VERSION", "VENDOR_ID",
           "STATUS_ACKNOWLEDGE", "STATUS_DRIVER", "STATUS_DRIVER_OK", "STATUS_FEATURES_OK",
           "STATUS_DEVICE_NEEDS_RESET", "STATUS_FAILED", "INTERRUPT_USED_BUFFER",
           "INTERRUPT_CONFIG_CHANGE"]

log = logging.getLogger("pykvm.virtio")

MMIO_WINDOW = 0x200                    # registers 0x000-0x0ff, device config from 0x100
MAX_LOGGED_RESETS = 10                 # DEVICE_NEEDS_RESET warnings per device, then quiet

# 4.2.2 MMIO Device Register Layout (offsets from the device's base)
MAGIC_VALUE = 0x000                    # R: 0x74726976, "virt" little-endian
VERSION = 0x004                        # R: 2 (1 would be the legacy interface)
DEVICE_ID = 0x008                      # R: what the device is (0 = no device here)
VENDOR_ID = 0x00C                      # R: who made it
DEVICE_FEATURES = 0x010                # R: 32 feature bits, the half DeviceFeaturesSel picks
DEVICE_FEATURES_SEL = 0x014            # W: 0 = bits 0-31, 1 = bits 32-63
DRIVER_FEATURES = 0x020                # W: the features the driver accepts, half by half
DRIVER_FEATURES_SEL = 0x024            # W
QUEUE_SEL = 0x030                      # W: which queue the Queue* registers below mean
QUEUE_NUM_MAX = 0x034                  # R: largest size the queue may have (0: no such queue)
QUEUE_NUM = 0x038                      # W: the size the driver chose
QUEUE_READY = 0x044                    # RW: 1 = the driver set the queue up; write 0 to stop it
QUEUE_NOTIFY = 0x050                   # W: the kick, with the queue index as the value
INTERRUPT_STATUS = 0x060               # R: why the device interrupted (bits below)
INTERRUPT_ACK = 0x064                  # W: the bits the driver handled
STATUS = 0x070                         # RW: device status (3.1); writing 0 resets
QUEUE_DESC_LOW, QUEUE_DESC_HIGH = 0x080, 0x084          # W: descriptor table address
QUEUE_DRIVER_LOW, QUEUE_DRIVER_HIGH = 0x090, 0x094      # W: available ring address
QUEUE_DEVICE_LOW, QUEUE_DEVICE_HIGH = 0x0A0, 0x0A4      # W: used ring address
SHM_SEL = 0x0AC                        # W: shared memory region (none here)
SHM_LEN_LOW, SHM_LEN_HIGH = 0x0B0, 0x0B4                # R: -1, "no such region"
SHM_BASE_LOW, SHM_BASE_HIGH = 0x0B8, 0x0BC              # R: -1
CONFIG_GENERATION = 0x0FC              # R: changes whenever the config space changes
CONFIG = 0x100                         # RW: the device's config space starts here

MAGIC = 0x74726976                     # "virt"
TRANSPORT_VERSION = 2                  # the non-legacy interface
PYKVM_VENDOR = 0x4D564B50              # "PKVM" little-endian
NO_SHM = 0xFFFFFFFF                    # 4.2.2: a non-existent region reads as length -1
SHM_REGISTERS = (SHM_LEN_LOW, SHM_LEN_HIGH, SHM_BASE_LOW, SHM_BASE_HIGH)

# 2.1 Device Status Field
STATUS_ACKNOWLEDGE = 1                 # the guest found the device
STATUS_DRIVER = 2                      # the guest has a driver for it
STATUS_DRIVER_OK = 4                   # the driver is ready: the device is live
STATUS_FEATURES_OK = 8                 # feature negotiation is complete
STATUS_DEVICE_NEEDS_RESET = 64         # the device hit an error it cannot recover from
STATUS_FAILED = 128                    # the driver gave up on the device

# 4.2.2: InterruptStatus bits
INTERRUPT_USED_BUFFER = 1              # a queue has used buffers
INTERRUPT_CONFIG_CHANGE = 2            # the config space changed (or the device needs a reset)


@dataclass
class QueueRegisters:
    """What the driver wrote for one queue (4.2.3.2), before it becomes a SplitQueue."""

    size_max: int
    size: int = 0
    ready: bool = False
    desc: int = 0
    driver: int = 0
    device: int = 0

    def set_half(self, name: str, high: bool, value: int) -> None:
        old = getattr(self, name)
        new = (old & 0xFFFFFFFF) | (value << 32) if high else (old & ~0xFFFFFFFF) | value
        setattr(self, name, new)


# Address registers: offset -> (QueueRegisters field, high half?)
QUEUE_ADDRESS_REGISTERS = {
    QUEUE_DESC_LOW: ("desc", False), QUEUE_DESC_HIGH: ("desc", True),
    QUEUE_DRIVER_LOW: ("driver", False), QUEUE_DRIVER_HIGH: ("driver", True),
    QUEUE_DEVICE_LOW: ("device", False), QUEUE_DEVICE_HIGH: ("device", True),
}


class VirtioMmio(BusDevice):
    """The virtio-mmio register file in front of one VirtioDevice.

    `memory` is the guest's GuestMemory; `interrupt()` raises the device's
    interrupt line (an irqfd write, or KVM_IRQ_LINE on the plain path).
    """

    def __init__(self, device: VirtioDevice, memory, interrupt: Callable[[], None]):
        self.device, self.memory, self._raise_interrupt = device, memory, interrupt
        self.lock = threading.Lock()             # the device, its queues, the registers
        self._interrupt_word = ffi.new("uint32_t *")   # InterruptStatus: atomic, never locked
        self.exit_kicks = 0            # QueueNotify writes that came as MMIO exits (plain path)
        self._logged: set[tuple[str, int, int]] = set()
        self.resets_needed = 0         # times the guest broke the device (logged up to a limit)
        self._reset_state()

    def _reset_state(self) -> None:
        self.status = 0
        self.device_features_sel = self.driver_features_sel = 0
        self.driver_features = 0
        self.interrupt_status = 0
        self.queue_sel = 0
        self.registers = [QueueRegisters(n) for n in self.device.queue_sizes]
        self.queues: list[SplitQueue | None] = [None] * len(self.registers)

    @property
    def interrupt_status(self) -> int:
        return lib.answered_word_load(self._interrupt_word)

    @interrupt_status.setter
    def interrupt_status(self, value: int) -> None:
        lib.answered_word_store(self._interrupt_word, value)

    def answered_registers(self, base: int) -> list[tuple[int, int, object]]:
        """InterruptStatus and InterruptACK, for Vcpu.answer_in_c(): the two registers every
        interrupt costs the driver, answered from the same word read() and write() use."""
        return [(base + INTERRUPT_STATUS, lib.ANSWER_READ, self._interrupt_word),
                (base + INTERRUPT_ACK, lib.ANSWER_WRITE_CLEARS, self._interrupt_word)]

    @property
    def offered_features(self) -> int:
        return self.device.features | TRANSPORT_FEATURES

    # --- the vCPU's accesses
    def read(self, offset: int, size: int) -> int:
        if offset == INTERRUPT_STATUS and size == 4:
            return self.interrupt_status     # not under `lock`: the worker may be busy
        with self.lock:
            if offset >= CONFIG:
                return self.device.read_config(offset - CONFIG, size)
            if size != 4 or offset % 4:
                return self._bad_access("read", offset, size)
            return self._read_register(offset)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == QUEUE_NOTIFY and size == 4:
            self.exit_kicks += 1
            self.kick(value)           # the plain path; takes the lock itself
            return
        if offset == INTERRUPT_ACK and size == 4:
            self._clear_interrupt(value)
            return
        with self.lock:
            if offset >= CONFIG:
                self.device.write_config(offset - CONFIG, size, value)
            elif size != 4 or offset % 4:
                self._bad_access("write", offset, size)
            else:
                self._write_register(offset, value)

    def _bad_access(self, kind: str, offset: int, size: int) -> int:
        """4.2.2.2: registers are accessed 32 bits wide and aligned; anything else is ignored
        (and logged once per register, width and direction: a guest cannot flood the log)."""
        if (kind, offset, size) not in self._logged:
            self._logged.add((kind, offset, size))
            log.warning("%s: %d-byte %s at register %#x ignored (32-bit accesses only)",
                        self.device.name, size, kind, offset)
        return 0

    def _read_register(self, offset: int) -> int:
        queue = self._selected()
        if offset == MAGIC_VALUE:
            return MAGIC
        if offset == VERSION:
            return TRANSPORT_VERSION
        if offset == DEVICE_ID:
            return self.device.device_id
        if offset == VENDOR_ID:
            return PYKVM_VENDOR
        if offset == DEVICE_FEATURES:
            return self._feature_half(self.offered_features, self.device_features_sel)
        if offset == QUEUE_NUM_MAX:
            return queue.size_max if queue else 0
        if offset == QUEUE_READY:
            return int(bool(queue and queue.ready))
        if offset == STATUS:
            return self.status
        if offset in SHM_REGISTERS:
            return NO_SHM
        if offset == CONFIG_GENERATION:
            return self.device.config_generation & 0xFFFFFFFF
        return 0                       # write-only and reserved registers read as 0

    @staticmethod
    def _feature_half(features: int, select: int) -> int:
        return (features >> (32 * select)) & 0xFFFFFFFF if select in (0, 1) else 0

    def _write_register(self, offset: int, value: int) -> None:
        if offset == DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif offset == DRIVER_FEATURES:
            self._write_driver_features(value)
        elif offset == DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == QUEUE_SEL:
            self.queue_sel = value
        elif offset == STATUS:
            self._write_status(value)
        elif offset in (QUEUE_NUM, QUEUE_READY) or offset in QUEUE_ADDRESS_REGISTERS:
            self._write_queue_register(offset, value)

    def _write_driver_features(self, value: int) -> None:
        """Only between DRIVER and FEATURES_OK (3.1.1 steps 4-5); later writes are ignored."""
        if self.status & STATUS_FEATURES_OK or self.driver_features_sel not in (0, 1):
            return
        shift = 32 * self.driver_features_sel
        self.driver_features = (self.driver_features & ~(0xFFFFFFFF << shift)) | (value << shift)

    # --- queues (4.2.3.2)
    def _selected(self) -> QueueRegisters | None:
        return self.registers[self.queue_sel] if self.queue_sel < len(self.registers) else None

    def _write_queue_register(self, offset: int, value: int) -> None:
        queue = self._selected()
        if queue is None:
            return
        if offset == QUEUE_READY:
            self._set_queue_ready(self.queue_sel, bool(value & 1))
        elif queue.ready:
            return                     # 4.2.2.3: no changes to a queue while it is ready
        elif offset == QUEUE_NUM:
            queue.size = value
        else:
            name, high = QUEUE_ADDRESS_REGISTERS[offset]
            queue.set_half(name, high, value)

    def _set_queue_ready(self, index: int, ready: bool) -> None:
        registers = self.registers[index]
        if not ready:
            self._release_queue(index)
            registers.ready = False
            return
        if registers.ready:
            return
        if registers.size > registers.size_max:
            self._needs_reset(f"queue {index}: size {registers.size} above QueueNumMax {registers.size_max}")
            return
        try:
            self.queues[index] = SplitQueue(
                self.memory, registers.size, registers.desc, registers.driver, registers.device,
                event_idx=bool(self.driver_features & VIRTIO_F_RING_EVENT_IDX),
                indirect=bool(self.driver_features & VIRTIO_F_INDIRECT_DESC))
        except VirtqueueError as e:
            self._needs_reset(f"queue {index}: {e}")
            return
        registers.ready = True

    def _release_queue(self, index: int) -> None:
        queue, self.queues[index] = self.queues[index], None
        if queue is not None:
            queue.release()

    # --- the status state machine (2.1, 3.1.1)
    def _write_status(self, value: int) -> None:
        if value == 0:
            self._reset()
            return
        value &= 0xFF
        new = value & ~self.status
        if new & STATUS_FEATURES_OK and not self._features_acceptable():
            value &= ~STATUS_FEATURES_OK   # 3.1.1 step 6: the driver reads it back and gives up
        if new & STATUS_DRIVER_OK and not value & STATUS_FEATURES_OK:
            value &= ~STATUS_DRIVER_OK     # DRIVER_OK without negotiated features: refused
        self.status = value | (self.status & STATUS_DEVICE_NEEDS_RESET)
        if new & STATUS_DRIVER_OK and self.status & STATUS_DRIVER_OK:
            self.device.activate(self.queues, self.driver_features, self.kick)

    def _features_acceptable(self) -> bool:
        """VIRTIO_F_VERSION_1 is required (no legacy), and nothing we did not offer."""
        accepted = self.driver_features
        if not accepted & VIRTIO_F_VERSION_1:
            log.warning("%s: the driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are "
                        "not supported)", self.device.name)
            return False
        return accepted & ~self.offered_features == 0

    def reset(self) -> None:
        """Forget the driver, its features and its queues, as the guest's reset does.  Waits
        for a request in flight: a worker or reader thread may be inside the device."""
        with self.lock:
            self._reset()

    def _reset(self) -> None:
        """Writing 0 to Status (4.2.3.1), with `lock` held."""
        for index in range(len(self.queues)):
            self._release_queue(index)
        self.device.reset()
        self._reset_state()

    @property
    def live(self) -> bool:
        """DRIVER_OK set and no DEVICE_NEEDS_RESET: the device may use its queues."""
        return self.status & (STATUS_DRIVER_OK | STATUS_DEVICE_NEEDS_RESET) == STATUS_DRIVER_OK

    def _needs_reset(self, why: str) -> None:
        """2.1.2: the device stops, sets DEVICE_NEEDS_RESET and, if live, tells the driver."""
        self.resets_needed += 1
        if self.resets_needed <= MAX_LOGGED_RESETS:
            quiet = "; not logging this any more" if self.resets_needed == MAX_LOGGED_RESETS else ""
            log.warning("%s: %s; the device needs a reset%s", self.device.name, why, quiet)
        was_live = self.status & STATUS_DRIVER_OK
        self.status |= STATUS_DEVICE_NEEDS_RESET
        if was_live:
            self._set_interrupt(INTERRUPT_CONFIG_CHANGE)
            self._raise_interrupt()

    # --- snapshots
    TRANSPORT_REGISTERS = ("status", "device_features_sel", "driver_features_sel", "driver_features",
                           "interrupt_status", "queue_sel")

    def get_state(self) -> dict:
        """Everything the driver told this transport and its device: the registers it wrote,
        each queue's place in guest memory and the device's indexes in it, the device's own
        state.  Called with `lock` held (VirtioDevices.paused): no worker moves a queue meanwhile."""
        queues = []
        for registers, queue in zip(self.registers, self.queues):
            entry = {"size": registers.size, "ready": registers.ready, "desc": registers.desc,
                     "driver": registers.driver, "device": registers.device}
            if queue is not None:
                entry.update(queue.get_state())
            queues.append(entry)
        return {**{name: getattr(self, name) for name in self.TRANSPORT_REGISTERS},
                "config_generation": self.device.config_generation, "queues": queues,
                "device": self.device.get_state()}

    def set_state(self, state: dict) -> None:
        """A fresh transport back to get_state()'s `state`: the queues the driver had made ready
        are set up again on the same guest memory (checked as when the driver set them up), at
        the same indexes, and a live device is activated.  kick_all() afterwards serves what
        the driver made available while the snapshot was taken."""
        with self.lock:
            self._reset()
            saved_queues = state["queues"]
            if len(saved_queues) != len(self.registers):
                raise ValueError(f"{len(saved_queues)} queues where {self.device.name} has "
                                 f"{len(self.registers)}")
            for name in self.TRANSPORT_REGISTERS:
                setattr(self, name, int(state[name]))
            self.device.config_generation = int(state["config_generation"])
            for index, saved in enumerate(saved_queues):
                self._restore_queue(index, saved)
            self.device.set_state(state["device"])
            if self.live:
                self.device.activate(self.queues, self.driver_features, self.kick)

    def _restore_queue(self, index: int, saved: dict) -> None:
        registers = self.registers[index]
        registers.size, registers.desc = int(saved["size"]), int(saved["desc"])
        registers.driver, registers.device = int(saved["driver"]), int(saved["device"])
        if saved["ready"]:
            self._set_queue_ready(index, True)         # a bad address: DEVICE_NEEDS_RESET, as live
            if self.queues[index] is not None:
                self.queues[index].set_state(saved)

    # --- kicks and interrupts
    def kick(self, index: int) -> None:
        """Queue `index` has new buffers (QueueNotify, or a worker woken by its ioeventfd).

        InterruptStatus is set before the interrupt is raised, so every edge
        the driver takes finds its reason there (4.2.3.4).  The driver may
        see its answer in the used ring before that: its InterruptStatus read
        and InterruptACK write are atomic operations on a word outside
        `lock`, so they do not wait for the rest of this call."""
        with self.lock:
            if self._process(index):
                self._raise_interrupt()

    def _process(self, index: int) -> bool:
        """Run the device on queue `index` (`lock` held); True if the driver wants an interrupt."""
        if not self.live or not 0 <= index < len(self.queues) or self.queues[index] is None:
            return False
        try:
            self.device.process(index)
        except (VirtqueueError, VirtioDeviceError) as e:
            self._needs_reset(f"queue {index}: {e}")
            return False
        if not self.queues[index].needs_interrupt():
            return False
        self._set_interrupt(INTERRUPT_USED_BUFFER)
        return True

    def _set_interrupt(self, bits: int) -> None:
        lib.answered_word_or(self._interrupt_word, bits)

    def _clear_interrupt(self, bits: int) -> None:
        """InterruptACK (4.2.2): the driver handled these reasons."""
        lib.answered_word_clear(self._interrupt_word, bits & 0xFFFFFFFF)

    def kick_all(self) -> None:
        """Look at every queue: an ioeventfd without datamatch does not say which one."""
        for index in range(len(self.queues)):
            self.kick(index)

    def config_changed(self) -> None:
        """The device's config space changed (4.2.2: ConfigGeneration, InterruptStatus bit 1)."""
        with self.lock:
            self.device.config_generation += 1
            if self.live:
                self._set_interrupt(INTERRUPT_CONFIG_CHANGE)
                self._raise_interrupt()
