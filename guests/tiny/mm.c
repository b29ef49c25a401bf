/*
 * mm.c: memory.  Three jobs, in the order kmain needs them:
 *
 *  1. read the memory map the VMM left in hvm_start_info (PVH, version 1:
 *     memmap_paddr/memmap_entries, E820 types);
 *  2. hand out 4 KiB physical pages (kalloc/kfree): a bump pointer through
 *     the RAM regions plus a free list of returned pages, so boot never has
 *     to walk (and, in this emulated kernel mode, pay for) every page;
 *  3. build page tables (SDM Vol. 3A, 4.5 "4-Level Paging"): the kernel's
 *     1:1 map of RAM, and each process's private user half.
 */
#include "defs.h"
#include "memlayout.h"
#include "pvh.h"
#include "spinlock.h"
#include "x86.h"

/* Page-table entry bits (SDM Vol. 3A, Table 4-19 and friends). */
#define PTE_P    0x001             /* present */
#define PTE_W    0x002             /* writable */
#define PTE_U    0x004             /* user: ring 3 may access */
#define PTE_PWT  0x008             /* write-through */
#define PTE_PCD  0x010             /* cache disable: with PWT, uncached (SDM Vol. 3A, 11.12.3) */
#define PTE_PS   0x080             /* in a PD entry: maps a 2 MiB page */
#define PTE_ADDR 0x000ffffffffff000ULL
#define PT_INDEX(va, level) (((va) >> (12 + 9 * (level))) & 511)   /* level 3 = PML4 */

#define MAX_MEMMAP 32

struct memregion memmap[MAX_MEMMAP];
int memmap_count;
uint64_t ram_bytes;                /* sum of the E820 RAM regions */

static struct {
    int region;                    /* memmap index the bump pointer is in */
    uint64_t next;                 /* next never-used page */
    void *free_list;               /* returned pages, linked through their first word */
    uint64_t total;                /* pages this allocator manages */
    uint64_t used;
} pages;

static uint64_t *kpml4;
static struct spinlock kmem_lock = SPINLOCK_INIT("kmem");   /* guards `pages` */

static uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

/* 1. Copy the VMM's memory map: its page may be reused once we allocate. */
static void read_memmap(const struct hvm_start_info *si)
{
    if (si->version < 1 || si->memmap_entries == 0)
        panic("hvm_start_info version %u has no memory map", si->version);
    if (si->memmap_paddr >= BOOT_MAP_END)
        panic("memory map at %lx is outside the boot mapping", si->memmap_paddr);
    const struct hvm_memmap_table_entry *e = (const void *)si->memmap_paddr;
    for (uint32_t i = 0; i < si->memmap_entries && memmap_count < MAX_MEMMAP; i++) {
        if (e[i].size == 0)
            continue;              /* QEMU microvm's qboot ends its map with one */
        memmap[memmap_count++] = (struct memregion){ e[i].addr, e[i].size, e[i].type };
        if (e[i].type == E820_RAM)
            ram_bytes += e[i].size;
    }
}

/* The part of a RAM region kalloc may use: whole pages above the kernel
 * image (which also skips the first MiB, where the VMM's boot data lives)
 * and inside the kernel's map (PML4 entry 0: the first 512 GiB). */
static void usable_range(const struct memregion *r, uint64_t *lo, uint64_t *hi)
{
    *lo = align_up(r->addr, PAGE_SIZE);
    *hi = (r->addr + r->size) & ~(PAGE_SIZE - 1);
    if (*lo < (uint64_t)__kernel_end)
        *lo = (uint64_t)__kernel_end;
    if (*hi > KERNEL_MAP_MAX)
        *hi = KERNEL_MAP_MAX;
    if (*hi < *lo)
        *hi = *lo;
}

static void pages_init(void)
{
    for (int i = 0; i < memmap_count; i++) {
        uint64_t lo, hi;
        if (memmap[i].type != E820_RAM)
            continue;
        usable_range(&memmap[i], &lo, &hi);
        pages.total += (hi - lo) / PAGE_SIZE;
    }
    pages.region = -1;
}

/* n never-used pages in a row from the bump pointer, or NULL.  A region
 * with too few left is passed over, and its rest stays unused. */
static void *bump(uint64_t n)
{
    uint64_t lo = 0, hi = 0;
    if (pages.region >= 0)
        usable_range(&memmap[pages.region], &lo, &hi);
    while (pages.next < lo || pages.next + n * PAGE_SIZE > hi) {
        if (++pages.region >= memmap_count)
            return NULL;
        if (memmap[pages.region].type != E820_RAM)
            continue;
        usable_range(&memmap[pages.region], &lo, &hi);
        pages.next = lo;
    }
    void *first = (void *)pages.next;
    pages.next += n * PAGE_SIZE;
    return first;
}

/* 2. A zeroed 4 KiB page, or NULL when memory is exhausted. */
void *kalloc(void)
{
    acquire(&kmem_lock);
    void *page = pages.free_list;
    if (page)
        pages.free_list = *(void **)page;
    else if (!(page = bump(1))) {
        release(&kmem_lock);
        return NULL;
    }
    pages.used++;
    release(&kmem_lock);
    return memset(page, 0, PAGE_SIZE);
}

/* n physically contiguous zeroed pages, for a device that is handed one
 * address and a length (a virtio buffer larger than a page); NULL if no
 * region has that many left.  They are never freed. */
void *kalloc_contiguous(uint64_t n)
{
    acquire(&kmem_lock);
    void *first = bump(n);
    if (first)
        pages.used += n;
    release(&kmem_lock);
    return first ? memset(first, 0, n * PAGE_SIZE) : NULL;
}

void kfree(void *page)
{
    acquire(&kmem_lock);
    *(void **)page = pages.free_list;
    pages.free_list = page;
    pages.used--;
    release(&kmem_lock);
}

void mm_stats(uint64_t *total_pages, uint64_t *free_pages)
{
    *total_pages = pages.total;
    *free_pages = pages.total - pages.used;
}

/* 3. Page tables.  A 2 MiB page (a PD entry with PS) becomes a page table
 * of 512 4 KiB entries mapping the same memory, so that one of them can
 * change: map_kernel covers everything below the end of RAM with 2 MiB
 * pages, including the hole below 4 GiB where devices live. */
static int split_large_page(uint64_t *pde)
{
    uint64_t *pt = kalloc();
    if (!pt)
        return -1;
    uint64_t base = *pde & PTE_ADDR, flags = *pde & ~PTE_ADDR & ~(uint64_t)PTE_PS;
    for (int i = 0; i < 512; i++)
        pt[i] = (base + i * PAGE_SIZE) | flags;
    *pde = (uint64_t)pt | PTE_P | PTE_W;
    return 0;
}

/* walk() returns the level-0 (PT) entry for va, creating
 * the intermediate tables on the way; `user` sets U/S on them so that the
 * final entry alone decides (SDM Vol. 3A, 4.6.1). */
static uint64_t *walk(uint64_t *pml4, uint64_t va, int user)
{
    uint64_t *table = pml4;
    for (int level = 3; level > 0; level--) {
        uint64_t *entry = &table[PT_INDEX(va, level)];
        if ((*entry & PTE_PS) && split_large_page(entry) != 0)
            return NULL;
        if (!(*entry & PTE_P)) {
            uint64_t *next = kalloc();
            if (!next)
                return NULL;
            *entry = (uint64_t)next | PTE_P | PTE_W | (user ? PTE_U : 0);
        }
        table = (uint64_t *)(*entry & PTE_ADDR);
    }
    return &table[PT_INDEX(va, 0)];
}

/* The kernel's map: physical memory 0..end of RAM at the same virtual
 * addresses, supervisor-only.  2 MiB pages keep it to one PD entry per
 * 2 MiB, except the first 2 MiB, mapped page by page so that page 0 can
 * be left out: a kernel NULL dereference then faults instead of reading
 * the real-mode interrupt table. */
static void map_kernel(void)
{
    uint64_t end = 0;
    for (int i = 0; i < memmap_count; i++)
        if (memmap[i].type == E820_RAM && memmap[i].addr + memmap[i].size > end)
            end = memmap[i].addr + memmap[i].size;
    end = align_up(end, LARGE_PAGE_SIZE);
    if (end > KERNEL_MAP_MAX)
        end = KERNEL_MAP_MAX;

    kpml4 = kalloc();
    uint64_t *pt = walk(kpml4, 0, 0);      /* the PT for 0..2 MiB; pt[0] stays 0 */
    for (int i = 1; i < 512; i++)
        pt[i] = i * PAGE_SIZE | PTE_P | PTE_W;
    for (uint64_t pa = LARGE_PAGE_SIZE; pa < end; pa += LARGE_PAGE_SIZE) {
        uint64_t *pdpt = (uint64_t *)(kpml4[0] & PTE_ADDR);
        uint64_t *pdpte = &pdpt[PT_INDEX(pa, 2)];
        if (!(*pdpte & PTE_P))
            *pdpte = (uint64_t)kalloc() | PTE_P | PTE_W;
        uint64_t *pd = (uint64_t *)(*pdpte & PTE_ADDR);
        pd[PT_INDEX(pa, 1)] = pa | PTE_P | PTE_W | PTE_PS;
    }
}

void mm_init(const struct hvm_start_info *si)
{
    read_memmap(si);
    pages_init();
    map_kernel();
    write_cr3((uint64_t)kpml4);
}

static int overlaps_ram(uint64_t pa, uint64_t size)
{
    for (int i = 0; i < memmap_count; i++)
        if (memmap[i].type == E820_RAM && pa < memmap[i].addr + memmap[i].size &&
            memmap[i].addr < pa + size)
            return 1;
    return 0;
}

/* Map a device's registers (physical [pa, pa+size)) into the kernel's map,
 * at the same virtual address, uncached: a device register must be read
 * and written every time the code says so, never from a cache line.
 * The kernel's map covers RAM only (map_kernel), so a device window, such
 * as virtio-mmio's at 0xfeb00000 on QEMU microvm, needs its own pages.
 * They go under PML4 entry 0, which every process shares.  Returns the
 * address to use, or NULL (the range holds RAM or is beyond the map, or
 * no memory for a page table). */
void *mmio_map(uint64_t pa, uint64_t size)
{
    if (size == 0 || pa + size < pa || pa + size > KERNEL_MAP_MAX || overlaps_ram(pa, size))
        return NULL;
    for (uint64_t page = pa & ~(PAGE_SIZE - 1); page < pa + size; page += PAGE_SIZE) {
        uint64_t *pte = walk(kpml4, page, 0);
        if (!pte)
            return NULL;
        *pte = page | PTE_P | PTE_W | PTE_PCD | PTE_PWT;
    }
    write_cr3(read_cr3());         /* flush the TLB: no stale "not present" entries */
    return (void *)pa;
}

uint64_t *kernel_pml4(void)
{
    return kpml4;
}

/* A new address space: the kernel's PML4 entry 0 (shared, supervisor) and
 * nothing else; uvm_map adds the process's own pages above USER_BASE. */
uint64_t *uvm_create(void)
{
    uint64_t *pml4 = kalloc();
    if (pml4)
        pml4[0] = kpml4[0];
    return pml4;
}

/* Free a table and everything below it; level 0 entries are pages. */
static void free_table(uint64_t *table, int level)
{
    for (int i = 0; i < 512; i++) {
        if (!(table[i] & PTE_P))
            continue;
        void *next = (void *)(table[i] & PTE_ADDR);
        if (level > 0)
            free_table(next, level - 1);
        else
            kfree(next);
    }
    kfree(table);
}

/* Free a process's address space: its user half (PML4 entries 1..255, with
 * every page and table in it) and its PML4.  Entry 0 is the kernel's. */
void uvm_free(uint64_t *pml4)
{
    for (int i = 1; i < 256; i++)
        if (pml4[i] & PTE_P)
            free_table((uint64_t *)(pml4[i] & PTE_ADDR), 2);
    kfree(pml4);
}

/* Map one user page at va.  Returns 0, or -1 when out of memory. */
int uvm_map(uint64_t *pml4, uint64_t va, void *page)
{
    uint64_t *pte = walk(pml4, va, 1);
    if (!pte)
        return -1;
    *pte = (uint64_t)page | PTE_P | PTE_W | PTE_U;
    return 0;
}
