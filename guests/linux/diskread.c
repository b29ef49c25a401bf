/* diskread: COUNT reads of BLOCK bytes at random BLOCK-aligned offsets of a disk, one at a
 * time, with O_DIRECT (no page cache in the guest: every read is a request to the device).
 *
 *     diskread /dev/vda 4096 20000 1        ->  diskread: 20000 reads of 4096 bytes in 5123456 us
 *
 * The offsets come from a fixed-seed generator, so two runs (and two VMMs) read the same
 * blocks in the same order.  The time is CLOCK_MONOTONIC around the reads alone.
 * Built static into pykvm's Linux initramfs (guests/linux/Makefile) for
 * tests/bench/bench_linux_disk.py.  Exit status 0, or 1 with one line on stderr.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <time.h>
#include <unistd.h>

#define ALIGN 4096  /* O_DIRECT: buffer, offset and length aligned to the logical block size */

static int fail(const char *what, const char *path)
{
    fprintf(stderr, "diskread: %s %s: %s\n", what, path, strerror(errno));
    return 1;
}

/* xorshift64 (Marsaglia 2003): small, and the same sequence everywhere */
static uint64_t next_random(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *state = x;
}

static long long microseconds(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec * 1000000LL + now.tv_nsec / 1000;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: diskread DEVICE BLOCK COUNT SEED\n");
        return 2;
    }
    const char *path = argv[1];
    long block = atol(argv[2]), count = atol(argv[3]);
    uint64_t state = strtoull(argv[4], NULL, 0) | 1;   /* xorshift never leaves 0 */
    if (block <= 0 || block % ALIGN || count <= 0) {
        fprintf(stderr, "diskread: BLOCK must be a positive multiple of %d, COUNT positive\n", ALIGN);
        return 2;
    }
    int fd = open(path, O_RDONLY | O_DIRECT);
    if (fd < 0)
        return fail("open", path);
    off_t size = lseek(fd, 0, SEEK_END);
    if (size < block) {
        fprintf(stderr, "diskread: %s is smaller than one block\n", path);
        return 1;
    }
    uint64_t blocks = size / block;
    void *buffer;
    if (posix_memalign(&buffer, ALIGN, block))
        return fail("posix_memalign for", path);
    long long start = microseconds();
    for (long i = 0; i < count; i++) {
        off_t offset = (off_t)(next_random(&state) % blocks) * block;
        ssize_t done = pread(fd, buffer, block, offset);
        if (done != block) {
            if (done >= 0)
                errno = EIO;     /* a short read of a whole block inside the disk */
            return fail("pread", path);
        }
    }
    long long elapsed = microseconds() - start;
    printf("diskread: %ld reads of %ld bytes in %lld us\n", count, block, elapsed);
    return 0;
}
