"""What a loader hands the machine: bytes to write, and where the vCPU starts.

Every loader (flat binary, PVH ELF, Linux bzImage) is a pure function from
files to a BootPlan; the machine then writes `writes` into guest memory and
sets up the vCPU for `mode` at `entry` with `registers`.  Keeping loaders
pure means they are tested without KVM, on any machine.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["EntryMode", "BootPlan"]


class EntryMode(enum.Enum):
    """The CPU mode the guest's first instruction expects."""

    PROTECTED_32 = "protected-32"  # flat 4 GiB segments, paging off (Linux startup_32, PVH)
    LONG_64 = "long-64"            # paging on, identity mapped, EFER.LME|LMA (Linux startup_64)


@dataclass(frozen=True)
class BootPlan:
    """A loader's result.

    entry:      guest-physical address of the first instruction
    mode:       the CPU mode at entry
    registers:  general-purpose registers to set, by lower-case 64-bit name ("rsi": boot_params)
    writes:     (guest-physical address, bytes) pairs to copy into guest memory, in order
    """

    entry: int
    mode: EntryMode
    registers: dict[str, int]
    writes: tuple[tuple[int, bytes], ...]

    def highest_address(self) -> int:
        """One past the last byte any write touches."""
        return max((addr + len(data) for addr, data in self.writes), default=0)
