/*
 * entry.S: where tiny starts.  The VMM (pykvm or QEMU) enters at pvh_start
 * in 32-bit protected mode, paging off, flat segments, interrupts off and
 * %ebx = physical address of struct hvm_start_info (see pvh.h).
 *
 * From there to C takes four steps, in the order the Intel SDM prescribes
 * for entering IA-32e (long) mode (Vol. 3A, 10.8.5 "Initializing IA-32e
 * Mode"):
 *   1. set CR4.PAE                      (long mode uses 4-level PAE paging)
 *   2. load CR3 with a PML4             (boot_pml4 below maps the first 1 GiB)
 *   3. set EFER.LME                     (MSR 0xC0000080 bit 8)
 *   4. set CR0.PG                       (paging on: the CPU is now in long mode)
 * then a far jump through a 64-bit code segment and a call to kmain().
 */
#include "long_mode.h"
#define XEN_ELFNOTE_PHYS32_ENTRY 18   /* Xen's elfnote.h: 32-bit PVH entry point */
#define PTE_P      (1 << 0)           /* present */
#define PTE_W      (1 << 1)           /* writable */
#define PTE_PS     (1 << 7)           /* page size: a 2 MiB page in a PD entry */
#define SEL_KCODE  0x08
#define SEL_KDATA  0x10
#define BOOT_STACK_SIZE 16384

/* The PVH entry note.  Loaders find it through a PT_NOTE program header
 * (kernel.ld).  Its descriptor is the 32-bit physical entry address. */
    .section .note.Xen, "a"
    .balign 4
    .long 4                       /* namesz: "Xen\0" */
    .long 4                       /* descsz */
    .long XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .long pvh_start

    .section .text.boot, "ax"
    .code32
    .globl pvh_start
pvh_start:
    cli
    cld
    mov %ebx, %ebp                /* keep hvm_start_info across the switch */

    /* Clear .bss: the C code expects its zero-initialised globals to be
     * zero, and the ELF stores none of it (p_filesz < p_memsz). */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    shr $2, %ecx
    xor %eax, %eax
    rep stosl

    /* Steps 1-4 above (long_mode.h). */
    ENTER_LONG_MODE $boot_pml4

    /* Still executing 32-bit code ("compatibility mode") until CS is
     * reloaded with a descriptor whose L bit is set. */
    lgdt boot_gdt_ptr
    ljmp $SEL_KCODE, $long_mode

    .code64
/* For debuggers: long_mode is the outermost frame, there is no caller to
 * unwind to (DWARF CFI, rip undefined).  The CFI goes to .debug_frame,
 * outside the loaded image. */
    .cfi_sections .debug_frame
long_mode:
    .cfi_startproc
    .cfi_undefined rip
    mov $SEL_KDATA, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %eax, %eax
    mov %ax, %fs
    mov %ax, %gs
    lea boot_stack_top(%rip), %rsp
    mov %ebp, %edi                /* kmain(struct hvm_start_info *) */
    call kmain
1:  hlt                           /* kmain never returns */
    jmp 1b
    .cfi_endproc

/* The boot GDT: just enough segments to reach long mode.  gdt.c installs the
 * full one (user segments, TSS) with the same kernel selectors.
 * Descriptor format: SDM Vol. 3A, 3.4.5; L bit (bit 53) = 64-bit code. */
    .section .rodata
    .balign 8
boot_gdt:
    .quad 0                       /* null descriptor */
    .quad 0x00af9a000000ffff      /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00cf92000000ffff      /* 0x10: data, DPL 0 */
boot_gdt_end:
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

/* Boot page tables, built by the assembler (no run-time loop): PML4[0] ->
 * PDPT[0] -> a PD of 512 2 MiB pages = physical 0..1 GiB mapped 1:1.
 * mm.c replaces them with tables sized to the memory map. */
    .section .data
    .balign 4096
boot_pml4:
    .quad boot_pdpt + (PTE_P | PTE_W)
    .fill 511, 8, 0
boot_pdpt:
    .quad boot_pd + (PTE_P | PTE_W)
    .fill 511, 8, 0
boot_pd:
    .set addr, 0
    .rept 512
    .quad addr + (PTE_P | PTE_W | PTE_PS)
    .set addr, addr + 0x200000
    .endr

/* The boot stack, which later becomes the shell's (process 0's) stack. */
    .section .bss
    .balign 16
    .globl boot_stack
boot_stack:
    .space BOOT_STACK_SIZE
    .globl boot_stack_top
boot_stack_top:
