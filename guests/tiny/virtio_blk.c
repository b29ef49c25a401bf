/*
 * virtio_blk.c: the virtio block device driver (virtio 1.2, 5.2).
 *
 * One queue, requestq (5.2.2).  Every request is a chain of three
 * descriptors (5.2.6 "Device Operation"):
 *
 *   [0] header  {type, reserved, sector}   16 bytes, the device reads it
 *   [1] data    the sector(s)              device writes it for IN (a read),
 *                                          reads it for OUT (a write)
 *   [2] status  one byte                   the device writes OK/IOERR/UNSUPP
 *
 * FLUSH has no data descriptor; GET_ID's data is 20 bytes of ID string.
 * The data buffer is the caller's own memory (RAM is mapped 1:1, so its
 * address is the physical address): the device copies straight into it.
 *
 * tiny issues one request at a time and waits for it (disk_request): it
 * halts until an interrupt and looks at the used ring again.  The device's
 * interrupt (virtio_mmio.c) makes that immediate; without one, the timer
 * tick does it within 10 ms.
 */
#include "defs.h"
#include "virtio.h"
#include "x86.h"

/* 5.2.3 Feature bits */
#define VIRTIO_BLK_F_RO       5    /* the device is read-only            */
#define VIRTIO_BLK_F_FLUSH    9    /* the device has a write-back cache: FLUSH works */

/* 5.2.4 Device configuration layout: offsets in the config space */
#define VIRTIO_BLK_CFG_CAPACITY 0  /* le64: size in 512-byte sectors    */

/* 5.2.6 request types */
#define VIRTIO_BLK_T_IN       0    /* read sectors                      */
#define VIRTIO_BLK_T_OUT      1    /* write sectors                     */
#define VIRTIO_BLK_T_FLUSH    4    /* write the device's cache to stable storage */
#define VIRTIO_BLK_T_GET_ID   8    /* the device's ID string            */

#define REQUEST_QUEUE         0
#define TIMEOUT_S             10   /* a request not answered by then fails the disk */

struct virtio_blk_req_header {     /* 5.2.6: the first, device-readable part */
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
};

static struct disk disks[MAX_DISKS];
static int ndisks;

/* The header and status byte of the request in flight, one per disk. */
static struct {
    struct virtio_blk_req_header header;
    uint8_t status;
} requests[MAX_DISKS];

int disk_count(void) { return ndisks; }
struct disk *disk_get(int index) { return index >= 0 && index < ndisks ? &disks[index] : NULL; }

struct disk *disk_find(const char *name)
{
    for (int i = 0; i < ndisks; i++)
        if (strcmp(disks[i].name, name) == 0)
            return &disks[i];
    return NULL;
}

const char *blk_status_name(int status)
{
    switch (status) {
    case VIRTIO_BLK_S_OK: return "OK";
    case VIRTIO_BLK_S_IOERR: return "IOERR";
    case VIRTIO_BLK_S_UNSUPP: return "UNSUPP";
    case BLK_NO_ANSWER: return "no answer from the device";
    default: return "a status the spec does not define";
    }
}

/* Halt until the device has used our chain; 0, or -1 after TIMEOUT_S. */
static int wait_used(struct disk *dk)
{
    uint32_t len;
    uint64_t deadline = ticks + TIMEOUT_S * TIMER_HZ;

    for (;;) {
        cli();                     /* check and halt with no interrupt in between */
        if (virtq_used(dk->vq, &len) >= 0)
            break;
        if (ticks >= deadline) {
            sti();
            return -1;
        }
        wait_for_interrupt();      /* returns with interrupts on */
    }
    sti();
    return 0;
}

/* Send one request (header, optional data, status) and wait for its
 * status byte.  data_len 0: no data descriptor. */
static int disk_request(struct disk *dk, uint32_t type, uint64_t sector, void *data,
                        uint32_t data_len, int device_writes_data)
{
    if (!dk->vq)
        return BLK_NO_ANSWER;
    int slot = dk - disks;
    requests[slot].header = (struct virtio_blk_req_header){ type, 0, sector };
    requests[slot].status = BLK_NO_ANSWER;
    struct virtq_buf bufs[3] = { { &requests[slot].header, sizeof(requests[slot].header), 0 } };
    int n = 1;
    if (data_len)
        bufs[n++] = (struct virtq_buf){ data, data_len, device_writes_data };
    bufs[n++] = (struct virtq_buf){ &requests[slot].status, 1, 1 };

    if (virtq_add(dk->vq, bufs, n) < 0)
        panic("%s: no free descriptors with one request at a time", dk->name);
    virtio_notify(dk->dev, REQUEST_QUEUE);
    if (wait_used(dk) != 0) {
        virtio_fail(dk->dev, "no answer to a request: giving up on the disk");
        dk->vq = NULL;             /* its descriptors stay with the device */
        return BLK_NO_ANSWER;
    }
    return *(volatile uint8_t *)&requests[slot].status;
}

/* Read `count` sectors into buf (physically contiguous), or write one
 * sector; returns the status byte. */
int disk_read(struct disk *dk, uint64_t sector, void *buf, uint32_t count)
{
    return disk_request(dk, VIRTIO_BLK_T_IN, sector, buf, count * SECTOR_SIZE, 1);
}

int disk_write(struct disk *dk, uint64_t sector, const void *buf)
{
    return disk_request(dk, VIRTIO_BLK_T_OUT, sector, (void *)buf, SECTOR_SIZE, 0);
}

/* Make written sectors durable (5.2.6.2: FLUSH).  Without
 * VIRTIO_BLK_F_FLUSH the device writes through: nothing to do. */
int disk_flush(struct disk *dk)
{
    if (!dk->can_flush)
        return VIRTIO_BLK_S_OK;
    return disk_request(dk, VIRTIO_BLK_T_FLUSH, 0, NULL, 0, 0);
}

/* The ID string (GET_ID), or "" if the device has none. */
static void read_id(struct disk *dk)
{
    char id[VIRTIO_BLK_ID_BYTES];
    memset(id, 0, sizeof(id));
    if (disk_request(dk, VIRTIO_BLK_T_GET_ID, 0, id, sizeof(id), 1) == VIRTIO_BLK_S_OK)
        memcpy(dk->id, id, sizeof(id));
    dk->id[VIRTIO_BLK_ID_BYTES] = 0;
}

/* Bring a block device to DRIVER_OK (virtio_mmio.c lists the steps). */
void virtio_blk_attach(struct virtio_dev *d)
{
    if (ndisks == MAX_DISKS)
        return;
    struct disk *dk = &disks[ndisks];
    uint64_t wanted = 1ULL << VIRTIO_BLK_F_RO | 1ULL << VIRTIO_BLK_F_FLUSH;

    if (virtio_negotiate(d, wanted) != 0)                       /* steps 1-6 */
        return;
    dk->vq = virtq_alloc();                                     /* step 7 */
    if (!dk->vq || virtio_queue_setup(d, REQUEST_QUEUE, dk->vq) != 0) {
        virtio_fail(d, "no request queue");
        return;
    }
    dk->dev = d;
    dk->name[0] = 'v', dk->name[1] = 'd', dk->name[2] = 'a' + ndisks, dk->name[3] = 0;
    dk->capacity = virtio_config64(d, VIRTIO_BLK_CFG_CAPACITY);
    dk->readonly = (d->features >> VIRTIO_BLK_F_RO) & 1;
    dk->can_flush = (d->features >> VIRTIO_BLK_F_FLUSH) & 1;
    dk->polled = virtio_enable_interrupt(d) != 0;
    virtio_driver_ok(d);                                        /* step 8 */
    ndisks++;
    read_id(dk);
    kprintf("virtio-blk %s: %lu sectors, %s, at %lx irq %d%s\n", dk->name, dk->capacity,
            dk->readonly ? "read-only" : "read-write", d->base, d->irq,
            dk->polled ? " (polled)" : "");
}
