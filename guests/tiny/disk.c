/*
 * disk.c: the shell's disk commands, on the virtio-blk driver.
 *
 *   disk                     every disk: capacity, read-only flag, ID
 *   dread [vdX] N            the first 64 bytes of sector N, in hex
 *   dwrite [vdX] N TEXT..    sector N := TEXT, zero-filled, then FLUSH
 *   dbench [vdX] seq MIB     read MIB MiB in a row, 1 MiB per request
 *   dbench [vdX] rand N      N reads of 4 KiB at pseudo-random 4 KiB offsets
 *
 * The disk defaults to vda.  Requests the device should refuse (a sector
 * past the end, a write to a read-only disk) are sent anyway: the device
 * checks them (5.2.6.2), and the status byte it answers is printed.
 */
#include "defs.h"
#include "memlayout.h"
#include "virtio.h"

#define DUMP_BYTES     64
#define DUMP_PER_LINE  16
#define BENCH_SEQ_SECTORS  2048                /* 1 MiB per sequential read  */
#define BENCH_RAND_SECTORS 8                   /* 4 KiB per random read      */
#define BENCH_SEED     0x2545f4914f6cdd1dULL   /* the same offsets every run */

/* A decimal number that fits 64 bits; 0, or -1 if s is not one. */
static int parse_u64(const char *s, uint64_t *v)
{
    *v = 0;
    if (!*s)
        return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || *v > (UINT64_MAX - 9) / 10)
            return -1;
        *v = *v * 10 + (*s - '0');
    }
    return 0;
}

/* "[vdX] N ...": the disk and sector; *used = words consumed.  NULL after
 * printing why not. */
static struct disk *disk_and_sector(const char *cmd, int argc, char **argv, uint64_t *sector,
                                    int *used)
{
    struct disk *dk = disk_get(0);
    int i = 1;

    if (argc > 1 && argv[1][0] == 'v' && argv[1][1] == 'd') {
        dk = disk_find(argv[1]);
        i = 2;
    }
    if (!dk) {
        kprintf("%s: no such disk (try 'disk')\n", cmd);
        return NULL;
    }
    if (i >= argc || parse_u64(argv[i], sector) != 0) {
        kprintf("%s: want a sector number\n", cmd);
        return NULL;
    }
    *used = i + 1;
    return dk;
}

/* Why the device may have refused: what the driver knows about the disk. */
static void report_error(const char *cmd, struct disk *dk, uint64_t sector, int status)
{
    kprintf("%s: %s sector %lu: %s", cmd, dk->name, sector, blk_status_name(status));
    if (sector >= dk->capacity)
        kprintf(" (past the end: the disk has %lu sectors)", dk->capacity);
    else if (dk->readonly && cmd[1] == 'w')
        kprintf(" (the disk is read-only: VIRTIO_BLK_F_RO)");
    kprintf("\n");
}

void cmd_disk(int argc, char **argv)
{
    (void)argc, (void)argv;
    if (disk_count() == 0)
        kprintf("no disks (the VMM names them on the command line: "
                "virtio_mmio.device=SIZE@BASE:IRQ)\n");
    for (int i = 0; i < disk_count(); i++) {
        struct disk *dk = disk_get(i);
        kprintf("%s: %lu sectors (%lu KiB), %s%s, id '%s'\n", dk->name, dk->capacity,
                dk->capacity * SECTOR_SIZE >> 10, dk->readonly ? "read-only" : "read-write",
                dk->can_flush ? ", flush" : "", dk->id);
        kprintf("     virtio-mmio at %lx, irq %d, ", dk->dev->base, dk->dev->irq);
        if (dk->polled)
            kprintf("polled (no 8259 pin for it)\n");
        else
            kprintf("interrupts: %lu\n", dk->dev->interrupts);
    }
}

static void hexdump(const uint8_t *p, int n)
{
    for (int off = 0; off < n; off += DUMP_PER_LINE) {
        kprintf("%04x ", off);
        for (int i = 0; i < DUMP_PER_LINE; i++)
            kprintf(" %02x", p[off + i]);
        kprintf("  |");
        for (int i = 0; i < DUMP_PER_LINE; i++)
            serial_putc(p[off + i] >= ' ' && p[off + i] < 0x7f ? p[off + i] : '.');
        kprintf("|\n");
    }
}

void cmd_dread(int argc, char **argv)
{
    uint8_t buf[SECTOR_SIZE];
    uint64_t sector;
    int used;
    struct disk *dk = disk_and_sector("dread", argc, argv, &sector, &used);

    if (!dk)
        return;
    int status = disk_read(dk, sector, buf, 1);
    if (status != VIRTIO_BLK_S_OK) {
        report_error("dread", dk, sector, status);
        return;
    }
    kprintf("%s sector %lu:\n", dk->name, sector);
    hexdump(buf, DUMP_BYTES);
}

void cmd_dwrite(int argc, char **argv)
{
    uint8_t buf[SECTOR_SIZE];
    uint64_t sector;
    int used, n = 0;
    struct disk *dk = disk_and_sector("dwrite", argc, argv, &sector, &used);

    if (!dk)
        return;
    memset(buf, 0, sizeof(buf));
    for (int i = used; i < argc; i++) {          /* the words, joined by one space */
        size_t len = strlen(argv[i]);
        if (n + len + 1 > sizeof(buf))
            break;
        if (i > used)
            buf[n++] = ' ';
        memcpy(buf + n, argv[i], len);
        n += len;
    }
    int status = disk_write(dk, sector, buf);
    if (status == VIRTIO_BLK_S_OK)
        status = disk_flush(dk);
    if (status != VIRTIO_BLK_S_OK) {
        report_error("dwrite", dk, sector, status);
        return;
    }
    kprintf("%s: wrote sector %lu (%d bytes of text, zero-filled)%s\n", dk->name, sector, n,
            dk->can_flush ? ", flushed" : "");
}

/* xorshift64 (Marsaglia, 2003): offsets that are the same on every VMM. */
static uint64_t next_random(uint64_t *state)
{
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return *state;
}

/* Time `n` reads of `per` sectors each: in a row (wrapping at the end of
 * the disk) or at random request-aligned offsets.  The guest's own clock
 * is the timer tick, 10 ms: run enough requests for a few hundred ticks. */
static void bench(struct disk *dk, int sequential, uint64_t n, uint32_t per, uint8_t *buf)
{
    uint64_t slots = dk->capacity / per, state = BENCH_SEED, start = ticks;

    for (uint64_t i = 0; i < n; i++) {
        uint64_t sector = (sequential ? i % slots : next_random(&state) % slots) * per;
        int status = disk_read(dk, sector, buf, per);
        if (status != VIRTIO_BLK_S_OK) {
            report_error("dbench", dk, sector, status);
            return;
        }
    }
    uint64_t elapsed = ticks - start, kib = n * per * SECTOR_SIZE >> 10;
    kprintf("dbench: %lu reads of %u KiB from %s in %lu ticks", n, per * SECTOR_SIZE >> 10,
            dk->name, elapsed);
    if (elapsed)
        kprintf(" (%lu KiB/s)", kib * TIMER_HZ / elapsed);
    kprintf("\n");
}

void cmd_dbench(int argc, char **argv)
{
    static uint8_t *buf;           /* 1 MiB, physically contiguous: one descriptor */
    struct disk *dk = disk_get(0);
    uint64_t n;
    int i = 1;

    if (argc > 1 && argv[1][0] == 'v' && argv[1][1] == 'd')
        dk = disk_find(argv[i++]);
    if (!dk) {
        kprintf("dbench: no such disk (try 'disk')\n");
        return;
    }
    int sequential = i < argc && strcmp(argv[i], "seq") == 0;
    if (i + 2 != argc || (!sequential && strcmp(argv[i], "rand") != 0) ||
        parse_u64(argv[i + 1], &n) != 0) {
        kprintf("dbench: want 'seq MIB' or 'rand COUNT'\n");
        return;
    }
    uint32_t per = sequential ? BENCH_SEQ_SECTORS : BENCH_RAND_SECTORS;
    if (dk->capacity < per) {
        kprintf("dbench: %s is smaller than one %u-byte read\n", dk->name, per * SECTOR_SIZE);
        return;
    }
    if (!buf && !(buf = kalloc_contiguous(BENCH_SEQ_SECTORS * SECTOR_SIZE / PAGE_SIZE))) {
        kprintf("dbench: no 1 MiB of contiguous memory\n");
        return;
    }
    bench(dk, sequential, n, per, buf);
}
