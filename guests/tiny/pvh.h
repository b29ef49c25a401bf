/*
 * pvh.h: the PVH boot ABI, as the VMM hands it to us.
 *
 * Source: Xen's xen/include/public/arch-x86/hvm/start_info.h and
 * docs/misc/pvh.pandoc.  The VMM loads the ELF, finds the note
 * XEN_ELFNOTE_PHYS32_ENTRY and jumps there in 32-bit protected mode, paging
 * off, with %ebx = the physical address of a struct hvm_start_info.
 */
#ifndef TINY_PVH_H
#define TINY_PVH_H
#include <stdint.h>

#define XEN_HVM_START_MAGIC_VALUE 0x336ec578   /* hvm_start_info.magic */

struct hvm_start_info {
    uint32_t magic;            /* XEN_HVM_START_MAGIC_VALUE                 */
    uint32_t version;          /* 0, or 1 when memmap_* below are valid     */
    uint32_t flags;
    uint32_t nr_modules;       /* modules (initrds): unused by tiny         */
    uint64_t modlist_paddr;
    uint64_t cmdline_paddr;    /* NUL-terminated kernel command line, or 0  */
    uint64_t rsdp_paddr;       /* ACPI RSDP, or 0                           */
    uint64_t memmap_paddr;     /* version 1: array of hvm_memmap_table_entry */
    uint32_t memmap_entries;
    uint32_t reserved;
};

/* One memory-map entry; `type` uses the E820 numbering (ACPI 6.4, 15.1). */
struct hvm_memmap_table_entry {
    uint64_t addr;
    uint64_t size;
    uint32_t type;
    uint32_t reserved;
};

#define E820_RAM 1                 /* usable RAM */

#endif
