/*
 * virtio_net.c: the virtio network device driver (virtio 1.2, 5.1).
 *
 * Two queues (5.1.2): receiveq (0), where the driver lends the device empty
 * buffers to fill with arriving frames, and transmitq (1), where it puts
 * frames to send.  Every frame on either queue starts with a 12-byte
 * struct virtio_net_hdr (5.1.6); tiny asks for no offloads, so on transmit
 * the header is all zeros and on receive only num_buffers matters.
 *
 *   receive buffers  RX_BUFFERS of RX_BUF_BYTES, each its own one-descriptor
 *                    chain, lent again as soon as their bytes are copied out
 *   transmit buffers TX_BUFFERS of TX_BUF_BYTES: header + frame, one
 *                    descriptor each, taken back when the device has used them
 *
 * With VIRTIO_NET_F_MRG_RXBUF (5.1.6.3.2) the buffers are small (1 KiB) and
 * a larger frame arrives in several of them: num_buffers in the first
 * header says how many used-ring entries make up the frame.  Those entries
 * may appear one at a time (the device writes them one by one while this
 * CPU reads), so the driver collects a frame across calls in `assembly`.
 * Without the feature each buffer must hold a whole frame (5.1.6.3.1).
 *
 * Frames arrive by interrupt: virtio_mmio.c calls net_interrupt, which
 * passes each whole frame to net_input (net.c) while `netlock` is held,
 * interrupts off.  Sending takes the same lock, so the shell's ping and
 * the interrupt handler's replies never touch the transmit queue at once.
 */
#include "defs.h"
#include "spinlock.h"
#include "virtio.h"

/* 5.1.3 Feature bits */
#define VIRTIO_NET_F_MAC       5   /* config `mac` is the card's address          */
#define VIRTIO_NET_F_MRG_RXBUF 15  /* a frame may span several receive buffers   */
#define VIRTIO_NET_F_STATUS    16  /* config `status`: link up or down           */

/* 5.1.4 Device configuration layout */
#define VIRTIO_NET_CFG_MAC     0   /* u8 mac[6]                                  */
#define VIRTIO_NET_CFG_STATUS  6   /* le16 status                                */
#define VIRTIO_NET_S_LINK_UP   1

#define RECEIVEQ               0
#define TRANSMITQ              1
#define RX_BUFFERS             VIRTQ_SIZE
#define TX_BUFFERS             VIRTQ_SIZE
#define BUF_SLOT               2048    /* bytes per buffer slot: two per page     */
#define RX_BUF_MERGEABLE       1024    /* a receive buffer's length with MRG_RXBUF */
#define TX_BUF_BYTES           BUF_SLOT

struct virtio_net_hdr {            /* 5.1.6 */
    uint8_t flags;
    uint8_t gso_type;              /* VIRTIO_NET_HDR_GSO_NONE = 0 */
    uint16_t hdr_len;
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
    uint16_t num_buffers;          /* receive: used-ring entries in this frame */
};

struct nic {
    struct virtio_dev *dev;
    struct virtq *rxq, *txq;
    uint8_t mac[6];
    uint32_t rx_buf_bytes;         /* RX_BUF_MERGEABLE, or a whole slot */
    uint8_t *rx_buf[RX_BUFFERS];
    uint8_t *tx_buf[TX_BUFFERS];
    int rx_of_desc[VIRTQ_SIZE];    /* descriptor -> receive buffer lent in it */
    int tx_of_desc[VIRTQ_SIZE];    /* descriptor -> transmit buffer in flight */
    int tx_busy[TX_BUFFERS];
    struct net_counters counters;
};

static struct nic nic;
struct spinlock netlock = SPINLOCK_INIT("net");

/* A frame being collected from several receive buffers. */
static struct {
    uint8_t frame[ETH_FRAME_MAX];
    uint32_t len;
    int buffers_left;              /* 0: the next buffer starts a frame */
    int too_long;                  /* drop it once it is whole */
} assembly;

int virtio_net_present(void) { return nic.dev != NULL; }
const uint8_t *virtio_net_mac(void) { return nic.mac; }
const struct net_counters *virtio_net_counters(void) { return &nic.counters; }

/* Two buffer slots per page. */
static uint8_t *slot(uint8_t **pages, int i)
{
    return pages[i / 2] + (i % 2) * BUF_SLOT;
}

/* Lend receive buffer `i` to the device (no kick: the caller kicks once). */
static void lend(int i)
{
    struct virtq_buf b = { nic.rx_buf[i], nic.rx_buf_bytes, 1 };
    int head = virtq_add(nic.rxq, &b, 1);
    if (head >= 0)
        nic.rx_of_desc[head] = i;
}

/* Append `len` bytes of one used receive buffer to the frame in `assembly`;
 * the first buffer of a frame starts with the header. */
static void collect(const uint8_t *buf, uint32_t len)
{
    if (assembly.buffers_left == 0) {
        if (len < sizeof(struct virtio_net_hdr)) {
            nic.counters.rx_dropped++;
            return;
        }
        const struct virtio_net_hdr *h = (const struct virtio_net_hdr *)buf;
        int merged = (nic.dev->features >> VIRTIO_NET_F_MRG_RXBUF) & 1;
        assembly.buffers_left = merged && h->num_buffers > 0 ? h->num_buffers : 1;
        assembly.len = 0;
        assembly.too_long = 0;
        buf += sizeof(*h);
        len -= sizeof(*h);
    }
    if (assembly.len + len > sizeof(assembly.frame))
        assembly.too_long = 1;
    else {
        memcpy(assembly.frame + assembly.len, buf, len);
        assembly.len += len;
    }
    if (--assembly.buffers_left > 0)
        return;
    if (assembly.too_long) {
        nic.counters.rx_dropped++;
        return;
    }
    nic.counters.rx_frames++;
    net_input(assembly.frame, assembly.len);
}

/* Take back transmit buffers the device is done with. */
static void reclaim_transmitted(void)
{
    uint32_t len;
    int head;
    while ((head = virtq_used(nic.txq, &len)) >= 0)
        nic.tx_busy[nic.tx_of_desc[head]] = 0;
}

/* Every used receive buffer: its bytes to the frame being collected, the
 * buffer lent again.  Called with netlock held. */
static void receive_all(void)
{
    uint32_t len;
    int head, lent = 0;
    while ((head = virtq_used(nic.rxq, &len)) >= 0) {
        int i = nic.rx_of_desc[head];
        collect(nic.rx_buf[i], len < nic.rx_buf_bytes ? len : nic.rx_buf_bytes);
        lend(i);
        lent = 1;
    }
    if (lent)
        virtio_notify(nic.dev, RECEIVEQ);
    reclaim_transmitted();
}

/* The device's interrupt (virtio_mmio.c has acknowledged it already). */
static void net_interrupt(struct virtio_dev *d)
{
    (void)d;
    acquire(&netlock);
    receive_all();
    release(&netlock);
}

/* Look at the rings without waiting for an interrupt (the ping loop does,
 * in case the interrupt line is one the 8259 cannot see). */
void virtio_net_poll(void)
{
    if (!nic.dev)
        return;
    acquire(&netlock);
    receive_all();
    release(&netlock);
}

/* Send one Ethernet frame (destination MAC first); 0, or -1 when it was
 * dropped (no free transmit buffer).  netlock is held. */
static int send_locked(const void *frame, uint32_t len)
{
    int i;
    reclaim_transmitted();
    for (i = 0; i < TX_BUFFERS && nic.tx_busy[i]; i++)
        ;
    if (i == TX_BUFFERS || len > TX_BUF_BYTES - sizeof(struct virtio_net_hdr)) {
        nic.counters.tx_dropped++;
        return -1;
    }
    uint8_t *buf = nic.tx_buf[i];
    memset(buf, 0, sizeof(struct virtio_net_hdr));         /* no offloads: all zero */
    memcpy(buf + sizeof(struct virtio_net_hdr), frame, len);
    struct virtq_buf b = { buf, sizeof(struct virtio_net_hdr) + len, 0 };
    int head = virtq_add(nic.txq, &b, 1);
    if (head < 0) {
        nic.counters.tx_dropped++;
        return -1;
    }
    nic.tx_of_desc[head] = i;
    nic.tx_busy[i] = 1;
    virtio_notify(nic.dev, TRANSMITQ);
    nic.counters.tx_frames++;
    return 0;
}

int virtio_net_send(const void *frame, uint32_t len)
{
    if (!holding(&netlock))
        panic("virtio_net_send without netlock");
    return nic.dev ? send_locked(frame, len) : -1;
}

/* Pages for `n` buffer slots; 0 or -1. */
static int alloc_slots(uint8_t **pages, int n)
{
    for (int i = 0; i < n / 2; i++)
        if (!(pages[i] = kalloc()))
            return -1;
    return 0;
}

/* Bring the card to DRIVER_OK (virtio_mmio.c lists the steps). */
void virtio_net_attach(struct virtio_dev *d)
{
    static uint8_t *rx_pages[RX_BUFFERS / 2], *tx_pages[TX_BUFFERS / 2];
    uint64_t wanted = 1ULL << VIRTIO_NET_F_MAC | 1ULL << VIRTIO_NET_F_MRG_RXBUF |
                      1ULL << VIRTIO_NET_F_STATUS;

    if (nic.dev) {
        kprintf("virtio-net %lx: tiny drives one network card; ignoring this one\n", d->base);
        return;
    }
    if (virtio_negotiate(d, wanted) != 0)                       /* steps 1-6 */
        return;
    nic.rxq = virtq_alloc();                                    /* step 7 */
    nic.txq = virtq_alloc();
    if (!nic.rxq || !nic.txq || virtio_queue_setup(d, RECEIVEQ, nic.rxq) != 0 ||
        virtio_queue_setup(d, TRANSMITQ, nic.txq) != 0 ||
        alloc_slots(rx_pages, RX_BUFFERS) != 0 || alloc_slots(tx_pages, TX_BUFFERS) != 0) {
        virtio_fail(d, "no queues or buffers for the network card");
        return;
    }
    if (d->features & 1ULL << VIRTIO_NET_F_MAC)
        for (int i = 0; i < 6; i++)
            nic.mac[i] = *(volatile uint8_t *)(d->regs + VIRTIO_MMIO_CONFIG + VIRTIO_NET_CFG_MAC + i);
    else                                                        /* a locally administered one */
        memcpy(nic.mac, "\x52\x54\x00\x12\x34\x56", 6);
    nic.rx_buf_bytes = d->features & 1ULL << VIRTIO_NET_F_MRG_RXBUF ? RX_BUF_MERGEABLE : BUF_SLOT;
    for (int i = 0; i < RX_BUFFERS; i++)
        nic.rx_buf[i] = slot(rx_pages, i);
    for (int i = 0; i < TX_BUFFERS; i++)
        nic.tx_buf[i] = slot(tx_pages, i);
    nic.dev = d;
    d->on_interrupt = net_interrupt;
    int polled = virtio_enable_interrupt(d) != 0;
    virtio_driver_ok(d);                                        /* step 8 */
    acquire(&netlock);
    for (int i = 0; i < RX_BUFFERS; i++)                        /* 5.1.6.3: fill receiveq */
        lend(i);
    virtio_notify(d, RECEIVEQ);
    release(&netlock);
    int link = !(d->features & 1ULL << VIRTIO_NET_F_STATUS) ||
               (*(volatile uint16_t *)(d->regs + VIRTIO_MMIO_CONFIG + VIRTIO_NET_CFG_STATUS) &
                VIRTIO_NET_S_LINK_UP);
    kprintf("virtio-net eth0: mac %02x:%02x:%02x:%02x:%02x:%02x, link %s, %s receive buffers, "
            "at %lx irq %d%s\n", nic.mac[0], nic.mac[1], nic.mac[2], nic.mac[3], nic.mac[4],
            nic.mac[5], link ? "up" : "down", nic.rx_buf_bytes == RX_BUF_MERGEABLE ? "mergeable" : "whole-frame",
            d->base, d->irq, polled ? " (polled)" : "");
}
