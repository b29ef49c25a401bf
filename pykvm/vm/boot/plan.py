"""What a loader decides before it writes: a LoadPlan, and where the initrd goes.

The PVH and bzImage loaders have the same shape: plan_pvh and plan_bzimage take
bytes and the guest's RAM ranges and return a LoadPlan (bytes to write where,
and the Entry where the vCPU starts) without touching a VM, so every rule is
unit-tested; load_pvh and load_bzimage write the plan into guest memory.

Every boot protocol that takes an initrd (PVH, the Linux boot protocol) puts it
the same way, as QEMU and Firecracker do: page aligned, as high in low RAM as
the kernel allows, and above the kernel's footprint, so that nothing the kernel
unpacks or allocates early lands on it.
"""
from __future__ import annotations

from dataclasses import dataclass

from pykvm.vm.arch.x86.boot_state import Entry
from pykvm.errors import LoaderError

__all__ = ["LoadPlan", "write_plan", "in_ram", "place_initrd", "PAGE_SIZE", "INITRD_LIMIT"]

PAGE_SIZE = 0x1000
INITRD_LIMIT = 1 << 32       # a 32-bit boot protocol field holds the address: below 4 GiB


@dataclass(frozen=True)
class LoadPlan:
    """What loading a kernel means: bytes to write where, and the vCPU's entry."""

    entry: Entry
    writes: tuple[tuple[int, bytes], ...]   # (guest-physical address, bytes), in order


def write_plan(memory, plan: LoadPlan) -> Entry:
    """Carry out `plan` on guest memory; its entry."""
    for address, data in plan.writes:
        memory.write(address, data)
    return plan.entry


def in_ram(ram: list[tuple[int, int]], address: int, length: int) -> bool:
    """True if [address, address+length) lies wholly in one of the (base, size) ranges `ram`."""
    return any(base <= address and address + length <= base + size for base, size in ram)


def place_initrd(size: int, ram_end: int, lowest: int, limit: int = INITRD_LIMIT) -> int:
    """The address for an initrd of `size` bytes: as high as allowed, page aligned.

    It must end at or below `ram_end` (the end of low RAM) and `limit` (one
    past the last byte the kernel accepts: a bzImage's initrd_addr_max + 1),
    and start at or above `lowest` (the end of the kernel), or LoaderError.
    """
    top = min(ram_end, limit, INITRD_LIMIT)
    address = (top - size) // PAGE_SIZE * PAGE_SIZE
    if size > top or address < lowest:
        room = max(0, top - lowest)
        raise LoaderError(f"initrd of {size} bytes does not fit: {room} bytes free between the "
                          f"kernel ({lowest:#x}) and {top:#x}; give the guest more memory (--mem)")
    return address
