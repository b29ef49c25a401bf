/*
 * long_mode.h: the switch from 32-bit protected mode to long mode, shared
 * by the bootstrap CPU (entry.S) and the others (trampoline.S).  The order
 * is the Intel SDM's (Vol. 3A, 10.8.5 "Initializing IA-32e Mode"):
 *   1. set CR4.PAE                      (long mode uses 4-level PAE paging)
 *   2. load CR3 with a PML4
 *   3. set EFER.LME                     (MSR 0xC0000080 bit 8)
 *   4. set CR0.PG                       (paging on: the CPU is now in long mode)
 * after which a far jump through a 64-bit code segment leaves the 32-bit
 * "compatibility mode" the CPU is still in.  Assembly only.
 */
#ifndef TINY_LONG_MODE_H
#define TINY_LONG_MODE_H

#define CR0_PE     (1 << 0)           /* protected mode enable */
#define CR0_PG     (1 << 31)          /* paging */
#define CR4_PAE    (1 << 5)           /* physical address extension */
#define MSR_EFER   0xc0000080         /* extended feature enable register */
#define EFER_LME   (1 << 8)           /* long mode enable */

/* Steps 1-4; `pml4` is any 32-bit source operand holding the PML4's address. */
.macro ENTER_LONG_MODE pml4
    mov %cr4, %eax
    or $CR4_PAE, %eax
    mov %eax, %cr4
    mov \pml4, %eax
    mov %eax, %cr3
    mov $MSR_EFER, %ecx
    rdmsr
    or $EFER_LME, %eax
    wrmsr
    mov %cr0, %eax
    or $(CR0_PG | CR0_PE), %eax
    mov %eax, %cr0
.endm

#endif
