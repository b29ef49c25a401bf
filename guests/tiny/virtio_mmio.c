/*
 * virtio_mmio.c: finding virtio devices and talking to them over MMIO
 * (virtio 1.2, 4.2 "Virtio Over MMIO", version 2 only).
 *
 * An MMIO bus cannot be enumerated, so the VMM says where the devices are.
 * tiny reads the kernel command line syntax Linux defines for this
 * (Documentation/admin-guide/kernel-parameters.txt, virtio_mmio.device):
 *
 *     virtio_mmio.device=<size>@<base>:<irq>[:<id>]    e.g. 512@0xfeb00e00:12
 *
 * once per device.  QEMU's microvm machine appends these words itself when
 * it boots a -kernel without ACPI (acpi=off); Firecracker and pykvm write
 * them too.  The same ELF then finds its disks on every VMM.
 *
 * virtio_init brings each device to DRIVER_OK in the order of 3.1.1
 * "Driver Requirements: Device Initialization":
 *
 *   1. reset (write 0 to Status, wait until it reads 0)
 *   2. set ACKNOWLEDGE: we saw the device
 *   3. set DRIVER: we can drive it
 *   4. read the device's features, write the subset we understand
 *   5. set FEATURES_OK, 6. read it back: the device may refuse our subset
 *   7. device-specific set-up: the virtqueues (4.2.3.2), the config space
 *   8. set DRIVER_OK: the device is live
 *
 * Steps 1-6 are virtio_negotiate, 7 the device driver (virtio_blk.c,
 * virtio_net.c) with
 * virtio_queue_setup, 8 virtio_driver_ok.
 */
#include "defs.h"
#include "virtio.h"

#define CMDLINE_KEY "virtio_mmio.device="
#define RESET_POLLS 1000           /* reads of Status before giving up on a reset */

static struct virtio_dev devices[VIRTIO_MAX_DEVICES];
static int ndevices;

uint32_t virtio_read32(const struct virtio_dev *d, uint32_t off)
{
    return *(volatile uint32_t *)(d->regs + off);
}

void virtio_write32(const struct virtio_dev *d, uint32_t off, uint32_t v)
{
    *(volatile uint32_t *)(d->regs + off) = v;
}

/* --- the command line ------------------------------------------------------ */

/* A number as Linux's simple_strtoull(s, 0) reads it (hex after "0x",
 * else decimal); NULL if s does not start with a digit. */
static const char *parse_number(const char *s, uint64_t *v)
{
    int base = 10;
    const char *start;

    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
    }
    *v = 0;
    for (start = s;; s++) {
        int digit;
        if (*s >= '0' && *s <= '9')
            digit = *s - '0';
        else if (base == 16 && (*s | 0x20) >= 'a' && (*s | 0x20) <= 'f')
            digit = (*s | 0x20) - 'a' + 10;
        else
            break;
        *v = *v * base + digit;
    }
    return s == start ? NULL : s;
}

/* A size as Linux's memparse reads it: a number with an optional K, M or G. */
static const char *parse_size(const char *s, uint64_t *v)
{
    s = parse_number(s, v);
    if (!s)
        return NULL;
    switch (*s | 0x20) {
    case 'g': *v <<= 10; /* fall through */
    case 'm': *v <<= 10; /* fall through */
    case 'k': *v <<= 10; s++;
    }
    return s;
}

/* One "<size>@<base>:<irq>[:<id>]"; 0 if it parsed. */
static int parse_device(const char *s, struct virtio_dev *d)
{
    uint64_t irq, id;

    if (!(s = parse_size(s, &d->size)) || *s++ != '@')
        return -1;
    if (!(s = parse_number(s, &d->base)) || *s++ != ':')
        return -1;
    if (!(s = parse_number(s, &irq)))
        return -1;
    if (*s == ':' && !(s = parse_number(s + 1, &id)))
        return -1;
    if (*s != ' ' && *s != 0)
        return -1;
    d->irq = irq > 255 ? -1 : (int)irq;
    return d->irq < 0 ? -1 : 0;
}

/* The command-line word at p, for messages. */
static const char *word(const char *p)
{
    static char buf[64];
    size_t n = 0;
    while (p[n] && p[n] != ' ' && n < sizeof(buf) - 1) {
        buf[n] = p[n];
        n++;
    }
    buf[n] = 0;
    return buf;
}

/* Fill devs[] from every virtio_mmio.device= word; returns how many. */
int virtio_mmio_parse(const char *cmdline, struct virtio_dev *devs, int max)
{
    int n = 0;
    size_t keylen = strlen(CMDLINE_KEY);

    for (const char *p = cmdline; *p; p++) {
        if ((p != cmdline && p[-1] != ' ') || strncmp(p, CMDLINE_KEY, keylen) != 0)
            continue;
        struct virtio_dev d = { 0 };
        if (parse_device(p + keylen, &d) != 0 || d.size < VIRTIO_MMIO_MIN_SIZE)
            kprintf("virtio: ignoring %s (want SIZE@BASE:IRQ, SIZE >= %d)\n", word(p),
                    VIRTIO_MMIO_MIN_SIZE);
        else if (n == max)
            kprintf("virtio: more than %d devices; ignoring %s\n", max, word(p));
        else
            devs[n++] = d;
    }
    return n;
}

/* --- initialization (3.1.1) --------------------------------------------------- */

static uint8_t status_of(const struct virtio_dev *d)
{
    return virtio_read32(d, VIRTIO_MMIO_STATUS);
}

static void set_status(const struct virtio_dev *d, uint8_t bits)
{
    virtio_write32(d, VIRTIO_MMIO_STATUS, status_of(d) | bits);
}

/* Give up on the device: 2.1.1 asks the driver to say so with FAILED. */
void virtio_fail(struct virtio_dev *d, const char *why)
{
    kprintf("virtio %lx: %s\n", d->base, why);
    set_status(d, VIRTIO_STATUS_FAILED);
}

static uint64_t device_features(const struct virtio_dev *d)
{
    virtio_write32(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    uint64_t high = virtio_read32(d, VIRTIO_MMIO_DEVICE_FEATURES);
    virtio_write32(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    return high << 32 | virtio_read32(d, VIRTIO_MMIO_DEVICE_FEATURES);
}

static void write_driver_features(const struct virtio_dev *d, uint64_t features)
{
    virtio_write32(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    virtio_write32(d, VIRTIO_MMIO_DRIVER_FEATURES, features >> 32);
    virtio_write32(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    virtio_write32(d, VIRTIO_MMIO_DRIVER_FEATURES, (uint32_t)features);
}

/* Steps 1-6: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK.  `wanted`
 * is what the device driver understands; VIRTIO_F_VERSION_1 is always
 * required (a device without it is legacy).  Returns 0, or -1 after
 * marking the device FAILED. */
int virtio_negotiate(struct virtio_dev *d, uint64_t wanted)
{
    virtio_write32(d, VIRTIO_MMIO_STATUS, 0);                       /* 1 */
    for (int i = 0; status_of(d) != 0; i++)
        if (i == RESET_POLLS) {
            virtio_fail(d, "the device does not reset");
            return -1;
        }
    set_status(d, VIRTIO_STATUS_ACKNOWLEDGE);                       /* 2 */
    set_status(d, VIRTIO_STATUS_DRIVER);                            /* 3 */
    uint64_t offered = device_features(d);                          /* 4 */
    if (!(offered & (1ULL << VIRTIO_F_VERSION_1))) {
        virtio_fail(d, "no VIRTIO_F_VERSION_1: a legacy device");
        return -1;
    }
    d->features = offered & (wanted | 1ULL << VIRTIO_F_VERSION_1);
    write_driver_features(d, d->features);
    set_status(d, VIRTIO_STATUS_FEATURES_OK);                       /* 5 */
    if (!(status_of(d) & VIRTIO_STATUS_FEATURES_OK)) {              /* 6 */
        virtio_fail(d, "the device refused our features");
        return -1;
    }
    return 0;
}

/* Step 7 for one queue (4.2.3.2 "Virtqueue Configuration"): select it,
 * check it is unused and exists, tell the device its size and the three
 * physical addresses, then mark it ready.  Returns 0 or -1. */
int virtio_queue_setup(struct virtio_dev *d, int index, struct virtq *vq)
{
    virtio_write32(d, VIRTIO_MMIO_QUEUE_SEL, index);
    if (virtio_read32(d, VIRTIO_MMIO_QUEUE_READY) != 0)
        return -1;
    uint32_t max = virtio_read32(d, VIRTIO_MMIO_QUEUE_NUM_MAX);
    if (max == 0)
        return -1;
    int size = VIRTQ_SIZE;
    while ((uint32_t)size > max)     /* sizes are powers of 2 (2.7) */
        size /= 2;
    virtq_set_size(vq, size);
    virtio_write32(d, VIRTIO_MMIO_QUEUE_NUM, size);
    virtio_write32(d, VIRTIO_MMIO_QUEUE_DESC_LOW, (uint32_t)virtq_desc_addr(vq));
    virtio_write32(d, VIRTIO_MMIO_QUEUE_DESC_HIGH, virtq_desc_addr(vq) >> 32);
    virtio_write32(d, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (uint32_t)virtq_avail_addr(vq));
    virtio_write32(d, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, virtq_avail_addr(vq) >> 32);
    virtio_write32(d, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (uint32_t)virtq_used_addr(vq));
    virtio_write32(d, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, virtq_used_addr(vq) >> 32);
    virtio_write32(d, VIRTIO_MMIO_QUEUE_READY, 1);
    return 0;
}

void virtio_driver_ok(struct virtio_dev *d)                          /* 8 */
{
    set_status(d, VIRTIO_STATUS_DRIVER_OK);
}

/* The kick (4.2.3.3): the value written is the queue's index. */
void virtio_notify(const struct virtio_dev *d, int queue)
{
    virtio_write32(d, VIRTIO_MMIO_QUEUE_NOTIFY, queue);
}

/* Acknowledge every reason the device interrupted for (4.2.3.4), so that
 * it lowers its interrupt line.  Done before the driver looks at the used
 * ring: a buffer used after this raises the line again.  Returns whether
 * the device had anything to say (a shared line: maybe not this one). */
int virtio_ack_interrupt(const struct virtio_dev *d)
{
    uint32_t why = virtio_read32(d, VIRTIO_MMIO_INTERRUPT_STATUS);
    if (why)
        virtio_write32(d, VIRTIO_MMIO_INTERRUPT_ACK, why);
    return why != 0;
}

/* Config fields wider than 32 bits may change between the two reads;
 * ConfigGeneration tells (2.5.1: read it before and after, retry if it
 * changed). */
uint64_t virtio_config64(const struct virtio_dev *d, uint32_t off)
{
    uint32_t gen, lo, hi;
    do {
        gen = virtio_read32(d, VIRTIO_MMIO_CONFIG_GENERATION);
        lo = virtio_read32(d, VIRTIO_MMIO_CONFIG + off);
        hi = virtio_read32(d, VIRTIO_MMIO_CONFIG + off + 4);
    } while (gen != virtio_read32(d, VIRTIO_MMIO_CONFIG_GENERATION));
    return (uint64_t)hi << 32 | lo;
}

uint32_t virtio_config32(const struct virtio_dev *d, uint32_t off)
{
    return virtio_read32(d, VIRTIO_MMIO_CONFIG + off);
}

/* --- interrupts --------------------------------------------------------------- */

/* Which interrupt controller?  The command line names a GSI, a global
 * system interrupt number.  tiny drives the 8259 PIC (pic.c), which has
 * pins for GSIs 0-15 only, and takes those: on QEMU microvm (acpi=off,
 * virtio IRQs 5-12) and on pykvm (KVM's in-kernel PIC + IOAPIC) every
 * GSI below 16 reaches both the 8259 and the IOAPIC, so the same
 * `pic_unmask` works on both and no IOAPIC or local-APIC code is needed.
 * A GSI of 16 or more exists only on an IOAPIC (QEMU microvm with ACPI
 * puts virtio at 16-23, or 24-47 with its second IOAPIC); there the driver
 * runs without the interrupt: it halts until any interrupt, and the 100 Hz
 * timer wakes it to look at the used ring.  Slower, but correct. */

/* An interrupt from a virtio device: acknowledge it at every device on the
 * line.  The driver waiting for the request finds it in the used ring. */
void virtio_intr(int irq)
{
    for (int i = 0; i < ndevices; i++)
        if (devices[i].irq == irq && virtio_ack_interrupt(&devices[i])) {
            devices[i].interrupts++;
            if (devices[i].on_interrupt)
                devices[i].on_interrupt(&devices[i]);
        }
}

/* Route d's interrupt to virtio_intr; 0 if it will arrive, -1 if the
 * driver must poll. */
int virtio_enable_interrupt(struct virtio_dev *d)
{
    if (d->irq >= PIC_IRQS || d->irq == IRQ_TIMER || d->irq == IRQ_COM1)
        return -1;
    irq_register(d->irq, virtio_intr);
    return 0;
}

/* --- probing ------------------------------------------------------------------ */

/* Map the window and check it holds a modern virtio device (4.2.3.1.1). */
static int probe(struct virtio_dev *d)
{
    d->regs = mmio_map(d->base, d->size);
    if (!d->regs) {
        kprintf("virtio %lx: cannot map %lu bytes there (RAM, or out of memory)\n", d->base,
                d->size);
        return -1;
    }
    if (virtio_read32(d, VIRTIO_MMIO_MAGIC_VALUE) != VIRTIO_MMIO_MAGIC) {
        kprintf("virtio %lx: no virtio-mmio magic value there\n", d->base);
        return -1;
    }
    uint32_t version = virtio_read32(d, VIRTIO_MMIO_VERSION);
    if (version != VIRTIO_MMIO_MODERN) {
        kprintf("virtio %lx: version %u, want 2%s\n", d->base, version,
                version == VIRTIO_MMIO_LEGACY
                    ? " (legacy device; QEMU: -global virtio-mmio.force-legacy=false)" : "");
        return -1;
    }
    d->device_id = virtio_read32(d, VIRTIO_MMIO_DEVICE_ID);
    return d->device_id == 0 ? -1 : 0;     /* 0: a transport with no device behind it */
}

/* Find and start every device the command line names. */
void virtio_init(const char *cmdline)
{
    struct virtio_dev found[VIRTIO_MAX_DEVICES];
    int n = virtio_mmio_parse(cmdline, found, VIRTIO_MAX_DEVICES);

    for (int i = 0; i < n; i++) {
        struct virtio_dev *d = &devices[ndevices];
        *d = found[i];
        if (probe(d) != 0)
            continue;
        ndevices++;
        if (d->device_id == VIRTIO_ID_BLOCK)
            virtio_blk_attach(d);
        else if (d->device_id == VIRTIO_ID_NET)
            virtio_net_attach(d);
        else
            kprintf("virtio %lx: device type %u, no driver for it\n", d->base, d->device_id);
    }
}
