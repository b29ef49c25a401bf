/*
 * trampoline.S: where an application processor starts.  smp.c copies
 * these bytes to AP_TRAMPOLINE (0x8000, below 1 MiB as a start-up IPI
 * requires), fills in the three parameters at the end, and sends the
 * start-up IPI with vector 0x08: the AP begins in 16-bit real mode at
 * CS:IP = 0800:0000 (Intel SDM Vol. 3A, 8.4.4.2 "Typical AP Initialization
 * Sequence").  From there to C it climbs the modes as entry.S does for the
 * bootstrap processor, one step further down:
 *   real mode -> 32-bit protected mode (CR0.PE, a far jump)
 *   -> long mode (CR4.PAE, CR3, EFER.LME, CR0.PG, a far jump)
 *   -> ap_main() on its own stack.
 * The code is assembled here but runs at AP_TRAMPOLINE, so every absolute
 * address is written as AP_TRAMPOLINE + (label - trampoline_start).
 */
#include "long_mode.h"
#include "memlayout.h"
#define SEL_CODE64 0x08
#define SEL_DATA   0x10
#define SEL_CODE32 0x18
#define AT(label)  (AP_TRAMPOLINE + ((label) - trampoline_start))

    .section .rodata               /* data to the kernel: copied, never run in place */
    .globl trampoline_start, trampoline_end, trampoline_cr3, trampoline_stack, trampoline_entry
    .code16
trampoline_start:
    cli
    mov %cs, %ax                   /* 0x0800: the GDT pointer below is CS-relative */
    mov %ax, %ds
    lgdtl trampoline_gdt_ptr - trampoline_start
    mov %cr0, %eax
    or $CR0_PE, %eax
    mov %eax, %cr0
    ljmpl $SEL_CODE32, $AT(protected_mode)

    .code32
protected_mode:
    mov $SEL_DATA, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    ENTER_LONG_MODE AT(trampoline_cr3)   /* the kernel's page tables (below 4 GiB) */
    ljmp $SEL_CODE64, $AT(long_mode)

    .code64
long_mode:
    mov AT(trampoline_stack), %rsp
    mov AT(trampoline_entry), %rax
    call *%rax                     /* ap_main() never returns */
1:  hlt
    jmp 1b

    .balign 8
trampoline_gdt:
    .quad 0                        /* null */
    .quad 0x00af9a000000ffff       /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff       /* 0x10: data */
    .quad 0x00cf9a000000ffff       /* 0x18: 32-bit code */
trampoline_gdt_ptr:
    .word trampoline_gdt_ptr - trampoline_gdt - 1
    .long AT(trampoline_gdt)
    .balign 8
trampoline_cr3:   .quad 0          /* parameters, written by smp.c */
trampoline_stack: .quad 0
trampoline_entry: .quad 0
trampoline_end:
