"""Where everything lives in guest-physical memory: one named constant per address.

pykvm's x86-64 guests see this memory map (Firecracker's arch/x86_64/layout.rs
and xv6's memlayout.h are the models):

    0x0000_0000  +--------------------------------------+
                 | BIOS_IVT: real-mode interrupt vectors|
    0x0000_0400  | BIOS data area (unused)              |
    0x0000_0472  | BDA_RESET_FLAG: warm/cold reset word  |
    0x0000_0500  | BOOT_GDT: the GDT the vCPU starts on |
    0x0000_1000  | FLAT_LOAD: raw binaries, real mode   |
    0x0000_6000  | PVH_START_INFO: struct hvm_start_info|
                 |   or MULTIBOOT_INFO (one at a time)  |
    0x0000_6040  | PVH_MODLIST: hvm_modlist_entry[]     |
    0x0000_6080  | MULTIBOOT_MODS: Multiboot modules    |
    0x0000_7000  | ZERO_PAGE (Linux) / PVH_MEMMAP /     |
                 |   MULTIBOOT_MMAP                     |
    0x0000_8000  | MULTIBOOT_LOW_LOAD: lowest address a |
                 |   Multiboot kernel may load at       |
    0x0000_9000  | PML4 .. PD: boot page tables (Linux) |
    0x0002_0000  | CMDLINE: kernel command line         |
    0x0009_fc00  +--------------------------------------+
                 | EBDA, VGA, BIOS ROM: reserved        |
    0x000e_0000  | ACPI_TABLES: RSDP, FADT, DSDT (Linux)|
    0x000f_0000  | BIOS_STUBS: the IVT's handlers       |
    0x0010_0000  +--------------------------------------+
                 | HIMEM_START: the kernel is loaded    |
                 | here, then free RAM ...              |
    MMIO_GAP_START (3 GiB) ------------------------------+
                 | MMIO gap: no RAM                     |
    0xd000_0000  | VIRTIO_MMIO_BASE: virtio-mmio slots, |
                 | 4 KiB each, IRQs VIRTIO_MMIO_IRQS    |
    0xfec0_0000  | IOAPIC_ADDRESS: KVM's in-kernel      |
                 |   IOAPIC (in the MADT)               |
    0xfee0_0000  | LOCAL_APIC_ADDRESS: each vCPU's LAPIC|
    0xff00_0000  | PC_TESTDEV_IOMEM: pc-testdev MMIO    |
    0xfffb_c000  | KVM_IDENTITY_MAP_ADDRESS, then       |
                 |   KVM_TSS_ADDRESS: Intel VMX's pages |
    4 GiB        +--------------------------------------+
                 | RAM above 4 GiB, if --mem > 3 GiB    |
"""
from __future__ import annotations

__all__ = [
    "BIOS_IVT", "BIOS_STUBS", "BDA_RESET_FLAG", "BOOT_GDT", "FLAT_LOAD", "PVH_START_INFO", "PVH_MODLIST", "PVH_MEMMAP", "ZERO_PAGE",
    "PML4_START", "PDPTE_START", "PDE_START", "CMDLINE_START", "CMDLINE_MAX",
    "EBDA_START", "ACPI_TABLES", "HIMEM_START", "MMIO_GAP_START", "MMIO_GAP_END", "KVM_TSS_ADDRESS",
    "KVM_IDENTITY_MAP_ADDRESS", "IOAPIC_ADDRESS", "LOCAL_APIC_ADDRESS", "VIRTIO_MMIO_BASE",
    "VIRTIO_MMIO_SIZE", "VIRTIO_MMIO_IRQS", "PC_TESTDEV_IOMEM",
    "virtio_mmio_slot", "MULTIBOOT_INFO", "MULTIBOOT_MODS", "MULTIBOOT_MMAP", "MULTIBOOT_LOW_LOAD",
    "E820_RAM", "E820_RESERVED", "memory_map",
]

BIOS_IVT = 0x0               # real-mode interrupt vector table: 256 far pointers (firmware.py)
BDA_RESET_FLAG = 0x472       # BIOS Data Area word the OS sets before a reset (0x1234 = warm)
BOOT_GDT = 0x500             # GDT written by pykvm for the vCPU's first instruction
FLAT_LOAD = 0x1000           # raw flat binaries load here and start in real mode
PVH_START_INFO = 0x6000      # struct hvm_start_info (PVH boot), pointed to by %ebx
PVH_MODLIST = 0x6040         # struct hvm_modlist_entry[] (PVH initrd)
PVH_MEMMAP = 0x7000          # struct hvm_memmap_table_entry[] (PVH memory map)
ZERO_PAGE = 0x7000           # struct boot_params (Linux boot protocol); never both at once
MULTIBOOT_INFO = 0x6000      # Multiboot info structure (%ebx; not with PVH); Multiboot2's tags: to 0x8000
MULTIBOOT_MODS = 0x6080      # Multiboot module list (16 bytes per module)
MULTIBOOT_MMAP = 0x7000      # Multiboot memory map (mmap_addr)
MULTIBOOT_LOW_LOAD = 0x8000  # a Multiboot kernel may load from here up to CMDLINE_START, or above 1 MiB
PML4_START = 0x9000          # page map level 4 for the Linux 64-bit entry identity map
PDPTE_START = 0xA000         # page directory pointer table
PDE_START = 0xB000           # page directory (2 MiB pages)
CMDLINE_START = 0x20000      # kernel command line, NUL-terminated
CMDLINE_MAX = 0x10000        # bytes reserved for it
EBDA_START = 0x9FC00         # Extended BIOS Data Area: from here to 1 MiB is reserved
ACPI_TABLES = 0xE0000        # ACPI tables, RSDP first: in the BIOS area Linux scans for "RSD PTR "
BIOS_STUBS = 0xF0000         # the IVT's stub handlers (IRET, EOI + IRET): segment F000h, as a BIOS's
HIMEM_START = 0x100000       # 1 MiB: kernels are loaded here
MMIO_GAP_START = 0xC0000000  # 3 GiB: RAM stops here below 4 GiB
MMIO_GAP_END = 0x100000000   # 4 GiB: RAM resumes here
KVM_TSS_ADDRESS = 0xFFFBD000           # 3 pages for KVM_SET_TSS_ADDR (as QEMU and Firecracker)
KVM_IDENTITY_MAP_ADDRESS = 0xFFFBC000  # 1 page for KVM_SET_IDENTITY_MAP_ADDR, just below
IOAPIC_ADDRESS = 0xFEC00000            # KVM's in-kernel IOAPIC (IOAPIC_DEFAULT_BASE_ADDRESS)
LOCAL_APIC_ADDRESS = 0xFEE00000        # every CPU's LAPIC registers (SDM Vol. 3A 10.4.1)
PC_TESTDEV_IOMEM = 0xFF000000          # QEMU pc-testdev's MMIO scratch window (kvm-unit-tests)
VIRTIO_MMIO_BASE = 0xD0000000          # first virtio-mmio device (Firecracker's MMIO_MEM_START)
VIRTIO_MMIO_SIZE = 0x1000              # one page per device: registers at 0, config at 0x100
# One ISA interrupt per slot: free lines of a PC (0 PIT, 1 keyboard, 2 cascade, 3-4 serial,
# 8 RTC, 9 ACPI SCI, 12 PS/2 mouse, 13 FPU are taken), so the 8259 PIC reaches them too.
VIRTIO_MMIO_IRQS = (5, 6, 7, 10, 11, 14, 15)

# E820 / PVH memory map entry types (ACPI spec 6.5, table 15.4 "Address Range Types").
E820_RAM = 1                 # usable RAM
E820_RESERVED = 2            # reserved, do not use


def virtio_mmio_slot(index: int) -> tuple[int, int]:
    """(base address, IRQ) of virtio-mmio slot `index` (0 to len(VIRTIO_MMIO_IRQS) - 1)."""
    return VIRTIO_MMIO_BASE + index * VIRTIO_MMIO_SIZE, VIRTIO_MMIO_IRQS[index]


def memory_map(ram: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """The E820-style map a guest is given: (address, size, type) for RAM regions `ram`.

    The legacy area from EBDA_START to 1 MiB is carved out as reserved, as a PC
    firmware would report it.
    """
    entries = []
    for base, size in ram:
        end = base + size
        if base < EBDA_START < end:
            entries.append((base, EBDA_START - base, E820_RAM))
            entries.append((EBDA_START, min(end, HIMEM_START) - EBDA_START, E820_RESERVED))
            if end > HIMEM_START:
                entries.append((HIMEM_START, end - HIMEM_START, E820_RAM))
        else:
            entries.append((base, size, E820_RAM))
    return entries
