/*
 * acpi.c: find the CPUs in the ACPI tables (ACPI 6.5, 5.2.5 RSDP, 5.2.7
 * RSDT, 5.2.8 XSDT, 5.2.12 MADT).  The VMM's firmware (pykvm itself, or
 * QEMU's SeaBIOS) leaves a "RSD PTR " structure; PVH's start info may
 * point at it, otherwise it sits on a 16-byte boundary in the BIOS area
 * 0xE0000-0xFFFFF.  From it the XSDT (or, for ACPI 1.0, the RSDT) lists
 * the other tables; the MADT ("APIC") has one Processor Local APIC entry
 * per CPU, and the FADT ("FACP", 5.2.9) names the PM1a control port that
 * powers the machine off (power.c).
 */
#include "defs.h"
#include "pvh.h"

#define BIOS_AREA_START 0xE0000
#define BIOS_AREA_END   0x100000
#define MADT_LOCAL_APIC 0          /* interrupt controller structure type 0 */
#define LAPIC_ENABLED        0x1   /* flags: the CPU is usable */
#define LAPIC_ONLINE_CAPABLE 0x2   /* flags: it can be brought online */
#define FADT_PM1A_CNT_BLK   64     /* u32: the PM1a control block's I/O port (0: none) */

struct __attribute__((packed)) rsdp {
    char signature[8];             /* "RSD PTR " */
    uint8_t checksum;
    char oem_id[6];
    uint8_t revision;              /* 0: ACPI 1.0 (RSDT only); 2: has the XSDT */
    uint32_t rsdt;
    uint32_t length;
    uint64_t xsdt;
};

struct __attribute__((packed)) sdt_header {
    char signature[4];
    uint32_t length;
    uint8_t revision, checksum;
    char oem_id[6], oem_table_id[8];
    uint32_t oem_revision, creator_id, creator_revision;
};

struct __attribute__((packed)) madt_local_apic {
    uint8_t type, length;
    uint8_t processor_uid, apic_id;
    uint32_t flags;
};

static int sums_to_zero(const void *p, uint32_t len)
{
    uint8_t sum = 0;
    for (uint32_t i = 0; i < len; i++)
        sum += ((const uint8_t *)p)[i];
    return sum == 0;
}

static const struct rsdp *find_rsdp(const struct hvm_start_info *si)
{
    if (si->rsdp_paddr && si->rsdp_paddr < BIOS_AREA_END)
        return (const struct rsdp *)si->rsdp_paddr;
    for (uint64_t a = BIOS_AREA_START; a < BIOS_AREA_END; a += 16)
        if (memcmp((const void *)a, "RSD PTR ", 8) == 0 && sums_to_zero((const void *)a, 20))
            return (const struct rsdp *)a;
    return NULL;
}

/* The table with `signature`, through the XSDT (8-byte pointers) or RSDT (4-byte). */
static const struct sdt_header *find_table(const struct rsdp *rsdp, const char *signature)
{
    int wide = rsdp->revision >= 2 && rsdp->xsdt;
    const struct sdt_header *root = (const void *)(wide ? rsdp->xsdt : rsdp->rsdt);
    if (!sums_to_zero(root, root->length))
        return NULL;
    int entry_size = wide ? 8 : 4;
    int n = (root->length - sizeof(*root)) / entry_size;
    const uint8_t *entries = (const uint8_t *)(root + 1);
    for (int i = 0; i < n; i++) {
        uint64_t addr = 0;
        memcpy(&addr, entries + i * entry_size, entry_size);
        const struct sdt_header *t = (const void *)addr;
        if (memcmp(t->signature, signature, 4) == 0 && sums_to_zero(t, t->length))
            return t;
    }
    return NULL;
}

/* The APIC ids of the usable CPUs, from the MADT, into ids[max]; returns how many (0: no MADT). */
int acpi_cpu_apic_ids(const struct hvm_start_info *si, uint8_t *ids, int max)
{
    const struct rsdp *rsdp = find_rsdp(si);
    const struct sdt_header *madt = rsdp ? find_table(rsdp, "APIC") : NULL;
    if (!madt)
        return 0;
    int n = 0;
    const uint8_t *p = (const uint8_t *)madt + sizeof(*madt) + 8;   /* after LAPIC address, flags */
    const uint8_t *end = (const uint8_t *)madt + madt->length;
    while (p + 2 <= end && p[1] >= 2 && p + p[1] <= end) {
        const struct madt_local_apic *e = (const void *)p;
        if (e->type == MADT_LOCAL_APIC && (e->flags & (LAPIC_ENABLED | LAPIC_ONLINE_CAPABLE)) && n < max)
            ids[n++] = e->apic_id;
        p += p[1];
    }
    return n;
}

/* The PM1a control block's port from the FADT; 0 where there is none: no ACPI tables
 * (QEMU microvm with acpi=off), or a "hardware-reduced" FADT that leaves it 0. */
uint16_t acpi_pm1a_control_port(const struct hvm_start_info *si)
{
    const struct rsdp *rsdp = find_rsdp(si);
    const struct sdt_header *fadt = rsdp ? find_table(rsdp, "FACP") : NULL;
    uint32_t port = 0;
    if (!fadt || fadt->length < FADT_PM1A_CNT_BLK + sizeof(port))
        return 0;
    memcpy(&port, (const uint8_t *)fadt + FADT_PM1A_CNT_BLK, sizeof(port));
    return port <= 0xffff ? port : 0;
}
