/* A split virtqueue's descriptor chain, walked in C; and vectored I/O between
 * a file and guest RAM.  (virtio 1.2, 2.7.5 "The Virtqueue Descriptor Table"
 * and 2.7.5.3 "Indirect Descriptors".)
 *
 * queue.py's SplitQueue.read_chain is the walk in Python, and says why each
 * rule is there; virtq_read_chain below is that function step for step.  It
 * exists for one place: a 1 MiB virtio-blk read arrives as 254 page-sized
 * descriptors, and Python spends some 10 times longer on them (a tuple, a
 * bounds check and a memoryview each) than preadv spends moving the data.
 * Both walks run on the same hostile rings in tests/unit/test_virtq_walk_c.py
 * and must give the same chain, or both refuse it.
 *
 * Everything here is read from guest memory, so nothing is trusted: each
 * descriptor is read once into a local copy before any check; every buffer
 * must lie inside one region of guest RAM (checked by subtraction, so no sum
 * can wrap); a chain takes at most as many steps through a table as the
 * table has entries; an indirect table must fit in guest RAM and may not hold
 * another.  On any broken rule the walk returns a negative number and writes
 * nothing the caller uses: queue.py then walks the chain again in Python to
 * name what is wrong.
 *
 * Compiled into pykvm.vm.kvm._kvm_cffi by pykvm/vm/kvm/_build.py.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

/* One region of guest RAM (memory.py's MemoryRegion): guest [guest_addr,
 * guest_addr + size) is host [host, host + size). */
struct guest_ram {
    uint64_t guest_addr;
    uint64_t size;
    unsigned char *host;
};

/* One buffer of a chain, after adjacent ones were joined: guest address, length. */
struct virtq_piece {
    uint64_t addr;
    uint64_t len;
};

/* What virtq_read_chain says of a chain besides its pieces. */
struct virtq_chain_info {
    unsigned readable;                 /* how many of the pieces are device-readable */
    uint64_t readable_length;          /* the bytes of each kind */
    uint64_t writable_length;
    uint64_t last_writable_byte;       /* its guest address (valid if writable_length > 0) */
};

/* 2.7.5: one entry of a descriptor table, little-endian (as x86 is). */
struct virtq_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

#define VIRTQ_DESC_F_NEXT      1
#define VIRTQ_DESC_F_WRITE     2
#define VIRTQ_DESC_F_INDIRECT  4

#define IOV_BATCH 1024             /* the kernel's UIO_MAXIOV: iovecs per preadv call */

/* The region holding all of [addr, addr + len), or NULL: memory.py's region_of. */
static const struct guest_ram *ram_holding(const struct guest_ram *ram, int regions,
                                           uint64_t addr, uint64_t len)
{
    for (int i = 0; i < regions; i++) {
        if (addr >= ram[i].guest_addr && addr - ram[i].guest_addr <= ram[i].size
                && len <= ram[i].size - (addr - ram[i].guest_addr))
            return &ram[i];
    }
    return NULL;
}

/* Follow the chain from descriptor `head` of the queue's `table` (`size`
 * entries).  Its buffers go to `pieces` (room for `max_pieces`),
 * device-readable ones first; a buffer that starts where the previous one of
 * its kind ends, in the same region, is joined to it.  Returns how many
 * pieces, with `info` filled in; or a negative number if the chain breaks a
 * rule. */
int virtq_read_chain(const struct guest_ram *ram, int regions,
                     const struct virtq_desc *table, unsigned size, unsigned head,
                     int indirect_allowed, struct virtq_piece *pieces, unsigned max_pieces,
                     struct virtq_chain_info *info)
{
    /* Bytes, not structs: the driver may place an indirect table at any address. */
    const unsigned char *entry0 = (const unsigned char *)table;
    unsigned entries = size, index = head, steps = 0, count = 0, readable_count = 0;
    int in_indirect_table = 0, seen_writable = 0;
    uint64_t lengths[2] = {0, 0}, last_writable_byte = 0;
    uint64_t low = 0, high = 0;            /* the RAM region of the last buffer */

    while (steps < entries) {
        struct virtq_desc d;
        if (index >= entries)
            return -1;                     /* index outside the table */
        memcpy(&d, entry0 + (size_t)index * sizeof d, sizeof d);
        if (d.flags & VIRTQ_DESC_F_INDIRECT) {
            const struct guest_ram *r;
            if (!indirect_allowed || in_indirect_table || d.flags & VIRTQ_DESC_F_NEXT)
                return -2;                 /* not negotiated, nested, or chained on */
            if (d.len == 0 || d.len % sizeof d || d.len / sizeof d > size)
                return -3;                 /* not 1 to `size` whole descriptors */
            r = ram_holding(ram, regions, d.addr, d.len);
            if (r == NULL)
                return -4;                 /* the table is outside guest RAM */
            entry0 = r->host + (d.addr - r->guest_addr);
            entries = d.len / sizeof d;
            index = steps = 0;
            in_indirect_table = 1;
            continue;
        }
        if (!(d.addr >= low && d.addr <= high && d.len <= high - d.addr)) {
            const struct guest_ram *r = ram_holding(ram, regions, d.addr, d.len);
            if (r != NULL) {
                low = r->guest_addr;
                high = r->guest_addr + r->size;
            } else if (d.len) {
                return -5;                 /* a buffer outside guest RAM */
            }
        }
        if (d.flags & VIRTQ_DESC_F_WRITE)
            seen_writable = 1;
        else if (seen_writable)
            return -6;                     /* device-readable after device-writable */
        lengths[seen_writable] += d.len;
        if (seen_writable && d.len)
            last_writable_byte = d.addr + d.len - 1;
        /* the last piece of this buffer's kind, if there is one */
        unsigned first_of_kind = seen_writable ? readable_count : 0;
        struct virtq_piece *last = count > first_of_kind ? &pieces[count - 1] : NULL;
        if (d.len && last != NULL && last->addr >= low && last->addr + last->len == d.addr) {
            last->len += d.len;            /* joined, inside one region */
        } else {
            if (count == max_pieces)
                return -7;                 /* more pieces than the caller has room for */
            pieces[count].addr = d.addr;
            pieces[count].len = d.len;
            count++;
            if (!seen_writable)
                readable_count++;
        }
        if (!(d.flags & VIRTQ_DESC_F_NEXT)) {
            info->readable = readable_count;
            info->readable_length = lengths[0];
            info->writable_length = lengths[1];
            info->last_writable_byte = last_writable_byte;
            return (int)count;
        }
        index = d.next;
        steps++;
    }
    return -8;                             /* longer than its table: a loop, or too long */
}

/* preadv(2) (`write` 0) or pwritev(2) (`write` 1) between the file `fd` at
 * `offset` and `length` bytes of the guest's `pieces` seen as one stream,
 * from byte `skip` of it on (a virtio-blk write's data follows its 16-byte
 * header).  Each piece used is checked to lie in guest RAM again (they come
 * from Python, not from this walk).  Returns the bytes moved, fewer on a
 * short transfer or when the pieces hold fewer, or -errno. */
long long guest_rw_vectored(const struct guest_ram *ram, int regions, int fd, long long offset,
                            const struct virtq_piece *pieces, unsigned count,
                            unsigned long long skip, unsigned long long length, int write)
{
    struct iovec iov[IOV_BATCH];
    long long done = 0;

    while (count > 0 && length > 0) {
        unsigned batch = 0, used = 0;
        size_t wanted = 0;
        for (; used < count && batch < IOV_BATCH && length > wanted; used++) {
            uint64_t addr = pieces[used].addr, len = pieces[used].len;
            if (skip >= len) {             /* wholly before the part to move */
                skip -= len;
                continue;
            }
            addr += skip;
            len -= skip;
            skip = 0;
            if (len > length - wanted)
                len = length - wanted;     /* the last piece, cut at the end */
            const struct guest_ram *r = ram_holding(ram, regions, addr, len);
            if (r == NULL)
                return -EFAULT;
            iov[batch].iov_base = r->host + (addr - r->guest_addr);
            iov[batch].iov_len = len;
            wanted += len;
            batch++;
        }
        pieces += used;
        count -= used;
        if (batch == 0)
            continue;                      /* only skipped pieces so far */
        ssize_t n;
        do {
            n = write ? pwritev(fd, iov, (int)batch, offset + done)
                      : preadv(fd, iov, (int)batch, offset + done);
        } while (n < 0 && errno == EINTR);
        if (n < 0)
            return -errno;
        done += n;
        length -= (size_t)n;
        if ((size_t)n < wanted)
            break;                         /* short: the caller sees fewer bytes than asked */
    }
    return done;
}
