"""Breakpoints and watchpoints in the x86 debug registers, as KVM_SET_GUEST_DEBUG takes them.

Intel SDM Vol. 3B, 17.2 "Debug Registers": DR0-DR3 hold four linear addresses;
DR7 enables each one (L0..L3, bits 0, 2, 4, 6) and says what it watches
(R/W0..3 at bits 16+4n: 00 instruction fetch, 01 data write, 11 data read or
write) and how many bytes (LEN0..3 at bits 18+4n: 1, 2, 4 or 8, aligned).
When one matches, the CPU raises #DB and sets its bit B0..B3 in DR6 (17.2.3);
a single step (EFLAGS.TF) sets BS, bit 14.  Under KVM_GUESTDBG_USE_HW_BP, KVM
loads pykvm's DR0-DR7 while the guest runs and reports each #DB as
KVM_EXIT_DEBUG instead of delivering it.

gdb's hardware breakpoints (Z1) and watchpoints (Z2, Z4) always live here.
Its software breakpoints (Z0) are int3 written over the code (swbreak.py),
except on PVM-backed KVM: there the guest kernel runs in KVM's instruction
emulator, which cannot execute int3 (the vCPU never reports it), so Z0 comes
here too, at the price of four breakpoints and watchpoints together.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DebugRegisters", "Slot", "NoFreeSlot", "BadWatch", "EXEC", "WRITE", "ACCESS",
           "DR6_SINGLE_STEP", "hit_slots"]

SLOTS = 4                   # DR0..DR3
DR7_INDEX = 7
DR7_RESERVED_ONE = 1 << 10  # bit 10 reads as 1 (17.2.4)
DR7_GLOBAL_EXACT = 1 << 9   # GE: exact data breakpoints, recommended on (17.2.4)
EXEC, WRITE, ACCESS = 0b00, 0b01, 0b11      # R/W field values
LENGTH_BITS = {1: 0b00, 2: 0b01, 4: 0b11, 8: 0b10}   # LEN field per byte count
DR6_HIT_MASK = 0b1111       # B0..B3
DR6_SINGLE_STEP = 1 << 14   # BS


class NoFreeSlot(Exception):
    """All four debug registers are in use."""


class BadWatch(Exception):
    """A length the debug registers cannot watch (not 1, 2, 4, 8, or unaligned)."""


@dataclass(frozen=True)
class Slot:
    """What one debug register watches."""

    address: int
    kind: int               # EXEC, WRITE or ACCESS
    length: int             # bytes; 1 for EXEC


def hit_slots(dr6: int) -> list[int]:
    """Which of DR0..DR3 matched, from DR6's B0..B3."""
    return [n for n in range(SLOTS) if dr6 & (1 << n)]


class DebugRegisters:
    """The four slots and the DR7 that enables them."""

    def __init__(self) -> None:
        self.slots: list[Slot | None] = [None] * SLOTS

    def insert(self, address: int, kind: int, length: int) -> None:
        """Use a free slot for (address, kind, length); inserting it twice is harmless."""
        if kind == EXEC:
            length = 1
        elif length not in LENGTH_BITS or address % length:
            raise BadWatch(f"cannot watch {length} bytes at {address:#x}: 1, 2, 4 or 8, aligned")
        slot = Slot(address, kind, length)
        if slot in self.slots:
            return
        if None not in self.slots:
            raise NoFreeSlot(f"all {SLOTS} debug registers are in use")
        self.slots[self.slots.index(None)] = slot

    def remove(self, address: int, kind: int, length: int) -> bool:
        """Free the slot for (address, kind, length); False if there was none."""
        slot = Slot(address, kind, 1 if kind == EXEC else length)
        if slot not in self.slots:
            return False
        self.slots[self.slots.index(slot)] = None
        return True

    def clear(self) -> None:
        self.slots = [None] * SLOTS

    def __bool__(self) -> bool:
        return any(self.slots)

    def debugreg(self) -> list[int]:
        """DR0..DR7 for kvm_guest_debug.arch.debugreg."""
        values = [0] * 8
        dr7 = DR7_RESERVED_ONE
        for n, slot in enumerate(self.slots):
            if slot is None:
                continue
            values[n] = slot.address
            dr7 |= 1 << (2 * n)                                   # Ln: local enable
            dr7 |= slot.kind << (16 + 4 * n)                      # R/Wn
            dr7 |= LENGTH_BITS[slot.length] << (18 + 4 * n)       # LENn
            if slot.kind != EXEC:
                dr7 |= DR7_GLOBAL_EXACT
        values[DR7_INDEX] = dr7
        return values
