/*
 * The Multiboot header and the first instructions of a student kernel.
 *
 * Multiboot Specification 0.6.96, 3.1: the header lies in the first 8 KiB of
 * the image, 4-byte aligned: magic, flags, checksum (the three sum to 0).
 * Built three times from this file:
 *   kernel.elf  an ELF32: the loader reads the program headers;
 *   kernel.bin  a flat binary (-DAOUT_KLUDGE): flags bit 16 says the five
 *               address fields after the checksum say where to load it (3.1.3);
 *   kernel2.elf an ELF32 with a Multiboot2 header instead (-DMULTIBOOT2;
 *               Multiboot2 Specification, "Header layout" and "Header tags").
 *
 * 3.2: the loader jumps to `start` in 32-bit protected mode, paging off,
 * interrupts off, EAX = 0x2BADB002, EBX = the Multiboot information
 * structure.  The stack pointer is undefined: set up our own first.
 */
#define MB_MAGIC        0x1BADB002
#define MB_PAGE_ALIGN   (1 << 0)        /* modules on page boundaries */
#define MB_MEMORY_INFO  (1 << 1)        /* we want mem_* and the memory map */
#define MB_AOUT_KLUDGE  (1 << 16)       /* the address fields below are valid */
#ifdef AOUT_KLUDGE
#define MB_FLAGS        (MB_PAGE_ALIGN | MB_MEMORY_INFO | MB_AOUT_KLUDGE)
#else
#define MB_FLAGS        (MB_PAGE_ALIGN | MB_MEMORY_INFO)
#endif

#define MB2_MAGIC       0xE85250D6
#define MB2_ARCH_I386   0               /* 32-bit protected mode */
#define MB2_TAG_END     0
#define MB2_TAG_INFO_REQUEST 1          /* boot information the kernel cannot do without */
#define MB2_INFO_BASIC_MEMINFO 4
#define MB2_INFO_MMAP   6

    .section .multiboot, "a"
#ifdef MULTIBOOT2
    .align 8
multiboot_header:
    .long MB2_MAGIC
    .long MB2_ARCH_I386
    .long header_end - multiboot_header
    .long -(MB2_MAGIC + MB2_ARCH_I386 + (header_end - multiboot_header))
    .align 8
    .short MB2_TAG_INFO_REQUEST, 0      /* type, flags (0: required) */
    .long 16                            /* size */
    .long MB2_INFO_BASIC_MEMINFO, MB2_INFO_MMAP
    .align 8
    .short MB2_TAG_END, 0
    .long 8
header_end:
#else
    .align 4
multiboot_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)
#ifdef AOUT_KLUDGE
    .long multiboot_header              /* header_addr: where these bytes are loaded */
    .long __image_start                 /* load_addr: the file's first byte goes here */
    .long __data_end                    /* load_end_addr: end of what the file holds */
    .long __bss_end                     /* bss_end_addr: zeroed up to here */
    .long start                         /* entry_addr */
#endif
#endif

    .text
    .code32
    .globl start
start:
    mov $stack_top, %esp
    push %ebx                           /* kmain(magic, info) */
    push %eax
    call kmain
halt:
    hlt                                 /* kmain powers off; if that fails, stop here */
    jmp halt

    .bss
    .align 16
    .space 16384
stack_top:
