/*
 * net.c: a network answer on the virtio-net card: Ethernet, ARP, IPv4, ICMP.
 *
 * Just enough to be pinged, and to ping:
 *
 *   Ethernet (IEEE 802.3)  dst MAC | src MAC | EtherType (0x0806 ARP, 0x0800 IPv4)
 *   ARP (RFC 826)          "who has 10.213.0.2?" -> "10.213.0.2 is at 52:54:00:..."
 *   IPv4 (RFC 791)         20-byte header, its checksum checked and set (RFC 1071)
 *   ICMP (RFC 792)         echo request (type 8) -> echo reply (type 0), same id,
 *                          sequence and data
 *
 * The address comes from the kernel command line, in the syntax Linux's
 * ip= (Documentation/admin-guide/nfs/nfsroot.rst) uses:
 *
 *     ip=<client>:<server>:<gateway>:<netmask>:<hostname>:<device>:<autoconf>
 *     ip=10.213.0.2::10.213.0.1:255.255.0.0::eth0:off
 *
 * Shell commands: `net` (MAC, address, counters) and `ping ADDR [COUNT]`.
 * Frames arrive in the card's interrupt (virtio_net.c), which calls
 * net_input with the card's lock held; answers go out from there at once.
 * Addresses are kept in network byte order (big-endian) as they are on the
 * wire; htons/ntohs turn 16-bit fields around for this little-endian CPU.
 */
#include "defs.h"
#include "spinlock.h"
#include "virtio.h"
#include "x86.h"

#define ETH_HLEN        14
#define ETH_MIN_FRAME   60          /* shorter frames are padded (802.3: 64 with the FCS) */
#define ETHERTYPE_IPV4  0x0800
#define ETHERTYPE_ARP   0x0806
#define ARP_HTYPE_ETHER 1
#define ARP_REQUEST     1
#define ARP_REPLY       2
#define IP_PROTO_ICMP   1
#define IP_TTL          64
#define ICMP_ECHO_REPLY   0
#define ICMP_ECHO_REQUEST 8
#define ARP_CACHE       8           /* neighbours remembered                         */
#define PING_ID         0x7479      /* "ty": the identifier of tiny's echo requests   */
#define PING_DATA       56          /* bytes of data, as ping(8) sends by default     */
#define PING_MAX_COUNT  20
#define PING_WAIT_TICKS TIMER_HZ    /* one second for each answer                     */
#define IP_KEY          "ip="

struct eth_hdr {
    uint8_t dst[6], src[6];
    uint16_t type;
} __attribute__((packed));

struct arp_pkt {                    /* RFC 826, for Ethernet and IPv4 */
    uint16_t htype, ptype;
    uint8_t hlen, plen;
    uint16_t op;
    uint8_t sha[6];
    uint32_t spa;
    uint8_t tha[6];
    uint32_t tpa;
} __attribute__((packed));

struct ip_hdr {                     /* RFC 791, without options */
    uint8_t version_ihl, tos;
    uint16_t total_len, id, frag;
    uint8_t ttl, proto;
    uint16_t checksum;
    uint32_t src, dst;
} __attribute__((packed));

struct icmp_echo {                  /* RFC 792 */
    uint8_t type, code;
    uint16_t checksum, id, seq;
} __attribute__((packed));

static uint32_t my_ip, gateway, netmask;     /* network byte order; 0: not configured */
static struct { uint32_t ip; uint8_t mac[6]; } arp_cache[ARP_CACHE];
static int arp_next;
static struct {
    uint64_t arp_answered, echo_answered, bad_checksum;
} stats;
static volatile struct {            /* the echo reply ping waits for */
    uint16_t seq;
    int got;
    uint8_t ttl;
    uint32_t bytes;
} pong;

static uint16_t htons(uint16_t v) { return __builtin_bswap16(v); }
#define ntohs htons

/* RFC 1071: the ones' complement of the ones' complement sum of 16-bit words. */
static uint16_t checksum(const void *data, uint32_t len)
{
    const uint8_t *p = data;
    uint32_t sum = 0;
    for (uint32_t i = 0; i + 1 < len; i += 2)
        sum += (uint32_t)p[i] << 8 | p[i + 1];
    if (len & 1)
        sum += (uint32_t)p[len - 1] << 8;
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return htons(~sum & 0xffff);
}

/* --- addresses ----------------------------------------------------------------- */

/* "10.213.0.2" -> network byte order; the text after it in *end; -1 if bad. */
static int parse_ip(const char *s, uint32_t *ip, const char **end)
{
    uint8_t b[4];
    for (int i = 0; i < 4; i++) {
        int v = 0, digits = 0;
        for (; *s >= '0' && *s <= '9' && digits < 3; s++, digits++)
            v = v * 10 + (*s - '0');
        if (!digits || v > 255 || (i < 3 && *s++ != '.'))
            return -1;
        b[i] = v;
    }
    memcpy(ip, b, 4);
    if (end)
        *end = s;
    return 0;
}

static void print_ip(uint32_t ip)
{
    const uint8_t *b = (const uint8_t *)&ip;
    kprintf("%u.%u.%u.%u", b[0], b[1], b[2], b[3]);
}

/* The number of one bits in a netmask: 255.255.0.0 -> 16. */
static int prefix_length(uint32_t mask)
{
    int n = 0;
    for (; mask; mask &= mask - 1)
        n++;
    return n;
}

/* The ip= word: client, server, gateway, netmask (the other fields are
 * not used).  Empty fields stay 0. */
void net_init(const char *cmdline)
{
    const char *p = cmdline;
    while (*p && !((p == cmdline || p[-1] == ' ') && strncmp(p, IP_KEY, 3) == 0))
        p++;
    if (!*p)
        return;
    p += 3;
    uint32_t *fields[4] = { &my_ip, NULL, &gateway, &netmask };
    for (int i = 0; i < 4; i++) {
        if (*p != ':' && *p != ' ' && *p) {
            uint32_t v;
            if (parse_ip(p, &v, &p) != 0 || (*p != ':' && *p != ' ' && *p)) {
                kprintf("net: cannot read ip=: want ip=ADDR::GATEWAY:NETMASK::eth0:off\n");
                my_ip = 0;
                return;
            }
            if (fields[i])
                *fields[i] = v;
        }
        if (*p != ':')
            break;
        p++;
    }
    if (!netmask)
        netmask = 0x00ffffff;                    /* 255.255.255.0, in network order */
}

/* --- sending: every frame is built in `out`, with netlock held ------------------ */

static uint8_t out[ETH_FRAME_MAX];
#define OUT_IP   (out + ETH_HLEN)                        /* where the IPv4 header goes */
#define OUT_DATA (out + ETH_HLEN + sizeof(struct ip_hdr)) /* and what follows it      */

/* Send out[] with `len` bytes after the Ethernet header. */
static void send_frame(const uint8_t dst[6], uint16_t type, uint32_t len)
{
    struct eth_hdr *eth = (struct eth_hdr *)out;
    memcpy(eth->dst, dst, 6);
    memcpy(eth->src, virtio_net_mac(), 6);
    eth->type = htons(type);
    len += ETH_HLEN;
    if (len < ETH_MIN_FRAME) {
        memset(out + len, 0, ETH_MIN_FRAME - len);
        len = ETH_MIN_FRAME;
    }
    virtio_net_send(out, len);
}

static void send_arp(uint16_t op, const uint8_t to_mac[6], uint32_t to_ip)
{
    static const uint8_t broadcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
    struct arp_pkt *a = (struct arp_pkt *)(out + ETH_HLEN);
    *a = (struct arp_pkt){ htons(ARP_HTYPE_ETHER), htons(ETHERTYPE_IPV4), 6, 4, htons(op),
                           { 0 }, my_ip, { 0 }, to_ip };
    memcpy(a->sha, virtio_net_mac(), 6);
    if (op == ARP_REPLY)
        memcpy(a->tha, to_mac, 6);
    send_frame(op == ARP_REPLY ? to_mac : broadcast, ETHERTYPE_ARP, sizeof(*a));
}

static const uint8_t *arp_lookup(uint32_t ip)
{
    for (int i = 0; i < ARP_CACHE; i++)
        if (arp_cache[i].ip == ip)
            return arp_cache[i].mac;
    return NULL;
}

static void arp_learn(uint32_t ip, const uint8_t mac[6])
{
    for (int i = 0; i < ARP_CACHE; i++)
        if (arp_cache[i].ip == ip) {
            memcpy(arp_cache[i].mac, mac, 6);
            return;
        }
    arp_cache[arp_next].ip = ip;                 /* the oldest entry goes */
    memcpy(arp_cache[arp_next].mac, mac, 6);
    arp_next = (arp_next + 1) % ARP_CACHE;
}

/* The neighbour a packet to `dst` goes to: itself on our subnet, else the gateway. */
static uint32_t next_hop(uint32_t dst)
{
    return (dst & netmask) == (my_ip & netmask) ? dst : gateway;
}

/* An IPv4 header in front of the `len` bytes at OUT_DATA, then the frame to
 * the next hop.  Returns 0, or -1 if its MAC is not (yet) known. */
static int send_ip(uint32_t dst, uint8_t proto, uint32_t len)
{
    static uint16_t next_id;
    const uint8_t *mac = arp_lookup(next_hop(dst));
    struct ip_hdr *ip = (struct ip_hdr *)OUT_IP;
    if (!mac || len > ETH_FRAME_MAX - ETH_HLEN - sizeof(*ip))
        return -1;
    *ip = (struct ip_hdr){ 0x45, 0, htons(sizeof(*ip) + len), htons(next_id++), 0, IP_TTL,
                           proto, 0, my_ip, dst };
    ip->checksum = checksum(ip, sizeof(*ip));
    send_frame(mac, ETHERTYPE_IPV4, sizeof(*ip) + len);
    return 0;
}

/* --- receiving (from the card's interrupt) ------------------------------------ */

static void arp_input(const struct eth_hdr *eth, const struct arp_pkt *a, uint32_t len)
{
    if (len < sizeof(*a) || a->htype != htons(ARP_HTYPE_ETHER) || a->ptype != htons(ETHERTYPE_IPV4)
        || a->hlen != 6 || a->plen != 4 || a->tpa != my_ip)
        return;
    arp_learn(a->spa, a->sha);                   /* RFC 826: the sender, for our answer */
    if (a->op == htons(ARP_REQUEST)) {
        send_arp(ARP_REPLY, eth->src, a->spa);
        stats.arp_answered++;
    }
}

static void icmp_input(const struct ip_hdr *ip, const uint8_t *data, uint32_t len)
{
    struct icmp_echo *echo = (struct icmp_echo *)data;
    if (len < sizeof(*echo))
        return;
    if (checksum(data, len) != 0) {              /* the sum over a correct message is 0 */
        stats.bad_checksum++;
        return;
    }
    if (echo->type == ICMP_ECHO_REQUEST && echo->code == 0) {
        memcpy(OUT_DATA, data, len);             /* the same id, sequence and data back */
        struct icmp_echo *r = (struct icmp_echo *)OUT_DATA;
        r->type = ICMP_ECHO_REPLY;
        r->checksum = 0;
        r->checksum = checksum(r, len);
        if (send_ip(ip->src, IP_PROTO_ICMP, len) == 0)
            stats.echo_answered++;
    } else if (echo->type == ICMP_ECHO_REPLY && echo->id == htons(PING_ID) &&
               ntohs(echo->seq) == pong.seq) {
        pong.ttl = ip->ttl;
        pong.bytes = len;
        pong.got = 1;
    }
}

static void ip_input(const struct eth_hdr *eth, const uint8_t *packet, uint32_t len)
{
    const struct ip_hdr *ip = (const struct ip_hdr *)packet;
    if (len < sizeof(*ip) || ip->version_ihl >> 4 != 4)
        return;
    uint32_t header = (ip->version_ihl & 0xf) * 4, total = ntohs(ip->total_len);
    if (header < sizeof(*ip) || total < header || total > len || ip->dst != my_ip)
        return;
    if (checksum(ip, header) != 0) {
        stats.bad_checksum++;
        return;
    }
    if (ntohs(ip->frag) & 0x3fff)                /* a fragment: more fragments, or offset */
        return;
    if ((ip->src & netmask) == (my_ip & netmask))   /* a neighbour: answer it without ARP */
        arp_learn(ip->src, eth->src);
    if (ip->proto == IP_PROTO_ICMP)
        icmp_input(ip, packet + header, total - header);
}

void net_input(const uint8_t *frame, uint32_t len)
{
    const struct eth_hdr *eth = (const struct eth_hdr *)frame;
    if (len < ETH_HLEN || !my_ip)
        return;
    if (eth->type == htons(ETHERTYPE_ARP))
        arp_input(eth, (const struct arp_pkt *)(frame + ETH_HLEN), len - ETH_HLEN);
    else if (eth->type == htons(ETHERTYPE_IPV4))
        ip_input(eth, frame + ETH_HLEN, len - ETH_HLEN);
}

/* --- the shell's commands ------------------------------------------------------ */

void cmd_net(int argc, char **argv)
{
    (void)argc, (void)argv;
    if (!virtio_net_present()) {
        kprintf("no network card (the VMM names it on the command line: "
                "virtio_mmio.device=SIZE@BASE:IRQ)\n");
        return;
    }
    const uint8_t *m = virtio_net_mac();
    const struct net_counters *c = virtio_net_counters();
    kprintf("eth0: mac %02x:%02x:%02x:%02x:%02x:%02x ip ", m[0], m[1], m[2], m[3], m[4], m[5]);
    if (my_ip) {
        print_ip(my_ip);
        kprintf("/%d gateway ", prefix_length(netmask));
        print_ip(gateway);
        kprintf("\n");
    } else
        kprintf("none (give ip=ADDR::GATEWAY:NETMASK::eth0:off on the command line)\n");
    kprintf("      rx %lu frames, %lu dropped; tx %lu frames, %lu dropped\n", c->rx_frames,
            c->rx_dropped, c->tx_frames, c->tx_dropped);
    kprintf("      answered %lu ARP requests, %lu echo requests; %lu bad checksums\n",
            stats.arp_answered, stats.echo_answered, stats.bad_checksum);
}

/* Wait until `done()` (NULL: never) or `deadline` (in ticks), halted in between. */
static int wait_until(int (*done)(void), uint64_t deadline)
{
    for (;;) {
        virtio_net_poll();
        cli();
        if (done && done()) {
            sti();
            return 1;
        }
        if (ticks >= deadline) {
            sti();
            return 0;
        }
        wait_for_interrupt();                    /* returns with interrupts on */
    }
}

static uint32_t resolving;
static int resolved(void) { return arp_lookup(resolving) != NULL; }
static int answered(void) { return pong.got; }

/* The MAC of `hop`: asked for with ARP requests, one a second, three at most. */
static int resolve(uint32_t hop)
{
    resolving = hop;
    for (int tries = 0; tries < 3; tries++) {
        acquire(&netlock);
        int known = resolved();
        if (!known)
            send_arp(ARP_REQUEST, NULL, hop);
        release(&netlock);
        if (known || wait_until(resolved, ticks + PING_WAIT_TICKS))
            return 0;
    }
    return -1;
}

/* One echo request with sequence number `seq` and PING_DATA bytes of data. */
static void send_echo(uint32_t dst, uint16_t seq)
{
    acquire(&netlock);
    struct icmp_echo *e = (struct icmp_echo *)OUT_DATA;
    *e = (struct icmp_echo){ ICMP_ECHO_REQUEST, 0, 0, htons(PING_ID), htons(seq) };
    for (int i = 0; i < PING_DATA; i++)
        OUT_DATA[sizeof(*e) + i] = i;
    e->checksum = checksum(e, sizeof(*e) + PING_DATA);
    pong.seq = seq;
    pong.got = 0;
    send_ip(dst, IP_PROTO_ICMP, sizeof(*e) + PING_DATA);
    release(&netlock);
}

/* ping ADDR [COUNT]: COUNT echo requests (3 by default, at most 20), each
 * answer waited for at most a second and printed as ping(8) prints it,
 * then a summary.  Times are in timer ticks (10 ms): a coarse clock. */
void cmd_ping(int argc, char **argv)
{
    uint32_t dst;
    int count = 3, received = 0;
    if (argc < 2 || parse_ip(argv[1], &dst, NULL) != 0) {
        kprintf("ping: want ping ADDR [COUNT], ADDR like 10.213.0.1\n");
        return;
    }
    if (argc > 2) {
        count = 0;
        for (const char *p = argv[2]; *p >= '0' && *p <= '9' && count <= PING_MAX_COUNT; p++)
            count = count * 10 + (*p - '0');
        if (count < 1 || count > PING_MAX_COUNT) {
            kprintf("ping: COUNT is 1 to %d\n", PING_MAX_COUNT);
            return;
        }
    }
    if (!virtio_net_present() || !my_ip) {
        kprintf("ping: no network (try 'net')\n");
        return;
    }
    kprintf("PING ");
    print_ip(dst);
    kprintf(": %d data bytes\n", PING_DATA);
    if (resolve(next_hop(dst)) != 0) {
        kprintf("ping: no ARP answer for ");
        print_ip(next_hop(dst));
        kprintf("\n");
    } else {
        for (int seq = 1; seq <= count; seq++) {
            uint64_t sent = ticks;
            send_echo(dst, seq);
            if (!wait_until(answered, sent + PING_WAIT_TICKS))
                continue;
            received++;
            kprintf("%u bytes from ", pong.bytes);
            print_ip(dst);
            kprintf(": icmp_seq=%d ttl=%u time=%lu ms\n", seq, pong.ttl,
                    (ticks - sent) * 1000 / TIMER_HZ);
            if (seq < count)                     /* one a second, as ping(8) */
                wait_until(NULL, sent + PING_WAIT_TICKS);
        }
    }
    kprintf("--- ");
    print_ip(dst);
    kprintf(" ping statistics ---\n%d packets transmitted, %d received\n", count, received);
}
