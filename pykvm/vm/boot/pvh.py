"""PVH boot: start an ELF kernel at its Xen PVH entry point, in 32-bit protected mode.

PVH is the simplest standard way to boot an x86 kernel from a VMM: QEMU
(`-kernel` with an ELF), Firecracker, Cloud Hypervisor and Xen all support it.
The contract (xen/include/public/arch-x86/hvm/start_info.h and
xen docs/misc/pvh.pandoc):

1. The kernel's ELF has a note, name "Xen", type XEN_ELFNOTE_PHYS32_ENTRY
   (18), whose descriptor is the physical entry address.
2. The VMM copies the PT_LOAD segments to their physical addresses.
3. It writes a `struct hvm_start_info` (magic 0x336ec578) that points to the
   command line, the modules (an initrd), the ACPI RSDP and, from version 1,
   a memory map.
4. It starts the vCPU at the entry in 32-bit protected mode, paging off,
   with %ebx = the start info's physical address.

plan_pvh decides steps 1-3 without a VM, as a LoadPlan of writes plus the
entry (pykvm.vm.boot.plan), the same shape as the bzImage loader's
plan_bzimage; load_pvh writes the plan into guest memory.
"""
from __future__ import annotations

import struct

from pykvm.vm.arch.x86.boot_state import CpuMode, Entry
from pykvm.vm import layout
from pykvm.vm.boot.cmdline import encode_cmdline, join_cmdline
from pykvm.vm.boot.elf import ElfFile, parse_elf
from pykvm.vm.boot.plan import LoadPlan, in_ram, place_initrd, write_plan
from pykvm.errors import LoaderError

__all__ = ["plan_pvh", "load_pvh", "pvh_entry_point", "is_linux", "pack_start_info", "pack_memmap", "pack_modlist",
           "XEN_ELFNOTE_PHYS32_ENTRY", "HVM_START_MAGIC"]

XEN_ELFNOTE_GUEST_OS = 6       # elfnote.h: the guest OS's name, "linux" for Linux
XEN_ELFNOTE_PHYS32_ENTRY = 18  # elfnote.h: physical 32-bit entry point
HVM_START_MAGIC = 0x336EC578   # start_info.h: hvm_start_info.magic
HVM_START_VERSION = 1          # version 1 adds memmap_paddr/memmap_entries

# struct hvm_start_info: magic, version, flags, nr_modules, modlist_paddr,
# cmdline_paddr, rsdp_paddr, memmap_paddr, memmap_entries, reserved (56 bytes)
START_INFO = struct.Struct("<IIIIQQQQII")
# struct hvm_memmap_table_entry: addr, size, type, reserved (24 bytes)
MEMMAP_ENTRY = struct.Struct("<QQII")
# struct hvm_modlist_entry: paddr, size, cmdline_paddr, reserved (32 bytes)
MODLIST_ENTRY = struct.Struct("<QQQQ")

MAX_MEMMAP_ENTRIES = (layout.PML4_START - layout.PVH_MEMMAP) // MEMMAP_ENTRY.size


def pvh_entry_point(elf: ElfFile, name: str = "kernel") -> int:
    """The address in the XEN_ELFNOTE_PHYS32_ENTRY note, or LoaderError."""
    for note in elf.notes():
        if note.name == b"Xen" and note.type == XEN_ELFNOTE_PHYS32_ENTRY:
            if len(note.desc) not in (4, 8):
                raise LoaderError(f"{name}: PVH entry note has a {len(note.desc)}-byte address")
            return int.from_bytes(note.desc, "little")
    raise LoaderError(f"{name}: no Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); "
                      "pykvm boots ELF kernels through PVH")


def is_linux(elf: ElfFile) -> bool:
    """A Linux vmlinux: its notes say so (Xen GUEST_OS "linux", or any note owned by "Linux")."""
    return any(note.name == b"Linux"
               or (note.name == b"Xen" and note.type == XEN_ELFNOTE_GUEST_OS
                   and note.desc.rstrip(b"\0") == b"linux")
               for note in elf.notes())


def pack_start_info(cmdline_paddr: int, memmap_entries: int, nr_modules: int = 0,
                    modlist_paddr: int = 0, memmap_paddr: int = layout.PVH_MEMMAP,
                    rsdp_paddr: int = 0) -> bytes:
    """struct hvm_start_info, version 1 (rsdp_paddr 0: "find the RSDP yourself")."""
    return START_INFO.pack(HVM_START_MAGIC, HVM_START_VERSION, 0, nr_modules, modlist_paddr,
                           cmdline_paddr, rsdp_paddr, memmap_paddr, memmap_entries, 0)


def pack_memmap(entries: list[tuple[int, int, int]]) -> bytes:
    """The memory map as hvm_memmap_table_entry[] (types are E820 types)."""
    return b"".join(MEMMAP_ENTRY.pack(addr, size, kind, 0) for addr, size, kind in entries)


def pack_modlist(modules: list[tuple[int, int]]) -> bytes:
    """Modules (address, size) as hvm_modlist_entry[], without command lines."""
    return b"".join(MODLIST_ENTRY.pack(addr, size, 0, 0) for addr, size in modules)


def plan_pvh(data: bytes, ram: list[tuple[int, int]], cmdline: str = "", initrd: bytes | None = None,
             name: str = "kernel", acpi_rsdp: int = 0, cmdline_extra: str = "", e820=None) -> LoadPlan:
    """Everything PVH boot decides for ELF `data`, without touching a VM: steps 1-3 of the
    module docstring as (address, bytes) writes, and step 4's entry.

    `ram`: the guest's RAM as (base, size) ranges, the first starting at 0
    (GuestMemory.ram_ranges()).  `acpi_rsdp` and `e820`: what the firmware step
    left (pykvm.vm.boot.firmware), for start_info.rsdp_paddr (Linux reads it in
    arch/x86/platform/pvh/enlighten.c) and the memory map; by default no RSDP
    and layout.memory_map(ram).  A Linux kernel given no command line gets the
    bzImage loader's DEFAULT_CMDLINE (without console=ttyS0 it would print
    nothing at all).  `cmdline_extra` (the virtio-mmio devices) is appended to either.
    """
    elf = parse_elf(data, name)
    entry = pvh_entry_point(elf, name)
    if not cmdline and is_linux(elf):
        from pykvm.vm.boot.bzimage import DEFAULT_CMDLINE
        cmdline = DEFAULT_CMDLINE
    writes, kernel_end = segment_writes(elf, ram, name)
    writes.append((layout.CMDLINE_START, encode_cmdline(join_cmdline(cmdline, cmdline_extra))))
    modules = []
    if initrd is not None:
        address = place_initrd(len(initrd), ram[0][0] + ram[0][1], kernel_end)
        modules.append((address, len(initrd)))
        writes += [(address, bytes(initrd)), (layout.PVH_MODLIST, pack_modlist(modules))]
    memmap = list(layout.memory_map(ram) if e820 is None else e820)
    if len(memmap) > MAX_MEMMAP_ENTRIES:
        raise LoaderError(f"memory map has {len(memmap)} entries, room for {MAX_MEMMAP_ENTRIES}")
    writes.append((layout.PVH_MEMMAP, pack_memmap(memmap)))
    writes.append((layout.PVH_START_INFO, pack_start_info(
        layout.CMDLINE_START, len(memmap), len(modules), layout.PVH_MODLIST if modules else 0,
        rsdp_paddr=acpi_rsdp)))
    return LoadPlan(Entry(CpuMode.PROTECTED, entry, {"rbx": layout.PVH_START_INFO}, protocol="PVH"),
                    tuple(writes))


def load_pvh(memory, data: bytes, cmdline: str = "", initrd: bytes | None = None,
             name: str = "kernel", acpi_rsdp: int = 0, cmdline_extra: str = "",
             e820=None) -> Entry:
    """Load ELF `data` into `memory` and return its PVH entry: plan_pvh's plan, written."""
    return write_plan(memory, plan_pvh(data, memory.ram_ranges(), cmdline, initrd, name,
                                       acpi_rsdp, cmdline_extra, e820))


def segment_writes(elf: ElfFile, ram: list[tuple[int, int]], name: str) -> tuple[list, int]:
    """Every PT_LOAD segment at its physical address, its tail (.bss) zeroed: the writes,
    and the end of the highest segment."""
    writes, end = [], 0
    for i, seg in enumerate(elf.load_segments()):
        if seg.memsz == 0:
            continue
        if seg.paddr < layout.HIMEM_START:
            raise LoaderError(f"{name}: segment {i} at {seg.paddr:#x} overlaps pykvm's boot area "
                              f"below {layout.HIMEM_START:#x}")
        if not in_ram(ram, seg.paddr, seg.memsz):
            raise LoaderError(f"{name}: segment {i} ({seg.paddr:#x}, {seg.memsz:#x} bytes) "
                              f"is outside guest memory; try a larger --mem")
        writes.append((seg.paddr, elf.segment_data(seg)))
        if seg.memsz > seg.filesz:
            writes.append((seg.paddr + seg.filesz, bytes(seg.memsz - seg.filesz)))
        end = max(end, seg.paddr + seg.memsz)
    if end == 0:
        raise LoaderError(f"{name}: ELF has no loadable segments")
    return writes, end
