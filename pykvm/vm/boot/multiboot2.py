"""Multiboot2: GRUB 2's boot protocol, for kernels whose header says 0xE85250D6.

Spec: the Multiboot2 Specification, version 2.0 (GNU GRUB).  The same idea
as Multiboot v1 (pykvm.vm.boot.multiboot), with everything as tagged records:

1. The header, 8-byte aligned in the first 32 KiB ("Header layout"): magic,
   architecture (0 = i386, 32-bit protected mode), header length, checksum
   (the four sum to zero), then tags of (type u16, flags u16, size u32), each
   8-byte aligned, ending with type 0 ("Header tags").  A tag whose flags
   bit 0 ("optional") is clear must be honoured or the kernel refused.
2. The image is loaded by its ELF program headers, or at the address tag's
   load addresses (with the entry address tag's entry point): the same two
   ways as v1, so the v1 loader's functions do the work.
3. Modules go page-aligned after the kernel.
4. The boot information ("Boot information format") is a list of tags too:
   total size, then command line (1), boot loader name (2), one per module
   (3), basic memory information (4), memory map (6), the ACPI RSDP as
   version 1 (14) and 2 (15), and an end tag (0).
5. The CPU starts as for v1 ("I386 machine state"), but with
   EAX = 0x36D76289 and EBX = the boot information's address.

pykvm offers no framebuffer and no EFI: a kernel that requires them (a
non-optional tag 5, 7, 8 or 9) is refused in one line.  QEMU's -kernel does
not boot Multiboot2 at all; GRUB 2 does.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pykvm.vm.arch.x86.boot_state import CpuMode, Entry
from pykvm.vm import layout
from pykvm.vm.boot.elf import is_elf
from pykvm.vm.boot.multiboot import (FLAG_AOUT_KLUDGE, LOADER_NAME, Module, MultibootHeader,
                                  load_aout_kludge, load_elf, load_modules, memory_sizes_kib)
from pykvm.errors import LoaderError

__all__ = ["is_multiboot2", "Multiboot2Header", "find_header2", "load_multiboot2", "pack_boot_information",
           "HEADER2_MAGIC", "BOOTLOADER2_MAGIC"]

HEADER2_MAGIC = 0xE85250D6         # in the kernel's header
BOOTLOADER2_MAGIC = 0x36D76289     # in EAX at entry
SEARCH_LIMIT = 32768               # the header lies in the first 32 KiB ...
ALIGN = 8                          # ... 64-bit aligned; so is every tag
ARCH_I386 = 0                      # 32-bit protected mode i386
HEADER = struct.Struct("<IIII")    # magic, architecture, header_length, checksum
TAG = struct.Struct("<HHI")        # header tag: type, flags, size
TAG_OPTIONAL = 1                   # header tag flags bit 0

# Header tag types ("Header tags")
HTAG_END = 0
HTAG_INFORMATION_REQUEST = 1
HTAG_ADDRESS = 2
HTAG_ENTRY_ADDRESS = 3
HTAG_CONSOLE_FLAGS = 4
HTAG_FRAMEBUFFER = 5
HTAG_MODULE_ALIGN = 6
HTAG_RELOCATABLE = 10
ADDRESS_FIELDS = struct.Struct("<IIII")   # header_addr, load_addr, load_end_addr, bss_end_addr
UNDERSTOOD_TAGS = {HTAG_INFORMATION_REQUEST, HTAG_ADDRESS, HTAG_ENTRY_ADDRESS, HTAG_CONSOLE_FLAGS,
                   HTAG_MODULE_ALIGN, HTAG_RELOCATABLE}   # relocatable: loading where linked is allowed

# Boot information tag types ("Boot information format")
ITAG_END = 0
ITAG_CMDLINE = 1
ITAG_LOADER_NAME = 2
ITAG_MODULE = 3
ITAG_BASIC_MEMINFO = 4
ITAG_MMAP = 6
ITAG_ACPI_OLD = 14
ITAG_ACPI_NEW = 15
PROVIDED_INFO = {ITAG_CMDLINE, ITAG_LOADER_NAME, ITAG_MODULE, ITAG_BASIC_MEMINFO, ITAG_MMAP,
                 ITAG_ACPI_OLD, ITAG_ACPI_NEW}
MMAP_ENTRY = struct.Struct("<QQII")  # base_addr, length, type, reserved
MMAP_ENTRY_VERSION = 0
RSDP_V1_LENGTH = 20                  # ACPI 6.5, 5.2.5.3: the ACPI 1.0 part of the RSDP
RSDP_V2_LENGTH = 36
INFO_ROOM = layout.MULTIBOOT_LOW_LOAD - layout.MULTIBOOT_INFO


@dataclass
class Multiboot2Header:
    """A Multiboot2 header at file `offset` and what its tags ask for."""

    offset: int
    address: tuple[int, int, int, int] | None = None   # header_addr, load_addr, load_end, bss_end
    entry: int | None = None
    requested: set[int] = field(default_factory=set)   # boot information tags the kernel must get


def _align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def is_multiboot2(data: bytes) -> bool:
    """A Multiboot2 header in the first 32 KiB."""
    return find_header2(data) is not None


def find_header2(data: bytes) -> int | None:
    """The file offset of the first Multiboot2 header whose checksum holds, or None."""
    raw = struct.pack("<I", HEADER2_MAGIC)
    for offset in range(0, min(SEARCH_LIMIT, len(data)) - HEADER.size + 1, ALIGN):
        if data[offset:offset + 4] == raw and sum(HEADER.unpack_from(data, offset)) & 0xFFFFFFFF == 0:
            return offset
    return None


def parse_header(data: bytes, name: str) -> Multiboot2Header:
    """The header's tags, checked; LoaderError for anything required that pykvm cannot give."""
    offset = find_header2(data)
    if offset is None:
        raise LoaderError(f"{name}: no Multiboot2 header in the first {SEARCH_LIMIT} bytes")
    _magic, arch, length, _ = HEADER.unpack_from(data, offset)
    if arch != ARCH_I386:
        raise LoaderError(f"{name}: Multiboot2 architecture {arch}; pykvm boots i386 (0) only")
    end = offset + length
    if length < HEADER.size + TAG.size or end > len(data):
        raise LoaderError(f"{name}: Multiboot2 header length {length} is wrong")
    header, pos = Multiboot2Header(offset), offset + HEADER.size
    while pos + TAG.size <= end:
        kind, flags, size = TAG.unpack_from(data, pos)
        if kind == HTAG_END:
            return header
        if size < TAG.size or pos + size > end:
            raise LoaderError(f"{name}: Multiboot2 header tag {kind} has a bad size {size}")
        _read_tag(header, kind, flags, data[pos + TAG.size:pos + size], name)
        pos += _align(size)
    raise LoaderError(f"{name}: Multiboot2 header has no end tag")


def _read_tag(header: Multiboot2Header, kind: int, flags: int, body: bytes, name: str) -> None:
    optional = flags & TAG_OPTIONAL
    if kind not in UNDERSTOOD_TAGS:
        if not optional:
            raise LoaderError(f"{name}: Multiboot2 kernel requires header tag {kind} "
                              "(framebuffer, EFI, ...), which pykvm does not provide")
        return
    if kind == HTAG_ADDRESS and len(body) >= ADDRESS_FIELDS.size:
        header.address = ADDRESS_FIELDS.unpack_from(body)
    elif kind == HTAG_ENTRY_ADDRESS and len(body) >= 4:
        header.entry = struct.unpack_from("<I", body)[0]
    elif kind == HTAG_INFORMATION_REQUEST and not optional:
        wanted = set(struct.unpack_from(f"<{len(body) // 4}I", body))
        missing = wanted - PROVIDED_INFO
        if missing:
            raise LoaderError(f"{name}: Multiboot2 kernel requires boot information tags "
                              f"{sorted(missing)}, which pykvm does not provide")
        header.requested = wanted


def load_image(memory, data: bytes, header: Multiboot2Header, name: str) -> tuple[int, int]:
    """Step 2: (entry, end of image), by the address tag or by the ELF."""
    if header.address is not None:
        if header.entry is None:
            raise LoaderError(f"{name}: Multiboot2 address tag without an entry address tag")
        v1 = MultibootHeader(header.offset, FLAG_AOUT_KLUDGE, *header.address, header.entry,
                             has_addresses=True)
        return load_aout_kludge(memory, data, v1, name)
    if not is_elf(data):
        raise LoaderError(f"{name}: Multiboot2 kernel is not ELF and has no address tag")
    entry, end = load_elf(memory, data, name, allow_elf64=True)
    return (header.entry if header.entry is not None else entry), end


def _tag(kind: int, body: bytes) -> bytes:
    """One boot information tag, padded so the next starts 8-byte aligned."""
    raw = struct.pack("<II", kind, 8 + len(body)) + body
    return raw + bytes(_align(len(raw)) - len(raw))


def _string(text: str) -> bytes:
    return text.encode() + b"\0"


def pack_boot_information(cmdline: str, modules: list[tuple[int, int, str]],
                          mmap: list[tuple[int, int, int]], rsdp: bytes) -> bytes:
    """Step 4: the tags in order, the end tag, and the total size in front."""
    mem_lower, mem_upper = memory_sizes_kib(mmap)
    tags = [_tag(ITAG_CMDLINE, _string(cmdline)), _tag(ITAG_LOADER_NAME, _string(LOADER_NAME))]
    tags += [_tag(ITAG_MODULE, struct.pack("<II", start, end) + _string(text))
             for start, end, text in modules]
    tags.append(_tag(ITAG_BASIC_MEMINFO, struct.pack("<II", mem_lower, mem_upper)))
    entries = b"".join(MMAP_ENTRY.pack(base, length, kind, 0) for base, length, kind in mmap)
    tags.append(_tag(ITAG_MMAP, struct.pack("<II", MMAP_ENTRY.size, MMAP_ENTRY_VERSION) + entries))
    if rsdp:
        tags += [_tag(ITAG_ACPI_OLD, rsdp[:RSDP_V1_LENGTH]), _tag(ITAG_ACPI_NEW, rsdp[:RSDP_V2_LENGTH])]
    body = b"".join(tags) + struct.pack("<II", ITAG_END, 8)
    return struct.pack("<II", 8 + len(body), 0) + body


def load_multiboot2(memory, data: bytes, cmdline: str = "", modules: list[Module] = (),
                    name: str = "kernel", acpi_rsdp: int = 0, e820=None) -> Entry:
    """Load Multiboot2 kernel `data` and its modules; the entry state of step 5.

    `acpi_rsdp` and `e820`: what the firmware step left (pykvm.vm.boot.firmware),
    the RSDP copied into the ACPI tags; by default no ACPI and the map of `memory`.
    """
    header = parse_header(data, name)
    entry, end = load_image(memory, data, header, name)
    modules = list(modules)
    placed = load_modules(memory, modules, end, name)
    rsdp = memory.read(acpi_rsdp, RSDP_V2_LENGTH) if acpi_rsdp else b""
    info = pack_boot_information(cmdline, [(s, e, m.cmdline) for (s, e), m in zip(placed, modules)],
                                 list(memory.memory_map() if e820 is None else e820), rsdp)
    if len(info) > INFO_ROOM:
        raise LoaderError(f"Multiboot2 boot information is {len(info)} bytes; room for {INFO_ROOM}")
    memory.write(layout.MULTIBOOT_INFO, info)
    return Entry(CpuMode.PROTECTED, entry,
                 {"rax": BOOTLOADER2_MAGIC, "rbx": layout.MULTIBOOT_INFO}, protocol="Multiboot2")
