/*
 * gdt.c: the Global Descriptor Table and the Task State Segment.
 *
 * In long mode segments are almost gone (no bases, no limits), but the CPU
 * still takes two things from the GDT: the privilege level of code (the
 * DPL of the CS descriptor: ring 0 for the kernel, ring 3 for user
 * programs) and, through the TSS, the stack to switch to when an interrupt
 * arrives from ring 3 (TSS.rsp0).  SDM Vol. 3A, 3.4.5 (descriptors),
 * 7.7 (64-bit TSS), 6.14.4 (stack switching).
 *
 * Each CPU has its own GDT and TSS: TSS.rsp0 is the kernel stack of the
 * process *this* CPU runs, and LTR marks the TSS descriptor busy, so two
 * CPUs cannot share one.
 */
#include "defs.h"
#include "proc.h"
#include "x86.h"

/* Segment descriptor bits (SDM Vol. 3A, Figure 3-8). */
#define SEG_P      (1ULL << 47)    /* present */
#define SEG_DPL3   (3ULL << 45)    /* descriptor privilege level 3 */
#define SEG_S      (1ULL << 44)    /* code or data (not a system segment) */
#define SEG_CODE   (1ULL << 43)    /* executable */
#define SEG_RW     (1ULL << 41)    /* code: readable; data: writable */
#define SEG_L      (1ULL << 53)    /* 64-bit code */
#define SEG_DB     (1ULL << 54)    /* 32-bit default size (data) */
#define SEG_G      (1ULL << 55)    /* limit in 4 KiB units */
#define SEG_LIMIT  0x000f00000000ffffULL  /* limit 0xfffff */
#define TSS_AVAIL  (9ULL << 40)    /* system type 9: 64-bit TSS, available */

/* The 64-bit TSS (SDM Vol. 3A, Figure 7-11). */
struct __attribute__((packed)) tss {
    uint32_t reserved0;
    uint64_t rsp[3];               /* stack for an interrupt from ring 0..2 */
    uint64_t reserved1;
    uint64_t ist[7];               /* interrupt stack table: unused */
    uint64_t reserved2;
    uint16_t reserved3;
    uint16_t iomap_base;           /* >= limit: no I/O permission bitmap */
};

#define GDT_ENTRIES 7

static struct tss tss[MAX_CPUS];
static uint64_t gdt[MAX_CPUS][GDT_ENTRIES];

static const uint64_t segments[SEL_TSS >> 3] = {
    [0] = 0,                                                              /* null        */
    [SEL_KCODE >> 3] = SEG_P | SEG_S | SEG_CODE | SEG_RW | SEG_L | SEG_G | SEG_LIMIT,
    [SEL_KDATA >> 3] = SEG_P | SEG_S | SEG_RW | SEG_DB | SEG_G | SEG_LIMIT,
    [SEL_UDATA >> 3] = SEG_P | SEG_DPL3 | SEG_S | SEG_RW | SEG_DB | SEG_G | SEG_LIMIT,
    [SEL_UCODE >> 3] = SEG_P | SEG_DPL3 | SEG_S | SEG_CODE | SEG_RW | SEG_L | SEG_G | SEG_LIMIT,
    /* then the TSS descriptor, 16 bytes, filled in by gdt_init */
};

/* A 16-byte system descriptor for CPU `cpu`'s TSS (SDM Vol. 3A, Figure 7-4). */
static void set_tss_descriptor(int cpu)
{
    uint64_t base = (uint64_t)&tss[cpu];
    uint64_t limit = sizeof(tss[cpu]) - 1;

    gdt[cpu][SEL_TSS >> 3] = SEG_P | TSS_AVAIL | (limit & 0xffff) | ((base & 0xffffff) << 16) |
                             (((base >> 24) & 0xff) << 56);
    gdt[cpu][(SEL_TSS >> 3) + 1] = base >> 32;
}

/* Load CPU `cpu`'s GDT and TSS (called once on each CPU, by that CPU). */
void gdt_init(int cpu)
{
    struct dtr ptr = { sizeof(gdt[cpu]) - 1, (uint64_t)gdt[cpu] };

    memcpy(gdt[cpu], segments, sizeof(segments));
    tss[cpu].iomap_base = sizeof(tss[cpu]);  /* user programs get no port access */
    set_tss_descriptor(cpu);
    lgdt(&ptr);                    /* kernel selectors equal entry.S's: CS stays valid */
    ltr(SEL_TSS);
}

/* The stack this CPU switches to when an interrupt or system call arrives
 * from ring 3: the top of the kernel stack of the process it runs. */
void tss_set_kernel_stack(uint64_t rsp0)
{
    tss[mycpu()->index].rsp[0] = rsp0;
}
