/*
 * A student's first kernel, as the OS tutorials write it: started by a
 * Multiboot loader (GRUB, `qemu -kernel`, `pykvm boot --kernel`), it prints
 * over the serial port what the loader told it, and powers the machine off.
 *
 * Multiboot Specification 0.6.96: 3.2 (machine state at entry), 3.3 (the
 * information structure).  16550 UART: National Semiconductor PC16550D
 * datasheet.  Power off: QEMU's ACPI PM1a control register at 0x604.
 *
 * The command line may hold the word "mmap": then every memory map entry is
 * printed too.  Otherwise only what both QEMU and pykvm report the same way
 * is printed (SeaBIOS reserves a few more ranges than pykvm does), so the two
 * outputs can be compared line for line.
 */
#include <stdint.h>

#define BOOTLOADER_MAGIC 0x2BADB002u   /* 3.2: EAX at entry */
#define INFO_MEMORY      (1u << 0)     /* 3.3 flags: mem_lower/mem_upper valid */
#define INFO_CMDLINE     (1u << 2)     /* cmdline valid */
#define INFO_MODS        (1u << 3)     /* mods_count/mods_addr valid */
#define INFO_MMAP        (1u << 6)     /* mmap_length/mmap_addr valid */
#define MMAP_RAM         1             /* memory map type: usable RAM */

#define COM1       0x3F8               /* first serial port */
#define UART_LSR   5                   /* line status register */
#define LSR_THRE   0x20                /* transmit holding register empty */
#define UART_LCR   3                   /* line control register */
#define LCR_8N1    0x03                /* 8 data bits, no parity, 1 stop bit */
#define ACPI_PM1A_CNT 0x604            /* QEMU pc: PM base 0x600 + 4 */
#define PM1_SLP_EN    0x2000           /* SLP_EN with SLP_TYP 0 = S5, soft off */
#define MIB_SHIFT  20
#define KIB_PER_MIB 1024

struct multiboot_info {                /* 3.3, the fields this kernel reads */
    uint32_t flags, mem_lower, mem_upper, boot_device, cmdline;
    uint32_t mods_count, mods_addr;
    uint32_t syms[4];
    uint32_t mmap_length, mmap_addr;
};

struct multiboot_module {              /* 3.3 "Boot modules" */
    uint32_t start, end, string, reserved;
};

struct multiboot_mmap_entry {          /* 3.3 "Memory map"; `size` does not count itself */
    uint32_t size;
    uint64_t base, length;
    uint32_t type;
} __attribute__((packed));

static inline void outb(uint16_t port, uint8_t value)
{
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static inline void outw(uint16_t port, uint16_t value)
{
    __asm__ volatile("outw %0, %1" : : "a"(value), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

static void putc(char c)
{
    if (c == '\n')
        putc('\r');
    while (!(inb(COM1 + UART_LSR) & LSR_THRE))
        ;
    outb(COM1, c);
}

static void puts(const char *s)
{
    while (*s)
        putc(*s++);
}

static void putdec(uint32_t n)
{
    char digits[10];
    int i = 0;
    do {
        digits[i++] = '0' + n % 10;
        n /= 10;
    } while (n);
    while (i)
        putc(digits[--i]);
}

static void puthex(uint64_t n, int width)
{
    puts("0x");
    for (int shift = 4 * (width - 1); shift >= 0; shift -= 4)
        putc("0123456789abcdef"[(n >> shift) & 0xF]);
}

static int contains_word(const char *s, const char *word)
{
    for (; *s; s++) {
        int i = 0;
        while (word[i] && s[i] == word[i])
            i++;
        if (!word[i])
            return 1;
    }
    return 0;
}

static void show_memory_map(const struct multiboot_info *info, int verbose)
{
    uint64_t usable = 0;
    uint32_t regions = 0;
    uint32_t addr = info->mmap_addr, end = info->mmap_addr + info->mmap_length;
    while (addr < end) {
        const struct multiboot_mmap_entry *e = (const void *)addr;
        if (verbose) {
            puts("  ");
            puthex(e->base, 9);
            puts("-");
            puthex(e->base + e->length - 1, 9);
            puts(e->type == MMAP_RAM ? " usable\n" : " reserved\n");
        }
        if (e->type == MMAP_RAM) {
            usable += e->length;
            regions++;
        }
        addr += e->size + sizeof(e->size);
    }
    puts("memory map: ");
    putdec((uint32_t)(usable >> MIB_SHIFT));
    puts(" MiB usable in ");
    putdec(regions);
    puts(" regions\n");
}

static void show_modules(const struct multiboot_info *info)
{
    const struct multiboot_module *mod = (const void *)info->mods_addr;
    puts("modules: ");
    putdec(info->mods_count);
    puts("\n");
    for (uint32_t i = 0; i < info->mods_count; i++, mod++) {
        puts("  '");
        puts((const char *)mod->string);
        puts("' ");
        putdec(mod->end - mod->start);
        puts(" bytes, starts with '");
        for (const char *c = (const char *)mod->start; c < (const char *)mod->end && *c >= ' '; c++)
            putc(*c);
        puts("'\n");
    }
}

void kmain(uint32_t magic, const struct multiboot_info *info)
{
    outb(COM1 + UART_LCR, LCR_8N1);
    puts("hello from a Multiboot kernel\n");
    if (magic != BOOTLOADER_MAGIC) {
        puts("not started by a Multiboot loader: EAX = ");
        puthex(magic, 8);
        puts("\n");
        return;
    }
    const char *cmdline = info->flags & INFO_CMDLINE ? (const char *)info->cmdline : "";
    puts("command line: '");
    puts(cmdline);
    puts("'\n");
    if (info->flags & INFO_MEMORY) {
        /* Upper memory to the nearest MiB: SeaBIOS keeps 128 KiB at its top for itself. */
        puts("lower memory: ");
        putdec(info->mem_lower);
        puts(" KiB, upper memory: ");
        putdec((info->mem_upper + KIB_PER_MIB / 2) / KIB_PER_MIB);
        puts(" MiB\n");
    }
    if (info->flags & INFO_MMAP)
        show_memory_map(info, contains_word(cmdline, "mmap"));
    if (info->flags & INFO_MODS)
        show_modules(info);
    puts("powering off\n");
    outw(ACPI_PM1A_CNT, PM1_SLP_EN);
}
