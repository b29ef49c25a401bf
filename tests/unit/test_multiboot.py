"""Multiboot v1: the header search, both ways of loading, the information structure.  No KVM."""
from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from pykvm.vm import layout
from pykvm.vm.boot.elf import parse_elf
from pykvm.vm.boot.loader import detect_format
from pykvm.vm.boot.multiboot2 import is_multiboot2
from pykvm.vm.boot.multiboot import (BOOTLOADER_MAGIC, HEADER_MAGIC, INFO, MMAP_ENTRY, MODULE, Module,
                                  find_header, load_multiboot)
from pykvm.errors import LoaderError
from pykvm.vm.memory import GuestMemory

GUEST_DIR = Path(__file__).resolve().parents[2] / "guests" / "multiboot"
FLAG_AOUT = 1 << 16


def guest(name: str) -> bytes:
    path = GUEST_DIR / name
    if not path.exists():
        pytest.fail(f"{path} is not built: run `make guests`")
    return path.read_bytes()


def header(flags: int, *aout: int, checksum_delta: int = 0) -> bytes:
    checksum = (-(HEADER_MAGIC + flags) + checksum_delta) & 0xFFFFFFFF
    return struct.pack("<III", HEADER_MAGIC, flags, checksum) + struct.pack(f"<{len(aout)}I", *aout)


def aout_image(load=0x100000, offset=0, code=b"\x90" * 32, bss=0x100, entry_delta=0) -> bytes:
    """A flat image whose header (at `offset`) says: load the file at `load`."""
    size = offset + 32 + len(code)
    fields = (load + offset, load, load + size, load + size + bss, load + offset + 32 + entry_delta)
    return bytes(offset) + header(FLAG_AOUT, *fields).ljust(32, b"\0") + code


def test_header_found_at_any_aligned_offset_in_the_first_8k():
    assert find_header(bytes(8) + header(0)).offset == 8
    assert find_header(bytes(8188) + header(0)).offset == 8188
    assert find_header(bytes(8192) + header(0)) is None          # 3.1.1: the first 8192 bytes only
    assert find_header(bytes(6) + header(0)) is None             # ... 32-bit aligned


def test_a_magic_with_a_wrong_checksum_is_not_a_header():
    assert find_header(header(0, checksum_delta=1)) is None
    assert find_header(header(0, checksum_delta=1) + header(3)).flags == 3


def test_detection_by_content():
    assert detect_format(guest("kernel.elf")) == "multiboot"
    assert detect_format(guest("kernel.bin")) == "multiboot"
    assert detect_format(bytes(0x202) + b"HdrS" + bytes(8) + header(0)) == "bzimage"
    mb2 = struct.pack("<IIII", 0xE85250D6, 0, 16, (-(0xE85250D6 + 16)) & 0xFFFFFFFF)
    assert is_multiboot2(bytes(64) + mb2) and detect_format(bytes(64) + mb2) == "multiboot2"


def info_fields(mem: GuestMemory) -> tuple:
    return INFO.unpack(mem.read(layout.MULTIBOOT_INFO, INFO.size))


def test_elf_kernel_entry_state_and_information_structure():
    with GuestMemory(16 << 20) as mem:
        entry = load_multiboot(mem, guest("kernel.elf"), "quiet", [Module(b"MODULE", "m.txt x")],
                               "kernel.elf")
        assert entry.registers == {"rax": BOOTLOADER_MAGIC, "rbx": layout.MULTIBOOT_INFO}
        assert entry.mode.name == "PROTECTED" and entry.rip == 0x100010
        fields = info_fields(mem)
        flags, mem_lower, mem_upper, _boot_device, cmdline, mods_count, mods_addr = fields[:7]
        assert flags & 0b1001001101 == 0b1001001101       # mem, boot dev, cmdline, mods, mmap, name
        assert (mem_lower, mem_upper) == (0x9FC00 // 1024, (16 << 20) // 1024 - 1024)
        assert mem.read_cstring(cmdline, 100) == b"kernel.elf quiet"   # argv[0] first, as QEMU
        assert mods_count == 1
        start, end, string, _ = MODULE.unpack(mem.read(mods_addr, MODULE.size))
        assert start % 4096 == 0 and start >= 0x100000 and end - start == 6
        assert mem.read(start, 6) == b"MODULE" and mem.read_cstring(string, 100) == b"m.txt x"


def test_memory_map_entries_count_their_size_without_the_size_field():
    with GuestMemory(16 << 20) as mem:
        load_multiboot(mem, guest("kernel.elf"))
        fields = info_fields(mem)
        length, address = fields[8], fields[9]
        raw = mem.read(address, length)
        entries = [MMAP_ENTRY.unpack_from(raw, i) for i in range(0, length, MMAP_ENTRY.size)]
        assert [e[0] for e in entries] == [20] * len(entries)
        assert [e[1:] for e in entries] == [tuple(e) for e in mem.memory_map()]


def test_aout_kludge_loads_the_file_at_load_addr_and_zeroes_bss():
    image = aout_image(offset=64, code=b"\xf4" * 16, bss=0x40)
    with GuestMemory(4 << 20) as mem:
        mem.write(0x100000 + len(image), b"\xAA" * 0x40)
        entry = load_multiboot(mem, image)
        assert entry.rip == 0x100000 + 64 + 32
        assert mem.read(0x100000, len(image)) == image
        assert mem.read(0x100000 + len(image), 0x40) == bytes(0x40)


def test_student_kernel_flat_image_loads_where_its_elf_twin_was_linked():
    """kernel.bin is build/kernel-aout.elf through objcopy -O binary: same entry, same bytes."""
    twin = parse_elf(guest("build/kernel-aout.elf"))
    flat = guest("kernel.bin")
    with GuestMemory(4 << 20) as mem:
        entry = load_multiboot(mem, flat)
        assert entry.rip == twin.entry
        assert mem.read(twin.load_segments()[0].paddr, len(flat)) == flat


@pytest.mark.parametrize("image, message", [
    (b"\x7fELF" + bytes(100), "no Multiboot header"),
    (header(1 << 5), "requires flags 0x20"),
    (header(0), "not ELF and its header has no load addresses"),
    (header(FLAG_AOUT, 0x100000), "ends before its load addresses"),
    (header(FLAG_AOUT, 0x100000, 0x100010, 0, 0, 0x100000), "load_addr 0x100010 is above"),
    (header(FLAG_AOUT, 0x100010, 0x100000, 0, 0, 0x100000), "reaches before the file"),
    (header(FLAG_AOUT, 0x100000, 0x100000, 0x100400, 0, 0x100000), "past the end of the file"),
    (header(FLAG_AOUT, 0x100000, 0x100000, 0, 0, 0x200000), "entry_addr 0x200000 is outside"),
    (header(FLAG_AOUT, 0x100000, 0x100000, 0x100020, 0x100010, 0x100000), "out of order"),
    (aout_image(load=0x1000), "overlaps pykvm's boot area"),
    (aout_image(load=0x3F0000, bss=0x100000), "outside guest memory"),
])
def test_bad_headers_are_one_loader_error(image, message):
    with GuestMemory(4 << 20) as mem:
        with pytest.raises(LoaderError, match=message):
            load_multiboot(mem, image)


def test_elf64_without_load_addresses_is_refused(tmp_path):
    elf64 = tmp_path / "kernel64.elf"
    subprocess.run(["objcopy", "-O", "elf64-x86-64", str(GUEST_DIR / "kernel.elf"), str(elf64)],
                   check=True)
    with GuestMemory(4 << 20) as mem, pytest.raises(LoaderError, match="must be ELF32"):
        load_multiboot(mem, elf64.read_bytes())


def test_a_module_that_does_not_fit_is_refused():
    with GuestMemory(4 << 20) as mem, pytest.raises(LoaderError, match="module .* outside guest memory"):
        load_multiboot(mem, guest("kernel.elf"), modules=[Module(bytes(4 << 20), "big")])
