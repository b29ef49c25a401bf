"""Guest-virtual memory for the debugger: pykvm's own walk of the guest's page tables.

gdb asks for memory by the addresses the guest's code uses: virtual ones.
With 4-level paging (IA-32e mode: CR0.PG, CR4.PAE, EFER.LMA) a 48-bit virtual
address splits into four 9-bit table indices and a 12-bit offset (Intel SDM
Vol. 3A, 4.5 "4-Level Paging and 5-Level Paging", Figure 4-8):

    47      39 38      30 29      21 20      12 11         0
    | PML4    | PDPT     | PD       | PT       | offset     |

CR3 points at the PML4; each present entry points at the next table, or, with
PS set in a PDPT or PD entry, maps a 1 GiB or 2 MiB page directly.  Without
paging (CR0.PG clear, as at a PVH entry) virtual = physical.  Every table
read goes through GuestMemory's bounds checks, so a guest's broken tables
give an UnmappedAddress, never a host crash.  KVM_TRANSLATE does the same walk
in the kernel; tests/kvm/test_gdb_paging.py checks the two agree.
"""
from __future__ import annotations

from dataclasses import dataclass

from pykvm.errors import GuestMemoryError, PyKvmError

__all__ = ["Translation", "UnmappedAddress", "translate", "read_virtual", "write_virtual",
           "PagingState"]

CR0_PG = 1 << 31            # SDM 2.5: paging enabled
CR4_PAE = 1 << 5            # physical address extension (needed for 4-level)
CR4_LA57 = 1 << 12          # 5-level paging: not walked here
EFER_LMA = 1 << 10          # long mode active

PTE_PRESENT = 1 << 0        # SDM Table 4-15..4-19: bit 0, present
PTE_WRITABLE = 1 << 1       # bit 1, R/W
PTE_USER = 1 << 2           # bit 2, U/S
PTE_PAGE_SIZE = 1 << 7      # bit 7, PS: this PDPT/PD entry maps a page
PTE_ADDRESS = 0x000F_FFFF_FFFF_F000   # bits 51:12, the next table or the page
ENTRY_SIZE = 8
PAGE_SIZE = 4096
# (shift of the index, name) from the top level down; PS is honoured at PDPT and PD.
LEVELS = ((39, "PML4"), (30, "PDPT"), (21, "PD"), (12, "PT"))
LARGE_PAGE_LEVELS = ("PDPT", "PD")
CANONICAL_BITS = 48


class UnmappedAddress(PyKvmError):
    """A guest-virtual address with no present mapping (the `m` packet answers E14)."""

    def __init__(self, address: int, why: str):
        self.address = address
        super().__init__(f"guest-virtual address {address:#x} is not mapped: {why}")


@dataclass(frozen=True)
class PagingState:
    """The three registers that decide how virtual addresses translate."""

    cr0: int
    cr3: int
    cr4: int
    efer: int

    @classmethod
    def of(cls, vcpu) -> "PagingState":
        sregs = vcpu.get_sregs()
        return cls(sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer)


@dataclass(frozen=True)
class Translation:
    """Where a virtual address lands, and what the last-level entries allow."""

    physical: int
    writable: bool
    user: bool


def translate(memory, paging: PagingState, address: int) -> Translation:
    """Walk the page tables for `address`; UnmappedAddress if it has no mapping."""
    if not paging.cr0 & CR0_PG:
        return Translation(address, True, True)
    if not (paging.efer & EFER_LMA and paging.cr4 & CR4_PAE) or paging.cr4 & CR4_LA57:
        raise UnmappedAddress(address, "only 4-level paging is walked (long mode, no LA57)")
    if not _canonical(address):
        raise UnmappedAddress(address, "not canonical (bits 63:47 must be equal)")
    table, writable, user = paging.cr3 & PTE_ADDRESS, True, True
    for shift, name in LEVELS:
        entry = _read_entry(memory, table, (address >> shift) & 0x1FF, address, name)
        writable, user = writable and bool(entry & PTE_WRITABLE), user and bool(entry & PTE_USER)
        if name == "PT" or (name in LARGE_PAGE_LEVELS and entry & PTE_PAGE_SIZE):
            page_mask = (1 << shift) - 1
            return Translation((entry & PTE_ADDRESS & ~page_mask) | (address & page_mask), writable, user)
        table = entry & PTE_ADDRESS
    raise AssertionError("the PT level always returns")


def _canonical(address: int) -> bool:
    top = address >> (CANONICAL_BITS - 1)
    return top == 0 or top == (1 << (64 - CANONICAL_BITS + 1)) - 1


def _read_entry(memory, table: int, index: int, address: int, level: str) -> int:
    try:
        entry = int.from_bytes(memory.read(table + index * ENTRY_SIZE, ENTRY_SIZE), "little")
    except GuestMemoryError:
        raise UnmappedAddress(address, f"{level} table at {table:#x} is outside guest memory") from None
    if not entry & PTE_PRESENT:
        raise UnmappedAddress(address, f"{level} entry {index} not present")
    return entry


def _pieces(memory, paging: PagingState, address: int, length: int):
    """(physical, length) for each page-sized piece of [address, address+length)."""
    while length > 0:
        chunk = min(length, PAGE_SIZE - (address % PAGE_SIZE))
        yield translate(memory, paging, address).physical, chunk
        address, length = address + chunk, length - chunk


def read_virtual(memory, paging: PagingState, address: int, length: int) -> bytes:
    """Up to `length` bytes from guest-virtual `address`: stops short at the first unmapped page.

    UnmappedAddress only if not even the first byte can be read (as the `m`
    packet allows: "The reply may contain fewer addressable memory units").
    """
    out = bytearray()
    try:
        for physical, chunk in _pieces(memory, paging, address, length):
            out += memory.read(physical, chunk)
    except (UnmappedAddress, GuestMemoryError) as e:
        if not out:
            raise UnmappedAddress(address, str(e)) from None
    return bytes(out)


def write_virtual(memory, paging: PagingState, address: int, data: bytes) -> None:
    """Write `data` at guest-virtual `address`: all of it, or nothing and UnmappedAddress.

    A debugger may write through read-only mappings (it plants breakpoints in
    code), so the R/W bit is not checked.
    """
    pieces = list(_pieces(memory, paging, address, len(data)))
    for physical, chunk in pieces:
        if not memory.contains(physical, chunk):
            raise UnmappedAddress(address, f"physical {physical:#x} is outside guest memory")
    at = 0
    for physical, chunk in pieces:
        memory.write(physical, data[at:at + chunk])
        at += chunk
