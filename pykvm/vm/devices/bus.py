"""The PIO and MMIO buses: which device answers an address, and at what offset.

One `Bus` class serves both address spaces; the machine makes one for port I/O
(16-bit ports, accesses of 1, 2 or 4 bytes) and one for MMIO (guest-physical
addresses, accesses of 1 to 8 bytes).  A VM exit for `out 0x3fd, al` becomes
`pio_bus.write(0x3fd, 1, value)`, and the bus calls the UART inserted at 0x3f8
with offset 5: as in Firecracker's bus, "the device does not care where it
exists in address space as each method is only given an offset".  The same
UART class could sit at COM2 (0x2f8) or behind an MMIO window unchanged.

    address space   ... [base ........ base+length) ...  [base2 ... ) ...
                          device A sees offsets 0..length-1

Rules:
  * Ranges never overlap: `insert` refuses an overlap and names both ranges.
  * An access must lie wholly inside one device's range; anything else is
    *unmapped*: it is logged once per address (logger "pykvm.bus"), a read
    returns all-ones for the access size (what an ISA bus with nothing driving
    the lines returns), a write is dropped, and the guest goes on.  This is
    the Firecracker / kvm-host policy; a guest probing for hardware that is
    not there must not stop the VM.

Several vCPUs: each vCPU thread dispatches its own exits, so two may reach
the bus at once.  One lock per bus, held for the device's read or write,
makes every device access atomic: the device models stay the plain
single-threaded register machines of their datasheets.  Finer locks (one per
device) would buy nothing in Python: the GIL already runs one device at a
time, and guests serialize their own port I/O anyway (one CPU at a time owns
the UART).  Devices that also hear from host threads (the UART's input) keep
their own lock for that, as before.

Speed: this is on the VM-exit hot path.  The first access to an address
finds its device by binary search over the sorted bases (`bisect`); the
answer is cached per address in a dict, so repeated accesses to the same
register (the common case: a driver polling LSR) cost one dict lookup.
"""
from __future__ import annotations

import bisect
import logging
import threading
from typing import Protocol, runtime_checkable

__all__ = ["Bus", "BusDevice", "Device", "Stateful", "BusOverlapError", "all_ones"]

log = logging.getLogger("pykvm.bus")

MAX_CACHED_ADDRESSES = 4096     # per-address lookup cache; cleared when full (MMIO scans)
MAX_LOGGED_UNMAPPED = 256       # distinct unmapped addresses logged before going quiet


@runtime_checkable
class Device(Protocol):
    """What a bus needs from a device: two methods taking an offset from the device's base.

    `size` is the access width in bytes (1, 2, 4 for port I/O; 1..8 for MMIO);
    values are unsigned integers, little-endian as the guest sees them.
    """

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


@runtime_checkable
class Stateful(Protocol):
    """What a snapshot needs from a device (pykvm.vm.snapshot): its state as JSON values, and back.

    get_state() returns a dict of ints, strings, lists and dicts: every register
    and buffer the guest could observe.  set_state(state) puts a device that was
    just built into that state, as if it had never stopped.
    """

    def get_state(self) -> dict: ...

    def set_state(self, state: dict) -> None: ...


class BusDevice:
    """A convenient base class: a device with no readable or writable registers.

    Reads float high (all-ones), writes are ignored; subclasses override what
    they implement.
    """

    def read(self, offset: int, size: int) -> int:
        """A register nobody drives: all-ones."""
        return all_ones(size)

    def write(self, offset: int, size: int, value: int) -> None:
        """A register that ignores writes."""


class BusOverlapError(ValueError):
    """Two devices were given overlapping address ranges (a bug in the machine's device table)."""

    def __init__(self, new: tuple[int, int, object], old: tuple[int, int, object]):
        self.new = new
        self.old = old
        super().__init__(f"cannot insert {_describe(*new)}: it overlaps {_describe(*old)}")


def all_ones(size: int) -> int:
    """The value read from an undriven bus: every bit of a `size`-byte access set."""
    return (1 << (8 * size)) - 1


def _describe(base: int, length: int, device: object) -> str:
    return f"{type(device).__name__} at [{base:#x}, {base + length:#x})"


class Bus:
    """An address space of non-overlapping device ranges; dispatches accesses by offset."""

    def __init__(self, name: str = "bus"):
        self.name = name
        self._bases: list[int] = []                          # sorted range starts
        self._ranges: list[tuple[int, int, Device]] = []     # (base, length, device), same order
        self._cache: dict[int, tuple[Device | None, int, int]] = {}   # address -> (device, offset, room)
        self._logged: set[int] = set()
        self._lock = threading.Lock()                        # one device access at a time

    # --- building the bus (machine set-up time)

    def insert(self, device: Device, base: int, length: int) -> None:
        """Map `device` at [base, base + length).  Raises BusOverlapError on any overlap."""
        if length <= 0 or base < 0:
            raise ValueError(f"bad range for {type(device).__name__}: base {base:#x}, length {length:#x}")
        i = bisect.bisect_right(self._bases, base)
        for neighbour in self._ranges[max(i - 1, 0):i + 1]:
            old_base, old_length, _ = neighbour
            if base < old_base + old_length and old_base < base + length:
                raise BusOverlapError((base, length, device), neighbour)
        self._bases.insert(i, base)
        self._ranges.insert(i, (base, length, device))
        self._cache.clear()

    def devices(self) -> list[tuple[int, int, Device]]:
        """Every (base, length, device), in address order (for `--trace` and docs)."""
        return list(self._ranges)

    # --- the hot path (one call per VM exit)

    def read(self, address: int, size: int) -> int:
        """A guest read of `size` bytes at `address`; all-ones if nothing is mapped there."""
        hit = self._cache.get(address)
        if hit is None:
            hit = self._lookup(address)
        device, offset, room = hit
        if size <= room:                        # room is 0 where nothing is mapped
            with self._lock:
                return device.read(offset, size)
        self._unmapped("read", address, size)
        return (1 << (8 * size)) - 1

    def write(self, address: int, size: int, value: int) -> None:
        """A guest write of `size` bytes at `address`; dropped if nothing is mapped there."""
        hit = self._cache.get(address)
        if hit is None:
            hit = self._lookup(address)
        device, offset, room = hit
        if size <= room:                        # room is 0 where nothing is mapped
            with self._lock:
                device.write(offset, size, value)
        else:
            self._unmapped("write", address, size, value)

    # --- the slow path

    def _lookup(self, address: int) -> tuple[Device | None, int, int]:
        """Binary search for the range holding `address`; cache the answer."""
        i = bisect.bisect_right(self._bases, address) - 1
        hit: tuple[Device | None, int, int] = (None, 0, 0)
        if i >= 0:
            base, length, device = self._ranges[i]
            if address < base + length:
                hit = (device, address - base, base + length - address)
        if len(self._cache) >= MAX_CACHED_ADDRESSES:
            self._cache.clear()
        self._cache[address] = hit
        return hit

    def _unmapped(self, kind: str, address: int, size: int, value: int | None = None) -> None:
        """Log an unmapped access, once per address, and at most MAX_LOGGED_UNMAPPED addresses."""
        if address in self._logged or len(self._logged) > MAX_LOGGED_UNMAPPED:
            return
        self._logged.add(address)
        data = "" if value is None else f" value {value:#x}"
        log.warning("%s: unmapped %s of %d byte(s) at %#x%s (reads give all-ones, writes are dropped)",
                    self.name, kind, size, address, data)
        if len(self._logged) > MAX_LOGGED_UNMAPPED:
            log.warning("%s: more than %d unmapped addresses; not logging any more",
                        self.name, MAX_LOGGED_UNMAPPED)
