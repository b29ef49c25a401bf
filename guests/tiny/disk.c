/*
 * disk.c: the shell's disk commands, on the virtio-blk driver.
 *
 *   disk                     every disk: capacity, read-only flag, ID
 *   dread [vdX] N            the first 64 bytes of sector N, in hex
 *   dwrite [vdX] N TEXT..    sector N := TEXT, zero-filled, then FLUSH
 *
 * The disk defaults to vda.  Requests the device should refuse (a sector
 * past the end, a write to a read-only disk) are sent anyway: the device
 * checks them (5.2.6.2), and the status byte it answers is printed.
 */
#include "defs.h"
#include "virtio.h"

#define DUMP_BYTES     64
#define DUMP_PER_LINE  16

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
    int status = disk_read(dk, sector, buf);
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
