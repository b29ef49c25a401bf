/*
 * A student's first kernel, as the OS tutorials write it: started by a
 * Multiboot loader (GRUB, `qemu -kernel`, `pykvm boot --kernel`), it prints
 * over the serial port what the loader told it, and powers the machine off.
 *
 * Multiboot Specification 0.6.96: 3.2 (machine state at entry), 3.3 (the
 * information structure); built with a Multiboot2 header instead (kernel2.elf)
 * it reads the Multiboot2 Specification's tagged boot information.  16550 UART: National Semiconductor PC16550D
 * datasheet.  Power off: QEMU's ACPI PM1a control register at 0x604.
 *
 * The command line may hold the word "mmap": then every memory map entry is
 * printed too.  Otherwise only what both QEMU and pykvm report the same way
 * is printed (SeaBIOS reserves a few more ranges than pykvm does), so the two
 * outputs can be compared line for line.
 */
#include <stdint.h>

#define BOOTLOADER_MAGIC 0x2BADB002u   /* 3.2: EAX at entry */
#define BOOTLOADER2_MAGIC 0x36D76289u  /* Multiboot2 "I386 machine state": EAX at entry */
#define MB2_TAG_END      0             /* Multiboot2 boot information tag types */
#define MB2_TAG_CMDLINE  1
#define MB2_TAG_MODULE   3
#define MB2_TAG_BASIC_MEMINFO 4
#define MB2_TAG_MMAP     6
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

/* What the loader told us, from either protocol's structure. */
#define MAX_RANGES  32
#define MAX_MODULES 8
struct boot_facts {
    const char *cmdline;
    int has_memory;
    uint32_t mem_lower, mem_upper;          /* KiB */
    uint32_t nranges, nmodules;
    struct { uint64_t base, length; uint32_t type; } ranges[MAX_RANGES];
    struct { uint32_t start, end; const char *string; } modules[MAX_MODULES];
};

static void add_range(struct boot_facts *f, uint64_t base, uint64_t length, uint32_t type)
{
    if (f->nranges < MAX_RANGES) {
        f->ranges[f->nranges].base = base;
        f->ranges[f->nranges].length = length;
        f->ranges[f->nranges++].type = type;
    }
}

static void add_module(struct boot_facts *f, uint32_t start, uint32_t end, const char *string)
{
    if (f->nmodules < MAX_MODULES) {
        f->modules[f->nmodules].start = start;
        f->modules[f->nmodules].end = end;
        f->modules[f->nmodules++].string = string;
    }
}

/* Multiboot 3.3: one structure whose flags say which fields are valid. */
static void read_multiboot1(struct boot_facts *f, const struct multiboot_info *info)
{
    f->cmdline = info->flags & INFO_CMDLINE ? (const char *)info->cmdline : "";
    if (info->flags & INFO_MEMORY) {
        f->has_memory = 1;
        f->mem_lower = info->mem_lower;
        f->mem_upper = info->mem_upper;
    }
    if (info->flags & INFO_MMAP) {
        for (uint32_t addr = info->mmap_addr; addr < info->mmap_addr + info->mmap_length;) {
            const struct multiboot_mmap_entry *e = (const void *)addr;
            add_range(f, e->base, e->length, e->type);
            addr += e->size + sizeof(e->size);
        }
    }
    const struct multiboot_module *mod = (const void *)info->mods_addr;
    for (uint32_t i = 0; info->flags & INFO_MODS && i < info->mods_count; i++, mod++)
        add_module(f, mod->start, mod->end, (const char *)mod->string);
}

/* Multiboot2 "Boot information format": total size, reserved, then 8-byte aligned tags. */
static void read_multiboot2(struct boot_facts *f, const uint8_t *info)
{
    const uint8_t *end = info + *(const uint32_t *)info;
    f->cmdline = "";
    for (const uint8_t *tag = info + 8; tag < end;) {
        const uint32_t *t = (const uint32_t *)tag;      /* type, size, then the body */
        if (t[0] == MB2_TAG_END)
            break;
        if (t[0] == MB2_TAG_CMDLINE)
            f->cmdline = (const char *)&t[2];
        else if (t[0] == MB2_TAG_MODULE)
            add_module(f, t[2], t[3], (const char *)&t[4]);
        else if (t[0] == MB2_TAG_BASIC_MEMINFO) {
            f->has_memory = 1;
            f->mem_lower = t[2];
            f->mem_upper = t[3];
        } else if (t[0] == MB2_TAG_MMAP && t[2] >= 20) {     /* t[2]: entry size */
            for (const uint8_t *e = tag + 16; e < tag + t[1]; e += t[2]) {
                const uint64_t *range = (const uint64_t *)e;
                add_range(f, range[0], range[1], *(const uint32_t *)(e + 16));
            }
        }
        if (t[1] < 8)
            break;                                          /* a broken tag: stop reading */
        tag += (t[1] + 7) & ~7u;
    }
}

static void show_memory_map(const struct boot_facts *f, int verbose)
{
    uint64_t usable = 0;
    uint32_t regions = 0;
    for (uint32_t i = 0; i < f->nranges; i++) {
        if (verbose) {
            puts("  ");
            puthex(f->ranges[i].base, 9);
            puts("-");
            puthex(f->ranges[i].base + f->ranges[i].length - 1, 9);
            puts(f->ranges[i].type == MMAP_RAM ? " usable\n" : " reserved\n");
        }
        if (f->ranges[i].type == MMAP_RAM) {
            usable += f->ranges[i].length;
            regions++;
        }
    }
    puts("memory map: ");
    putdec((uint32_t)(usable >> MIB_SHIFT));
    puts(" MiB usable in ");
    putdec(regions);
    puts(" regions\n");
}

static void show_modules(const struct boot_facts *f)
{
    puts("modules: ");
    putdec(f->nmodules);
    puts("\n");
    for (uint32_t i = 0; i < f->nmodules; i++) {
        puts("  '");
        puts(f->modules[i].string);
        puts("' ");
        putdec(f->modules[i].end - f->modules[i].start);
        puts(" bytes, starts with '");
        for (const char *c = (const char *)f->modules[i].start;
             c < (const char *)f->modules[i].end && *c >= ' '; c++)
            putc(*c);
        puts("'\n");
    }
}

static struct boot_facts facts;

void kmain(uint32_t magic, const void *info)
{
    outb(COM1 + UART_LCR, LCR_8N1);
    puts("hello from a Multiboot kernel\n");
    if (magic == BOOTLOADER_MAGIC) {
        read_multiboot1(&facts, info);
    } else if (magic == BOOTLOADER2_MAGIC) {
        puts("(Multiboot2)\n");
        read_multiboot2(&facts, info);
    } else {
        puts("not started by a Multiboot loader: EAX = ");
        puthex(magic, 8);
        puts("\n");
        return;
    }
    puts("command line: '");
    puts(facts.cmdline);
    puts("'\n");
    if (facts.has_memory) {
        /* Upper memory to the nearest MiB: SeaBIOS keeps 128 KiB at its top for itself. */
        puts("lower memory: ");
        putdec(facts.mem_lower);
        puts(" KiB, upper memory: ");
        putdec((facts.mem_upper + KIB_PER_MIB / 2) / KIB_PER_MIB);
        puts(" MiB\n");
    }
    show_memory_map(&facts, contains_word(facts.cmdline, "mmap"));
    show_modules(&facts);
    puts("powering off\n");
    outw(ACPI_PM1A_CNT, PM1_SLP_EN);
}
