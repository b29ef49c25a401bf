"""Multiboot2: header tags, the tagged boot information, both ways of loading.  No KVM."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pykvm.vm import layout
from pykvm.vm.boot.loader import detect_format
from pykvm.vm.boot.multiboot import Module
from pykvm.vm.boot.multiboot2 import (BOOTLOADER2_MAGIC, HEADER2_MAGIC, find_header2,
                                   load_multiboot2, pack_boot_information, parse_header)
from pykvm.errors import LoaderError
from pykvm.vm.memory import GuestMemory

KERNEL2 = Path(__file__).resolve().parents[2] / "guests" / "multiboot" / "kernel2.elf"


def tag(kind: int, body: bytes = b"", flags: int = 0) -> bytes:
    raw = struct.pack("<HHI", kind, flags, 8 + len(body)) + body
    return raw + bytes(-len(raw) % 8)


def raw_header(body: bytes, arch: int = 0) -> bytes:
    """Magic, architecture, length and checksum in front of `body` (the tags)."""
    length = 16 + len(body)
    return struct.pack("<IIII", HEADER2_MAGIC, arch, length,
                       -(HEADER2_MAGIC + arch + length) & 0xFFFFFFFF) + body


def header2(*tags: bytes, arch: int = 0) -> bytes:
    return raw_header(b"".join(tags) + tag(0), arch)


def info_tags(raw: bytes) -> list[tuple[int, bytes]]:
    total, _ = struct.unpack_from("<II", raw)
    found, pos = [], 8
    while pos < total:
        kind, size = struct.unpack_from("<II", raw, pos)
        found.append((kind, raw[pos + 8:pos + size]))
        pos += (size + 7) & ~7
    return found


def test_header_is_8_byte_aligned_in_the_first_32k():
    assert find_header2(bytes(8) + header2()) == 8
    assert find_header2(bytes(4) + header2()) is None
    assert find_header2(bytes(32768) + header2()) is None
    assert detect_format(bytes(64) + header2()) == "multiboot2"


def test_student_kernel2_is_detected_and_loaded_with_the_multiboot2_entry_state():
    if not KERNEL2.exists():
        pytest.fail(f"{KERNEL2} is not built: run `make guests`")
    data = KERNEL2.read_bytes()
    assert detect_format(data) == "multiboot2"
    with GuestMemory(16 << 20) as mem:
        entry = load_multiboot2(mem, data, "quiet", [Module(b"MOD", "m x")])
        assert entry.registers == {"rax": BOOTLOADER2_MAGIC, "rbx": layout.MULTIBOOT_INFO}
        total = struct.unpack("<I", mem.read(layout.MULTIBOOT_INFO, 4))[0]
        tags = dict(info_tags(mem.read(layout.MULTIBOOT_INFO, total)))
        assert tags[1] == b"quiet\0" and tags[2] == b"pykvm\0"
        start, end = struct.unpack_from("<II", tags[3])
        assert mem.read(start, end - start) == b"MOD" and tags[3][8:] == b"m x\0"
        assert struct.unpack("<II", tags[4]) == (639, 15 * 1024)


def test_boot_information_tags_are_aligned_and_end_with_the_end_tag():
    mmap = [(0, 0x9FC00, 1), (0x9FC00, 0x60400, 2), (0x100000, 0x300000, 1)]
    raw = pack_boot_information("a", [(0x200000, 0x200005, "mod")], mmap, b"RSD PTR " + bytes(28))
    assert len(raw) % 8 == 0 and struct.unpack_from("<I", raw)[0] == len(raw)
    tags = info_tags(raw)
    assert [k for k, _ in tags] == [1, 2, 3, 4, 6, 14, 15, 0]
    entry_size, version = struct.unpack_from("<II", tags[4][1])
    assert (entry_size, version) == (24, 0) and len(tags[4][1]) == 8 + 3 * 24
    assert struct.unpack_from("<QQI", tags[4][1], 8 + 2 * 24) == (0x100000, 0x300000, 1)
    assert len(tags[5][1]) == 20 and len(tags[6][1]) == 36


def test_address_and_entry_tags_load_a_flat_image():
    code = b"\xf4" * 16
    head_len = len(header2(tag(2, bytes(16)), tag(3, bytes(8))))
    image_len = head_len + len(code)
    load = 0x100000
    image = header2(tag(2, struct.pack("<IIII", load, load, load + image_len, load + image_len + 64)),
                    tag(3, struct.pack("<I", load + head_len) + bytes(4))) + code
    with GuestMemory(4 << 20) as mem:
        entry = load_multiboot2(mem, image)
        assert entry.rip == load + head_len and mem.read(load, len(image)) == image


@pytest.mark.parametrize("image, message", [
    (header2(arch=4), "architecture 4"),
    (header2(tag(5, bytes(12))), "requires header tag 5"),
    (header2(tag(1, struct.pack("<II", 6, 8))), r"requires boot information tags \[8\]"),
    (header2(tag(2, struct.pack("<IIII", 0x100000, 0x100000, 0, 0))), "without an entry address"),
    (header2(), "not ELF and has no address tag"),
    (raw_header(tag(4, bytes(4), flags=1)), "no end tag"),
    (raw_header(struct.pack("<HHI", 4, 1, 64)), "tag 4 has a bad size 64"),
])
def test_what_pykvm_cannot_honour_is_one_loader_error(image, message):
    with GuestMemory(4 << 20) as mem, pytest.raises(LoaderError, match=message):
        load_multiboot2(mem, image)


def test_optional_tags_pykvm_lacks_are_ignored():
    header = parse_header(header2(tag(5, bytes(12), flags=1), tag(1, struct.pack("<I", 99), flags=1)),
                          "k")
    assert header.address is None and header.requested == set()
