"""ELF parsing, the PVH start info and memory map, the boot GDT: pure Python, no KVM."""
import struct

import pytest

from pykvm.vm.arch.x86 import gdt
from pykvm.vm import layout
from pykvm.vm.boot.elf import PT_LOAD, PT_NOTE, parse_elf
from pykvm.vm.boot.loader import detect_format
from pykvm.vm.boot.pvh import (HVM_START_MAGIC, MEMMAP_ENTRY, START_INFO, load_pvh, pack_memmap,
                            pack_start_info, pvh_entry_point)
from pykvm.errors import ConfigError, GuestMemoryError, LoaderError
from pykvm.vm.guests import GUESTS
from pykvm.vm.memory import GuestMemory
from pykvm.sizes import format_size, parse_size

HELLO = GUESTS["hello"].kernel


def hello_bytes() -> bytes:
    if not HELLO.exists():
        pytest.fail(f"{HELLO} is not built: run `make guests`")
    return HELLO.read_bytes()


# --- ELF -------------------------------------------------------------------------
def test_hello_elf_segments_and_pvh_note():
    elf = parse_elf(hello_bytes())
    loads = [s for s in elf.segments if s.type == PT_LOAD]
    assert loads and loads[0].paddr == 0x100000
    assert any(s.type == PT_NOTE for s in elf.segments)
    assert pvh_entry_point(elf) == elf.entry == 0x100000


@pytest.mark.parametrize("mutilate, message", [
    (lambda b: b"MZ" + b[2:], "not an ELF"),
    (lambda b: b[:10], "truncated"),
    (lambda b: b[:0x40], "truncated"),
    (lambda b: b[:4] + b"\x03" + b[5:], "unknown ELF class"),
    (lambda b: b[:5] + b"\x02" + b[6:], "big-endian"),
    (lambda b: b[:18] + struct.pack("<H", 40) + b[20:], "not x86"),
])
def test_bad_elves_are_loader_errors(mutilate, message):
    with pytest.raises(LoaderError, match=message):
        parse_elf(mutilate(hello_bytes()), "k")


def test_elf_without_pvh_note():
    data = bytearray(hello_bytes())
    data[data.find(b"Xen\0") - 4] = 17  # note type 18 -> 17: some other Xen note
    with pytest.raises(LoaderError, match="no Xen PVH entry note"):
        pvh_entry_point(parse_elf(bytes(data)))


def test_format_detection():
    assert detect_format(hello_bytes()) == "pvh"
    assert detect_format(bytes(0x202) + b"HdrS") == "bzimage"
    assert detect_format(b"\x90" * 600) is None


# --- PVH start info -----------------------------------------------------------------
def test_start_info_layout():
    raw = pack_start_info(cmdline_paddr=0x20000, memmap_entries=3)
    assert len(raw) == 56  # sizeof(struct hvm_start_info), version 1
    magic, version, flags, nr_modules, modlist, cmdline, rsdp, memmap, entries, _ = START_INFO.unpack(raw)
    assert (magic, version, cmdline, memmap, entries) == (HVM_START_MAGIC, 1, 0x20000, layout.PVH_MEMMAP, 3)
    assert (nr_modules, modlist, rsdp) == (0, 0, 0)


def test_memmap_entries():
    raw = pack_memmap([(0, 0x9FC00, 1), (0x100000, 0x100000, 1)])
    assert len(raw) == 2 * 24
    assert MEMMAP_ENTRY.unpack_from(raw, 24) == (0x100000, 0x100000, 1, 0)


def test_load_pvh_writes_everything_the_guest_reads():
    with GuestMemory(4 << 20) as mem:
        entry = load_pvh(mem, hello_bytes(), cmdline="console=ttyS0", initrd=b"RAMDISK!",
                         acpi_rsdp=layout.ACPI_TABLES)
        assert entry.rip == 0x100000 and entry.registers == {"rbx": layout.PVH_START_INFO}
        info = START_INFO.unpack(mem.read(layout.PVH_START_INFO, START_INFO.size))
        assert info[0] == HVM_START_MAGIC
        assert info[6] == layout.ACPI_TABLES  # rsdp_paddr
        assert mem.read_cstring(info[5], 100) == b"console=ttyS0"
        assert info[3] == 1  # one module: the initrd
        paddr, size = struct.unpack_from("<QQ", mem.read(info[4], 16))
        assert mem.read(paddr, size) == b"RAMDISK!" and paddr % 4096 == 0
        assert mem.read(0x100000, 4) == hello_bytes()[0x1000:0x1004]


def test_cmdline_too_long():
    with GuestMemory(4 << 20) as mem, pytest.raises(LoaderError, match="command line"):
        load_pvh(mem, hello_bytes(), cmdline="x" * layout.CMDLINE_MAX)


# --- memory ---------------------------------------------------------------------------
def test_memory_map_reserves_the_legacy_hole():
    with GuestMemory(64 << 20) as mem:
        assert mem.memory_map() == [
            (0, layout.EBDA_START, layout.E820_RAM),
            (layout.EBDA_START, layout.HIMEM_START - layout.EBDA_START, layout.E820_RESERVED),
            (layout.HIMEM_START, (64 << 20) - layout.HIMEM_START, layout.E820_RAM)]


def test_memory_above_the_mmio_gap():
    with GuestMemory(layout.MMIO_GAP_START + (1 << 30)) as mem:
        assert mem.ram_ranges() == [(0, layout.MMIO_GAP_START), (layout.MMIO_GAP_END, 1 << 30)]
        assert not mem.contains(layout.MMIO_GAP_START)
        mem.write(layout.MMIO_GAP_END, b"hi")
        assert mem.read(layout.MMIO_GAP_END, 2) == b"hi"


@pytest.mark.parametrize("address, length", [(-1, 1), (2 << 20, 1), ((2 << 20) - 1, 2), (0, (2 << 20) + 1)])
def test_memory_accesses_are_bounds_checked(address, length):
    with GuestMemory(2 << 20) as mem, pytest.raises(GuestMemoryError):
        mem.read(address, length)


def test_memory_size_checks():
    with pytest.raises(ConfigError, match="too small"):
        GuestMemory(0)
    with pytest.raises(ConfigError, match="multiple of 4 KiB"):
        GuestMemory((2 << 20) + 1)


# --- sizes ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, unit, expected", [
    ("128M", "", 128 << 20), ("1G", "", 1 << 30), ("512", "M", 512 << 20), ("4096", "", 4096),
    ("1.5G", "", 3 << 29), ("64MiB", "", 64 << 20), ("2k", "", 2048)])
def test_parse_size(text, unit, expected):
    assert parse_size(text, default_unit=unit) == expected


@pytest.mark.parametrize("text", ["banana", "", "-1M", "12Q", "M"])
def test_parse_size_rejects(text):
    with pytest.raises(ConfigError, match="not a size"):
        parse_size(text, what="--mem")


def test_format_size():
    assert format_size(128 << 20) == "128 MiB"
    assert format_size(3 << 29) == "1.5 GiB"


# --- GDT -----------------------------------------------------------------------------
def test_gdt_entries_match_known_encodings():
    # The same descriptors Firecracker's gdt.rs tests check.
    assert gdt.gdt_entry(0xA09B, 0, 0xFFFFF) == 0x00AF9B000000FFFF
    assert gdt.gdt_entry(0xC093, 0, 0xFFFFF) == 0x00CF93000000FFFF
    assert gdt.gdt_entry(0x808B, 0, 0xFFFFF) == 0x008F8B000000FFFF


def test_boot_selectors_follow_the_linux_boot_protocol():
    entries = gdt.boot_gdt(long_mode=True)
    assert entries[gdt.BOOT_CS // 8][0] == gdt.CODE64_FLAGS
    assert entries[gdt.BOOT_DS // 8][0] == gdt.DATA_FLAGS


GUEST_OS_LINUX_NOTE = """
    .pushsection .note.Xen, "a"
    .balign 4
    .long 4, 6, 6                    /* namesz, descsz, XEN_ELFNOTE_GUEST_OS */
    .asciz "Xen"
    .asciz "linux"
    .balign 4
    .popsection
"""


def test_a_linux_pvh_kernel_without_a_command_line_gets_the_default_one(tmp_path):
    """Without console=ttyS0 a vmlinux would boot silently; other PVH guests keep an empty line."""
    from guestasm import pvh_elf
    from pykvm.vm.boot.bzimage import DEFAULT_CMDLINE
    from pykvm.vm.boot.pvh import is_linux

    linux = pvh_elf("hlt\n" + GUEST_OS_LINUX_NOTE, tmp_path / "vmlinux").read_bytes()
    assert is_linux(parse_elf(linux)) and not is_linux(parse_elf(hello_bytes()))
    for data, expected in ((linux, DEFAULT_CMDLINE), (hello_bytes(), "")):
        for given, wanted in (("", expected), ("console=ttyS0 quiet", "console=ttyS0 quiet")):
            with GuestMemory(4 << 20) as mem:
                load_pvh(mem, data, cmdline=given)
                info = START_INFO.unpack(mem.read(layout.PVH_START_INFO, START_INFO.size))
                assert mem.read_cstring(info[5], layout.CMDLINE_MAX).decode() == wanted
