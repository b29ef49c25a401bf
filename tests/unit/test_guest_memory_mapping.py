"""Guest RAM as /proc/self/maps shows it: each region a mapping named /dev/zero, of exactly
the region's size, at the address KVM is given, whose pages a write makes this process's own."""
import struct

from hostmem import PAGE, PAGEMAP_FILE, PAGEMAP_PRESENT
from pykvm.vm import layout
from pykvm.vm.memory import ZERO_FILE, GuestMemory


def maps_line(address: int) -> list[str]:
    """The /proc/self/maps line of the mapping that starts at `address`, split."""
    for line in open("/proc/self/maps"):
        fields = line.split()
        if int(fields[0].split("-")[0], 16) == address:
            return fields
    raise AssertionError(f"no mapping starts at {address:#x}")


def pagemap_entry(address: int) -> int:
    with open("/proc/self/pagemap", "rb") as pagemap:
        pagemap.seek(address // PAGE * 8)
        return struct.unpack("<Q", pagemap.read(8))[0]


def test_each_region_is_one_mapping_named_dev_zero():
    with GuestMemory(layout.MMIO_GAP_START + (8 << 20)) as memory:
        for region in memory.regions:
            fields = maps_line(region.host_address())
            start, end = (int(x, 16) for x in fields[0].split("-"))
            assert (end - start, fields[1], fields[-1]) == (region.size, "rw-p", ZERO_FILE), fields


def test_guest_ram_is_anonymous_memory_zeroed_on_first_touch():
    with GuestMemory(8 << 20) as memory:
        address = memory.regions[0].host_address() + 0x3000
        assert not pagemap_entry(address) & PAGEMAP_PRESENT          # untouched: no page yet
        assert memory.read(0x3000, 16) == bytes(16)
        memory.write(0x3000, b"written")
        entry = pagemap_entry(address)
        assert entry & PAGEMAP_PRESENT and not entry & PAGEMAP_FILE, hex(entry)   # this process's own page
        assert memory.read(0x3000, 7) == b"written"


def vm_flags(address: int) -> list[str]:
    """The VmFlags of the mapping starting at `address`, from /proc/self/smaps (proc(5))."""
    lines = open("/proc/self/smaps").read().splitlines()
    for i, line in enumerate(lines):
        if "-" in line.split()[0] and int(line.split("-")[0], 16) == address:
            flags = next(ln for ln in lines[i + 1:] if ln.startswith("VmFlags:"))
            return flags.split()[1:]
    raise AssertionError(f"no mapping starts at {address:#x}")


def test_fresh_guest_ram_starts_on_2_mib_and_asks_for_huge_pages():
    """KVM maps 2 MiB guest pages only where our address and the guest's agree modulo 2 MiB,
    and the host backs them with huge pages where the mapping asks (MADV_HUGEPAGE: "hg")."""
    with GuestMemory(layout.MMIO_GAP_START + (8 << 20)) as memory:
        for region in memory.regions:
            address = region.host_address()
            assert (address - region.guest_addr) % (2 << 20) == 0, hex(address)
            assert "hg" in vm_flags(address), vm_flags(address)
