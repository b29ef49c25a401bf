/*
 * virtio.h: the virtio 1.2 spec as tiny uses it.
 *
 * Spec: "Virtual I/O Device (VIRTIO) Version 1.2", OASIS, 2022
 * (https://docs.oasis-open.org/virtio/virtio/v1.2/virtio-v1.2.html).
 *
 *   2.1    device status field          VIRTIO_STATUS_*
 *   2.2    feature bits                 VIRTIO_F_*
 *   2.7    split virtqueues             struct virtq (virtq.c)
 *   4.2    virtio over MMIO, version 2  VIRTIO_MMIO_* (virtio_mmio.c)
 *   5.1    network device               virtio_net.c (net.c: the protocols above it)
 *   5.2    block device                 virtio_blk.c
 */
#ifndef TINY_VIRTIO_H
#define TINY_VIRTIO_H
#include <stdint.h>

/* 4.2.2 MMIO Device Register Layout: offsets from the device's base. */
#define VIRTIO_MMIO_MAGIC_VALUE        0x000   /* R: 0x74726976, "virt" in little-endian */
#define VIRTIO_MMIO_VERSION            0x004   /* R: 2 (1 is the legacy interface)    */
#define VIRTIO_MMIO_DEVICE_ID          0x008   /* R: 5 "Device Types"; 0 = no device  */
#define VIRTIO_MMIO_VENDOR_ID          0x00c   /* R                                    */
#define VIRTIO_MMIO_DEVICE_FEATURES    0x010   /* R: 32 feature bits, chosen by ...    */
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014  /* W: ... this word index               */
#define VIRTIO_MMIO_DRIVER_FEATURES    0x020   /* W: the bits the driver accepts       */
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024  /* W                                    */
#define VIRTIO_MMIO_QUEUE_SEL          0x030   /* W: the queue the next 8 registers mean */
#define VIRTIO_MMIO_QUEUE_NUM_MAX      0x034   /* R: largest queue size; 0 = no queue  */
#define VIRTIO_MMIO_QUEUE_NUM          0x038   /* W: the size the driver chose         */
#define VIRTIO_MMIO_QUEUE_READY        0x044   /* RW: 1 = the device may use the queue */
#define VIRTIO_MMIO_QUEUE_NOTIFY       0x050   /* W: queue index: "new buffers" (the kick) */
#define VIRTIO_MMIO_INTERRUPT_STATUS   0x060   /* R: why the device interrupted        */
#define VIRTIO_MMIO_INTERRUPT_ACK      0x064   /* W: the bits handled                  */
#define VIRTIO_MMIO_STATUS             0x070   /* RW: device status (2.1); 0 = reset   */
#define VIRTIO_MMIO_QUEUE_DESC_LOW     0x080   /* W: descriptor table, physical address */
#define VIRTIO_MMIO_QUEUE_DESC_HIGH    0x084
#define VIRTIO_MMIO_QUEUE_DRIVER_LOW   0x090   /* W: available ring ("driver area")    */
#define VIRTIO_MMIO_QUEUE_DRIVER_HIGH  0x094
#define VIRTIO_MMIO_QUEUE_DEVICE_LOW   0x0a0   /* W: used ring ("device area")         */
#define VIRTIO_MMIO_QUEUE_DEVICE_HIGH  0x0a4
#define VIRTIO_MMIO_CONFIG_GENERATION  0x0fc   /* R: changes when the config changes   */
#define VIRTIO_MMIO_CONFIG             0x100   /* device-specific configuration space  */

#define VIRTIO_MMIO_MAGIC              0x74726976
#define VIRTIO_MMIO_MODERN             2
#define VIRTIO_MMIO_LEGACY             1
#define VIRTIO_MMIO_MIN_SIZE           0x200   /* registers + a small config space     */

#define VIRTIO_MMIO_INT_VRING          0x1     /* InterruptStatus: a used buffer       */
#define VIRTIO_MMIO_INT_CONFIG         0x2     /* InterruptStatus: the config changed  */

/* 2.1 Device Status Field */
#define VIRTIO_STATUS_ACKNOWLEDGE      1       /* the guest noticed the device         */
#define VIRTIO_STATUS_DRIVER           2       /* the guest has a driver for it        */
#define VIRTIO_STATUS_DRIVER_OK        4       /* the driver is ready                  */
#define VIRTIO_STATUS_FEATURES_OK      8       /* feature negotiation is complete      */
#define VIRTIO_STATUS_NEEDS_RESET      64      /* the device hit an error              */
#define VIRTIO_STATUS_FAILED           128     /* the driver gave up on the device     */

/* 6 Reserved Feature Bits */
#define VIRTIO_F_VERSION_1             32      /* compliant with virtio 1.x, not legacy */

/* 5 Device Types */
#define VIRTIO_ID_NET                  1
#define VIRTIO_ID_BLOCK                2

/* One virtio-mmio device, as found on the kernel command line. */
struct virtio_dev {
    volatile uint8_t *regs;    /* the register window, mapped uncached (mm.c) */
    uint64_t base;             /* its physical address                        */
    uint64_t size;
    int irq;                   /* the interrupt line the command line named   */
    uint32_t device_id;
    uint64_t features;         /* the features both sides agreed on           */
    uint64_t interrupts;       /* how many times its interrupt arrived        */
    void (*on_interrupt)(struct virtio_dev *d);   /* the driver's work, or NULL */
};

/* virtio_mmio.c: the transport */
#define VIRTIO_MAX_DEVICES 8
int virtio_mmio_parse(const char *cmdline, struct virtio_dev *devs, int max);
uint32_t virtio_read32(const struct virtio_dev *d, uint32_t off);
void virtio_write32(const struct virtio_dev *d, uint32_t off, uint32_t v);
int virtio_negotiate(struct virtio_dev *d, uint64_t wanted);
struct virtq;
int virtio_queue_setup(struct virtio_dev *d, int index, struct virtq *vq);
void virtio_driver_ok(struct virtio_dev *d);
void virtio_fail(struct virtio_dev *d, const char *why);
void virtio_notify(const struct virtio_dev *d, int queue);
int virtio_ack_interrupt(const struct virtio_dev *d);
uint64_t virtio_config64(const struct virtio_dev *d, uint32_t off);
uint32_t virtio_config32(const struct virtio_dev *d, uint32_t off);

/* virtq.c: the split virtqueue (2.7) */
#define VIRTQ_SIZE 16              /* descriptors per queue: one page holds all three parts */

struct virtq_buf {
    void *addr;
    uint32_t len;
    int device_writes;             /* 1: the device writes it (VIRTQ_DESC_F_WRITE) */
};

struct virtq *virtq_alloc(void);
int virtq_size(const struct virtq *vq);
uint64_t virtq_desc_addr(const struct virtq *vq);
uint64_t virtq_avail_addr(const struct virtq *vq);
uint64_t virtq_used_addr(const struct virtq *vq);
void virtq_set_size(struct virtq *vq, int size);
int virtq_add(struct virtq *vq, const struct virtq_buf *bufs, int n);
int virtq_used(struct virtq *vq, uint32_t *len);

/* virtio_mmio.c: interrupts */
void virtio_intr(int irq);
int virtio_enable_interrupt(struct virtio_dev *d);

/* virtio_blk.c: the block device (5.2) */
#define SECTOR_SIZE         512    /* the unit of capacity and of `sector` (5.2.4, 5.2.6) */
#define VIRTIO_BLK_ID_BYTES 20     /* GET_ID answer: a string, NUL-padded, maybe not terminated */
#define VIRTIO_BLK_S_OK     0      /* 5.2.6: the status byte the device writes last */
#define VIRTIO_BLK_S_IOERR  1
#define VIRTIO_BLK_S_UNSUPP 2
#define BLK_NO_ANSWER       0xff   /* not the device's: it never answered */
#define MAX_DISKS           VIRTIO_MAX_DEVICES

struct disk {
    char name[4];                  /* vda, vdb, ... in the order of the command line */
    struct virtio_dev *dev;
    struct virtq *vq;              /* requestq, queue 0 (5.2.2) */
    uint64_t capacity;             /* in 512-byte sectors (5.2.4) */
    int readonly;                  /* VIRTIO_BLK_F_RO was offered */
    int can_flush;                 /* VIRTIO_BLK_F_FLUSH was negotiated */
    int polled;                    /* no usable interrupt: the timer tick wakes the waiter */
    char id[VIRTIO_BLK_ID_BYTES + 1];
};

void virtio_blk_attach(struct virtio_dev *d);
int disk_count(void);
struct disk *disk_get(int index);
struct disk *disk_find(const char *name);
int disk_read(struct disk *dk, uint64_t sector, void *buf, uint32_t count);
int disk_write(struct disk *dk, uint64_t sector, const void *buf);
int disk_flush(struct disk *dk);
const char *blk_status_name(int status);

/* virtio_net.c: the network device (5.1); net.c speaks Ethernet, ARP, IPv4, ICMP on it */
#define ETH_FRAME_MAX 1514         /* header + 1500-byte MTU (no VLAN tag, no FCS) */

struct net_counters {
    uint64_t rx_frames, tx_frames;
    uint64_t rx_dropped;           /* too long, or a header we cannot read */
    uint64_t tx_dropped;           /* no free transmit buffer */
};

struct spinlock;
extern struct spinlock netlock;    /* held around the card's rings and net.c's state */
void virtio_net_attach(struct virtio_dev *d);
int virtio_net_present(void);
const uint8_t *virtio_net_mac(void);
int virtio_net_send(const void *frame, uint32_t len);     /* with netlock held */
void virtio_net_poll(void);
const struct net_counters *virtio_net_counters(void);
void net_input(const uint8_t *frame, uint32_t len);     /* net.c: one received frame */

#endif
