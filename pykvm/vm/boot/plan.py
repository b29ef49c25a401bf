"""What a loader decides before it writes: where the initrd goes.

Every boot protocol that takes an initrd (PVH, the Linux boot protocol) puts it
the same way, as QEMU and Firecracker do: page aligned, as high in low RAM as
the kernel allows, and above the kernel's footprint, so that nothing the kernel
unpacks or allocates early lands on it.
"""
from __future__ import annotations

from pykvm.errors import LoaderError

__all__ = ["place_initrd", "PAGE_SIZE", "INITRD_LIMIT"]

PAGE_SIZE = 0x1000
INITRD_LIMIT = 1 << 32       # a 32-bit boot protocol field holds the address: below 4 GiB


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
