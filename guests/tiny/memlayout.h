/*
 * memlayout.h: every address tiny uses, one named constant each.
 *
 *   virtual address                      what
 *   0x0000_0000_0000_0000 - RAM end      kernel: physical memory mapped 1:1,
 *                                        supervisor-only (PML4 entry 0)
 *       0x0000_0000_0000_0000            page 0 left unmapped: catches NULL
 *       0x0000_0000_0000_8000            AP_TRAMPOLINE: where other CPUs start
 *       0x0000_0000_0010_0000            the kernel image (KERNEL_BASE)
 *       0x0000_0000_fee0_0000            LAPIC_BASE: this CPU's local APIC
 *   0x0000_0080_0000_0000 (512 GiB)      USER_BASE: a user program's code and
 *                                        data (PML4 entry 1, user pages)
 *   USER_BASE + 2 MiB                    USER_STACK_TOP, stack grows down
 *
 * The kernel and every process share PML4 entry 0; each process has its own
 * PML4 whose entry 1 maps its private pages.  The U/S bit (SDM Vol. 3A,
 * 4.6.1) is clear on the kernel's entries, so ring 3 cannot touch them.
 */
#ifndef TINY_MEMLAYOUT_H
#define TINY_MEMLAYOUT_H

#define PAGE_SIZE       0x1000UL                 /* 4 KiB                         */
#define LARGE_PAGE_SIZE 0x200000UL               /* 2 MiB: a PD entry with PS set */
#define GIB             0x40000000UL
#define KERNEL_BASE     0x100000UL               /* 1 MiB: where the ELF is linked */
#define BOOT_MAP_END    GIB                      /* entry.S maps the first 1 GiB  */
#define KERNEL_MAP_MAX  (512 * GIB)              /* one PDPT: PML4 entry 0        */
#define USER_BASE       0x0000008000000000UL     /* 512 GiB: PML4 entry 1         */
#define USER_MAX_IMAGE  (64 * 1024UL)            /* largest user program          */
#define USER_STACK_PAGES 2
#define USER_STACK_TOP  (USER_BASE + LARGE_PAGE_SIZE)
#define USER_STACK_BOTTOM (USER_STACK_TOP - USER_STACK_PAGES * PAGE_SIZE)

/* SMP: where application processors start, and the local APIC's registers. */
#define AP_TRAMPOLINE   0x8000    /* start-up IPI vector 0x08: real mode 0800:0000 */
#define LAPIC_BASE      0xFEE00000UL  /* xAPIC registers (SDM Vol. 3A, 10.4.1), mapped uncached */

/* Debug and power ports, identical on QEMU -M pc and pykvm. */
#define DEBUG_EXIT_PORT 0xf4      /* isa-debug-exit: write V -> exit status (V<<1)|1 */
#define PM1_SLP_EN      0x2000    /* PM1 control bit 13: sleep enable (SLP_TYP 0 = S5, off) */
#define I8042_CMD       0x64      /* keyboard controller command port */
#define I8042_RESET     0xfe      /* pulse output line 0: the CPU reset line */

#endif
