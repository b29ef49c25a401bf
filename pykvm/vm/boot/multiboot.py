"""Multiboot (version 1): the boot protocol of GRUB, of `qemu -kernel`, and of most OS tutorials.

Spec: the Multiboot Specification version 0.6.96 (GNU GRUB), whose section
numbers are cited below.  A loader:

1. finds the Multiboot header in the first 8 KiB of the file, 4-byte aligned
   (3.1.1): magic 0x1BADB002, flags, and a checksum that makes the three sum
   to zero; it refuses a header whose low 16 flag bits ask for something it
   cannot give (3.1.2);
2. loads the image: the ELF's program headers, or, when flags bit 16 is set,
   the "a.out kludge" addresses in the header (3.1.3: header_addr,
   load_addr, load_end_addr, bss_end_addr, entry_addr);
3. loads the modules page-aligned after the kernel (3.3), as QEMU does;
4. writes the Multiboot information structure (3.3): memory sizes, the
   command line, the modules, the memory map, the boot loader's name;
5. starts the CPU in the state of 3.2: 32-bit protected mode, paging off,
   flat 4 GiB code and data segments, EFLAGS.IF = 0,
   EAX = 0x2BADB002 and EBX = the information structure's address.

Like QEMU (hw/i386/multiboot.c), pykvm puts the kernel's own file name in
front of its command line, so argv[0] is the kernel; kvm-unit-tests relies
on it.  Video modes (flags bit 2) are not offered: the information structure
says so by leaving its bit 11 clear.  Multiboot2, its tagged successor, is
pykvm.vm.boot.multiboot2.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from pykvm.vm.arch.x86.boot_state import CpuMode, Entry
from pykvm.vm import layout
from pykvm.vm.boot.elf import ELFCLASS32, is_elf, parse_elf
from pykvm.errors import LoaderError

__all__ = ["MultibootHeader", "Module", "find_header", "load_multiboot",
           "pack_info", "pack_mmap", "pack_modules", "load_elf", "load_aout_kludge", "load_modules",
           "memory_sizes_kib", "HEADER_MAGIC", "BOOTLOADER_MAGIC", "FLAG_AOUT_KLUDGE", "LOADER_NAME"]

HEADER_MAGIC = 0x1BADB002          # 3.1.2: in the kernel's header
BOOTLOADER_MAGIC = 0x2BADB002      # 3.2: in EAX at entry
SEARCH_LIMIT = 8192                # 3.1.1: the header lies in the first 8192 bytes
HEADER_ALIGN = 4                   # 3.1.1: ... 32-bit aligned
PAGE = 4096

# Header flags (3.1.2).  Bits 0-15 are requirements: a loader that does not
# understand one must refuse the kernel.  Bits 16-31 are optional features.
FLAG_PAGE_ALIGN = 1 << 0           # modules page-aligned (always so here)
FLAG_MEMORY_INFO = 1 << 1          # mem_* and mmap_* fields wanted (always given)
FLAG_VIDEO_MODE = 1 << 2           # a video mode wanted (a wish: no video here, see docstring)
FLAG_AOUT_KLUDGE = 1 << 16         # header's address fields are valid: use them, not the ELF's
REQUIRED_BITS = 0xFFFF
UNDERSTOOD_REQUIRED = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO | FLAG_VIDEO_MODE

# Information structure flags (3.3): which fields are valid.
INFO_MEMORY = 1 << 0               # mem_lower, mem_upper
INFO_BOOT_DEVICE = 1 << 1          # boot_device
INFO_CMDLINE = 1 << 2              # cmdline
INFO_MODS = 1 << 3                 # mods_count, mods_addr
INFO_MMAP = 1 << 6                 # mmap_length, mmap_addr
INFO_LOADER_NAME = 1 << 9          # boot_loader_name
BOOT_DEVICE_NONE = 0x8000FFFF      # drive 0x80, no partition: what QEMU passes
LOADER_NAME = "pykvm"
KIB = 1024

# 3.1.2/3.1.3: magic, flags, checksum, then (bit 16) header_addr, load_addr,
# load_end_addr, bss_end_addr, entry_addr.
HEADER = struct.Struct("<III")
AOUT_FIELDS = struct.Struct("<IIIII")
# 3.3: the information structure, 88 bytes up to and including the VBE fields.
# flags mem_lower mem_upper boot_device cmdline mods_count mods_addr syms[4]
# mmap_length mmap_addr drives_length drives_addr config_table boot_loader_name
# apm_table vbe_control_info vbe_mode_info vbe_mode vbe_interface_seg/off/len
INFO = struct.Struct("<IIIIIII16sIIIIIIIIIHHHH")
MODULE = struct.Struct("<IIII")     # 3.3 "Boot modules": mod_start mod_end string reserved
MMAP_ENTRY = struct.Struct("<IQQI")  # 3.3 "Memory map": size base_addr length type
MMAP_ENTRY_SIZE = MMAP_ENTRY.size - 4   # the `size` field does not count itself
MAX_MODULES = (layout.MULTIBOOT_MMAP - layout.MULTIBOOT_MODS) // MODULE.size
MAX_MMAP_ENTRIES = (layout.MULTIBOOT_LOW_LOAD - layout.MULTIBOOT_MMAP) // MMAP_ENTRY.size


@dataclass(frozen=True)
class MultibootHeader:
    """A Multiboot header found at file `offset`; the address fields only if flags bit 16."""

    offset: int
    flags: int
    header_addr: int = 0
    load_addr: int = 0
    load_end_addr: int = 0
    bss_end_addr: int = 0
    entry_addr: int = 0
    has_addresses: bool = False     # the five fields were all in the file

    @property
    def aout_kludge(self) -> bool:
        return bool(self.flags & FLAG_AOUT_KLUDGE)


@dataclass(frozen=True)
class Module:
    """A boot module: its contents and the string the kernel is given for it."""

    data: bytes
    cmdline: str


def _magic_offsets(data: bytes, magic: int, limit: int, align: int):
    raw = struct.pack("<I", magic)
    for offset in range(0, min(limit, len(data)) - 3, align):
        if data[offset:offset + 4] == raw:
            yield offset


def find_header(data: bytes) -> MultibootHeader | None:
    """The first valid Multiboot header in the first 8 KiB (3.1.1), or None.

    A magic number whose checksum does not match is not a header (the bytes
    may just happen to be there), so the search goes on past it.
    """
    for offset in _magic_offsets(data, HEADER_MAGIC, SEARCH_LIMIT, HEADER_ALIGN):
        if offset + HEADER.size > len(data):
            break
        magic, flags, checksum = HEADER.unpack_from(data, offset)
        if (magic + flags + checksum) & 0xFFFFFFFF:
            continue
        if not flags & FLAG_AOUT_KLUDGE:
            return MultibootHeader(offset, flags)
        fields_at = offset + HEADER.size
        if fields_at + AOUT_FIELDS.size > len(data):
            return MultibootHeader(offset, flags)     # fields cut off: load_aout_kludge refuses it
        return MultibootHeader(offset, flags, *AOUT_FIELDS.unpack_from(data, fields_at),
                               has_addresses=True)
    return None


def check_flags(header: MultibootHeader, name: str) -> None:
    """3.1.2: refuse a kernel that requires something this loader does not know."""
    unknown = header.flags & REQUIRED_BITS & ~UNDERSTOOD_REQUIRED
    if unknown:
        raise LoaderError(f"{name}: Multiboot header requires flags {unknown:#x}, "
                          "which pykvm does not know (it knows bits 0-2 and 16)")


def check_load_range(memory, start: int, end: int, name: str, what: str) -> None:
    """[start, end) must be guest RAM clear of pykvm's own boot data (see layout.py)."""
    if end <= start:
        return
    low_window = layout.MULTIBOOT_LOW_LOAD <= start and end <= layout.CMDLINE_START
    if not (low_window or start >= layout.HIMEM_START):
        raise LoaderError(f"{name}: {what} at {start:#x}-{end:#x} overlaps pykvm's boot area "
                          f"(load at {layout.MULTIBOOT_LOW_LOAD:#x}-{layout.CMDLINE_START:#x} "
                          f"or from {layout.HIMEM_START:#x})")
    if not memory.contains(start, end - start):
        raise LoaderError(f"{name}: {what} at {start:#x}-{end:#x} is outside guest memory; "
                          "try a larger --mem")


def load_elf(memory, data: bytes, name: str, allow_elf64: bool = False) -> tuple[int, int]:
    """Copy an ELF's PT_LOAD segments to their physical addresses; (entry, end of image).

    Multiboot v1 loads ELF32 only (as QEMU); Multiboot2 (`allow_elf64`) either class.
    """
    elf = parse_elf(data, name)
    if elf.elf_class != ELFCLASS32 and not allow_elf64:
        raise LoaderError(f"{name}: a Multiboot ELF must be ELF32 (this is ELF64); "
                          "or set header flags bit 16 and its load addresses")
    end = 0
    for i, seg in enumerate(elf.load_segments()):
        if seg.memsz == 0:
            continue
        check_load_range(memory, seg.paddr, seg.paddr + seg.memsz, name, f"ELF segment {i}")
        memory.write(seg.paddr, elf.segment_data(seg) + bytes(seg.memsz - seg.filesz))
        end = max(end, seg.paddr + seg.memsz)
    if end == 0:
        raise LoaderError(f"{name}: ELF has no loadable segments")
    return physical_entry(elf), end


def physical_entry(elf) -> int:
    """e_entry is a virtual address: translate it through the segment holding it (vaddr -> paddr)."""
    for seg in elf.load_segments():
        if seg.vaddr <= elf.entry < seg.vaddr + seg.memsz:
            return seg.paddr + (elf.entry - seg.vaddr)
    return elf.entry


def load_aout_kludge(memory, data: bytes, header: MultibootHeader, name: str) -> tuple[int, int]:
    """3.1.3: the file from header_addr's offset back to load_addr, copied to load_addr."""
    h = header
    if not h.has_addresses:
        raise LoaderError(f"{name}: Multiboot header ends before its load addresses (flags bit 16)")
    if not h.load_addr <= h.header_addr:
        raise LoaderError(f"{name}: Multiboot load_addr {h.load_addr:#x} is above "
                          f"header_addr {h.header_addr:#x}")
    file_start = h.offset - (h.header_addr - h.load_addr)
    if file_start < 0:
        raise LoaderError(f"{name}: Multiboot header_addr - load_addr reaches before the file's start")
    load_end = h.load_end_addr or h.load_addr + len(data) - file_start
    bss_end = h.bss_end_addr or load_end
    if not h.load_addr < load_end <= bss_end:
        raise LoaderError(f"{name}: Multiboot addresses out of order (load {h.load_addr:#x}, "
                          f"load_end {load_end:#x}, bss_end {bss_end:#x})")
    if file_start + (load_end - h.load_addr) > len(data):
        raise LoaderError(f"{name}: Multiboot load_end_addr {load_end:#x} is past the end of the file")
    if not h.load_addr <= h.entry_addr < bss_end:
        raise LoaderError(f"{name}: Multiboot entry_addr {h.entry_addr:#x} is outside the image")
    check_load_range(memory, h.load_addr, bss_end, name, "image")
    memory.write(h.load_addr, data[file_start:file_start + load_end - h.load_addr])
    memory.write(load_end, bytes(bss_end - load_end))
    return h.entry_addr, bss_end


def load_modules(memory, modules: list[Module], kernel_end: int, name: str) -> list[tuple[int, int]]:
    """Each module page-aligned after the previous one, from the first page after the kernel."""
    if len(modules) > MAX_MODULES:
        raise LoaderError(f"{len(modules)} modules; pykvm passes at most {MAX_MODULES}")
    placed, address = [], _page_up(kernel_end)
    for module in modules:
        check_load_range(memory, address, address + len(module.data), name, "module")
        memory.write(address, module.data)
        placed.append((address, address + len(module.data)))
        address = _page_up(address + len(module.data))
    return placed


def _page_up(address: int) -> int:
    return (address + PAGE - 1) & ~(PAGE - 1)


def write_strings(memory, strings: list[str]) -> list[int]:
    """NUL-terminated strings one after another from CMDLINE_START; their addresses."""
    addresses, address = [], layout.CMDLINE_START
    for text in strings:
        raw = text.encode() + b"\0"
        if address + len(raw) > layout.CMDLINE_START + layout.CMDLINE_MAX:
            raise LoaderError(f"command lines total more than {layout.CMDLINE_MAX - 1} bytes")
        memory.write(address, raw)
        addresses.append(address)
        address += len(raw)
    return addresses


def pack_mmap(entries: list[tuple[int, int, int]]) -> bytes:
    """3.3 "memory map": each entry's `size` (20) counts the bytes after itself."""
    return b"".join(MMAP_ENTRY.pack(MMAP_ENTRY_SIZE, base, length, kind)
                    for base, length, kind in entries)


def pack_modules(placed: list[tuple[int, int]], strings: list[int]) -> bytes:
    """3.3 "boot modules": mod_start, mod_end (exclusive), string, reserved."""
    return b"".join(MODULE.pack(start, end, string, 0) for (start, end), string in zip(placed, strings))


def pack_info(mem_kib: tuple[int, int], cmdline: int, mods_count: int, mmap_length: int,
              loader_name: int) -> bytes:
    """The information structure (3.3) with the fields pykvm fills in, and their flags."""
    flags = INFO_MEMORY | INFO_BOOT_DEVICE | INFO_CMDLINE | INFO_MODS | INFO_MMAP | INFO_LOADER_NAME
    return INFO.pack(flags, *mem_kib, BOOT_DEVICE_NONE, cmdline, mods_count,
                     layout.MULTIBOOT_MODS, bytes(16), mmap_length, layout.MULTIBOOT_MMAP,
                     0, 0, 0, loader_name, 0, 0, 0, 0, 0, 0, 0)


def memory_sizes_kib(mmap: list[tuple[int, int, int]]) -> tuple[int, int]:
    """(mem_lower, mem_upper), 3.3: KiB of RAM from 0 and from 1 MiB, each up to its first hole.

    Taken from the memory map the kernel is given, so the two agree (QEMU's
    Multiboot option ROM derives them from the e820 map the same way).
    """
    def ram_from(start: int) -> int:
        return next((size // KIB for base, size, kind in mmap
                     if base == start and kind == layout.E820_RAM), 0)
    return ram_from(0), ram_from(layout.HIMEM_START)


def write_info(memory, cmdline: str, modules: list[Module], placed: list[tuple[int, int]],
               mmap: list[tuple[int, int, int]]) -> None:
    """Step 4: strings, module list, memory map `mmap`, then the structure that points at them."""
    strings = write_strings(memory, [cmdline, LOADER_NAME] + [m.cmdline for m in modules])
    memory.write(layout.MULTIBOOT_MODS, pack_modules(placed, strings[2:]))
    if len(mmap) > MAX_MMAP_ENTRIES:
        raise LoaderError(f"memory map has {len(mmap)} entries, room for {MAX_MMAP_ENTRIES}")
    raw_mmap = pack_mmap(mmap)
    memory.write(layout.MULTIBOOT_MMAP, raw_mmap)
    memory.write(layout.MULTIBOOT_INFO, pack_info(memory_sizes_kib(mmap), strings[0],
                                                  len(modules), len(raw_mmap), strings[1]))


def load_multiboot(memory, data: bytes, cmdline: str = "", modules: list[Module] = (),
                   name: str = "kernel", e820=None) -> Entry:
    """Load Multiboot kernel `data` and its modules; the entry of 3.2.  Steps as in the docstring.

    `e820`: the memory map the firmware step left (pykvm.vm.boot.firmware); by
    default the map of `memory`.
    """
    header = find_header(data)
    if header is None:
        raise LoaderError(f"{name}: no Multiboot header (magic {HEADER_MAGIC:#x} with a valid "
                          f"checksum) in the first {SEARCH_LIMIT} bytes")
    check_flags(header, name)
    if header.aout_kludge:
        entry, end = load_aout_kludge(memory, data, header, name)
    elif is_elf(data):
        entry, end = load_elf(memory, data, name)
    else:
        raise LoaderError(f"{name}: Multiboot kernel is not ELF and its header has no load "
                          "addresses (flags bit 16)")
    placed = load_modules(memory, list(modules), end, name)
    mmap = list(memory.memory_map() if e820 is None else e820)
    write_info(memory, f"{name} {cmdline}", list(modules), placed, mmap)   # as QEMU: "%s %s"
    return Entry(CpuMode.PROTECTED, entry,
                 {"rax": BOOTLOADER_MAGIC, "rbx": layout.MULTIBOOT_INFO}, protocol="Multiboot")
