/*
 * virtq.c: the split virtqueue, the memory a driver and a device share
 * (virtio 1.2, 2.7 "Split Virtqueues").  Three parts, all in guest RAM:
 *
 *   descriptor table  (2.7.5)  size x {addr, len, flags, next}: the buffers
 *   available ring    (2.7.6)  the driver's list of chains for the device
 *   used ring         (2.7.8)  the device's list of chains it has finished
 *
 * A request is a chain of descriptors linked by `next`: first the buffers
 * the device reads, then those it writes (2.7.4.2).  The driver puts the
 * chain's head in the available ring and bumps avail->idx; the device puts
 * the head and the number of bytes it wrote in the used ring and bumps
 * used->idx.  Both indexes only grow (mod 2^16); the slot is idx % size.
 *
 * With VIRTQ_SIZE 16 all three fit one 4 KiB page, at offsets that meet
 * the alignment of 2.7 (16 for descriptors, 2 for avail, 4 for used):
 *
 *   page + 0      descriptor table, 16 x 16 bytes
 *   page + 256    available ring, 4 + 16 x 2 + 2 bytes
 *   page + 512    used ring, 4 + 16 x 8 + 2 bytes
 *
 * The kernel maps RAM 1:1, so a pointer is also the physical address the
 * device needs.  Neither VIRTIO_F_EVENT_IDX nor indirect descriptors are
 * negotiated: the driver notifies on every request.
 */
#include "defs.h"
#include "virtio.h"

#define VIRTQ_DESC_F_NEXT  1       /* `next` continues the chain           */
#define VIRTQ_DESC_F_WRITE 2       /* the device writes this buffer        */
#define VIRTQ_AVAIL_OFFSET 256
#define VIRTQ_USED_OFFSET  512
#define VIRTQ_NO_DESC      0xffff  /* end of the free list                 */

struct virtq_desc {                /* 2.7.5 */
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct virtq_avail {               /* 2.7.6 */
    uint16_t flags;
    uint16_t idx;                  /* where the driver puts the next entry */
    uint16_t ring[VIRTQ_SIZE];     /* heads of descriptor chains           */
};

struct virtq_used_elem {           /* 2.7.8 */
    uint32_t id;                   /* head of the finished chain           */
    uint32_t len;                  /* bytes the device wrote into it       */
};

struct virtq_used {
    uint16_t flags;
    uint16_t idx;                  /* where the device puts the next entry */
    struct virtq_used_elem ring[VIRTQ_SIZE];
};

/* The driver's side of one queue: the shared page and what only the
 * driver knows (which descriptors are free, how far it has read). */
struct virtq {
    int size;
    struct virtq_desc *desc;
    volatile struct virtq_avail *avail;
    volatile struct virtq_used *used;
    uint16_t free_head;            /* free descriptors, linked by `next`   */
    int num_free;
    uint16_t last_used;            /* used->idx the driver has seen up to  */
};

static struct virtq queues[VIRTIO_MAX_DEVICES];
static int nqueues;

/* The compiler must not move ring accesses across this point.  x86 keeps
 * stores in order and loads in order (SDM Vol. 3A, 9.2.2), so this is all
 * the "memory barrier" 2.7.13 asks for between the ring and the index. */
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }

/* A queue with a zeroed page; the transport sets its size. */
struct virtq *virtq_alloc(void)
{
    if (nqueues == VIRTIO_MAX_DEVICES)
        return NULL;
    uint8_t *page = kalloc();
    if (!page)
        return NULL;
    struct virtq *vq = &queues[nqueues++];
    vq->desc = (struct virtq_desc *)page;
    vq->avail = (struct virtq_avail *)(page + VIRTQ_AVAIL_OFFSET);
    vq->used = (struct virtq_used *)(page + VIRTQ_USED_OFFSET);
    virtq_set_size(vq, VIRTQ_SIZE);
    return vq;
}

/* Use `size` descriptors (a power of 2 up to VIRTQ_SIZE, 2.7: "Queue Size")
 * and put them all on the free list. */
void virtq_set_size(struct virtq *vq, int size)
{
    vq->size = size;
    for (int i = 0; i < size; i++)
        vq->desc[i].next = i + 1 < size ? i + 1 : VIRTQ_NO_DESC;
    vq->free_head = 0;
    vq->num_free = size;
    vq->last_used = 0;
}

int virtq_size(const struct virtq *vq) { return vq->size; }
uint64_t virtq_desc_addr(const struct virtq *vq) { return (uint64_t)vq->desc; }
uint64_t virtq_avail_addr(const struct virtq *vq) { return (uint64_t)vq->avail; }
uint64_t virtq_used_addr(const struct virtq *vq) { return (uint64_t)vq->used; }

/* Offer the device a chain of n buffers (device-readable ones first).
 * Returns the head descriptor's index, or -1 when too few are free.  The
 * caller then kicks the device (virtio_notify). */
int virtq_add(struct virtq *vq, const struct virtq_buf *bufs, int n)
{
    if (n < 1 || n > vq->num_free)
        return -1;
    uint16_t head = vq->free_head, i = head, last = head;
    for (int k = 0; k < n; k++) {
        struct virtq_desc *d = &vq->desc[i];
        d->addr = (uint64_t)bufs[k].addr;
        d->len = bufs[k].len;
        d->flags = (bufs[k].device_writes ? VIRTQ_DESC_F_WRITE : 0) |
                   (k + 1 < n ? VIRTQ_DESC_F_NEXT : 0);
        last = i;
        i = d->next;               /* the free list's next is the chain's next */
    }
    vq->free_head = vq->desc[last].next;
    vq->desc[last].next = 0;
    vq->num_free -= n;

    vq->avail->ring[vq->avail->idx % vq->size] = head;   /* 2.7.13.2 */
    barrier();                     /* the entry before the index (2.7.13.3) */
    vq->avail->idx++;
    return head;
}

/* Put a finished chain back on the free list. */
static void free_chain(struct virtq *vq, uint16_t head)
{
    uint16_t i = head;
    int n = 1;
    while (vq->desc[i].flags & VIRTQ_DESC_F_NEXT) {
        i = vq->desc[i].next;
        n++;
    }
    vq->desc[i].next = vq->free_head;
    vq->free_head = head;
    vq->num_free += n;
}

/* The next chain the device finished (2.7.14): its head, with the bytes
 * the device wrote in *len; -1 if there is none yet. */
int virtq_used(struct virtq *vq, uint32_t *len)
{
    if (vq->last_used == vq->used->idx)
        return -1;
    barrier();                     /* read the index before the entry */
    struct virtq_used_elem e = vq->used->ring[vq->last_used % vq->size];
    vq->last_used++;
    if (e.id >= (uint32_t)vq->size)
        panic("virtq: the device returned descriptor %u of %d", e.id, vq->size);
    *len = e.len;
    free_chain(vq, e.id);
    return e.id;
}
