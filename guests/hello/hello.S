/*
 * guests/hello: the smallest PVH guest.  It prints a greeting on the 16550
 * UART at COM1 and powers the machine off.  It boots on pykvm and, unchanged,
 * on `qemu-system-x86_64 -M pc -kernel hello.elf`.
 *
 * PVH boot (xen/include/public/arch-x86/hvm/start_info.h): the VMM enters at
 * the address in the ELF note XEN_ELFNOTE_PHYS32_ENTRY, in 32-bit protected
 * mode with paging off, flat 4 GiB segments, %ebx = address of hvm_start_info.
 */
#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define COM1        0x3f8            /* 16550 base port                      */
#define COM1_LSR    (COM1 + 5)       /* Line Status Register                 */
#define LSR_THRE    0x20             /* LSR bit 5: transmit holding reg empty */
#define ACPI_PM1A_CNT 0x604          /* QEMU's (and pykvm's) PM1a control port */
#define PM1_SLP_EN  0x2000           /* PM1 control bit 13: sleep enable; type 0 = S5 (off) */

    .section .note.Xen, "a"
    .balign 4
    .long 4                          /* namesz: "Xen\0" */
    .long 4                          /* descsz */
    .long XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .long _start                     /* entry, physical address */

    .section .text
    .code32
    .globl _start
_start:
    mov $greeting, %esi
next_char:
    lodsb                            /* %al = *%esi++ */
    test %al, %al
    jz power_off
    mov %al, %cl
    mov $COM1_LSR, %dx
wait_thre:
    inb %dx, %al
    test $LSR_THRE, %al
    jz wait_thre
    mov $COM1, %dx
    mov %cl, %al
    outb %al, %dx
    jmp next_char

power_off:
    mov $ACPI_PM1A_CNT, %dx
    mov $PM1_SLP_EN, %ax
    outw %ax, %dx
    hlt                              /* not reached on pykvm or QEMU */
    jmp power_off

    .section .rodata
greeting:
    .asciz "Hello from a PVH guest on pykvm!\r\n"
