/*
 * lapic.c: each CPU's local APIC, through its registers at 0xFEE00000
 * (xAPIC mode, memory-mapped; Intel SDM Vol. 3A, chapter 10 "Advanced
 * Programmable Interrupt Controller").  tiny uses it for three things:
 *
 *   - which CPU am I: the ID register (mycpu() in smp.c);
 *   - starting the other CPUs: INIT and start-up IPIs through the ICR;
 *   - a periodic timer on the application processors, for preemption
 *     (the 8254 PIT reaches only the bootstrap processor, through the PIC).
 */
#include "defs.h"
#include "memlayout.h"
#include "x86.h"

#define LAPIC_ID        0x020      /* bits 31..24: this CPU's APIC id */
#define LAPIC_EOI       0x0B0      /* write 0: end of interrupt */
#define LAPIC_SVR       0x0F0      /* spurious-interrupt vector register */
#define LAPIC_ICR_LOW   0x300      /* interrupt command register: writing it sends */
#define LAPIC_ICR_HIGH  0x310      /* bits 31..24: destination APIC id */
#define LAPIC_LVT_TIMER 0x320      /* timer: vector, mode, mask */
#define LAPIC_TIMER_INIT 0x380     /* initial count */
#define LAPIC_TIMER_DIV 0x3E0      /* divide configuration */

#define SVR_ENABLE      0x100      /* APIC software enable */
#define SPURIOUS_VECTOR (T_IRQ0 + 15)   /* shares the PIC's spurious IRQ 15: no EOI */
#define ICR_INIT        0x500      /* delivery mode INIT */
#define ICR_STARTUP     0x600      /* delivery mode start-up (SIPI); vector = page number */
#define ICR_ASSERT      0x4000     /* level: assert */
#define ICR_PENDING     0x1000     /* delivery status: send pending */
#define TIMER_PERIODIC  0x20000    /* LVT timer mode bits 18..17 = 01 */
#define TIMER_DIVIDE_1  0xB        /* divide configuration 1011: by 1 */
/* KVM's and QEMU's APIC timers count at 1 GHz: 10,000,000 counts = 10 ms = TIMER_HZ. */
#define TIMER_COUNT     (1000000000 / TIMER_HZ)

static uint32_t lapic_read(uint32_t reg) { return mmio_read32(LAPIC_BASE + reg); }
static void lapic_write(uint32_t reg, uint32_t v) { mmio_write32(LAPIC_BASE + reg, v); }

uint8_t lapic_id(void)
{
    return lapic_read(LAPIC_ID) >> 24;
}

/* Software-enable this CPU's APIC; with `timer`, a periodic TIMER_HZ interrupt. */
void lapic_init(int timer)
{
    lapic_write(LAPIC_SVR, SVR_ENABLE | SPURIOUS_VECTOR);
    if (timer) {
        lapic_write(LAPIC_TIMER_DIV, TIMER_DIVIDE_1);
        lapic_write(LAPIC_LVT_TIMER, TIMER_PERIODIC | T_LAPIC_TIMER);
        lapic_write(LAPIC_TIMER_INIT, TIMER_COUNT);
    }
}

void lapic_eoi(void)
{
    lapic_write(LAPIC_EOI, 0);
}

static void send_ipi(uint8_t apic_id, uint32_t command)
{
    lapic_write(LAPIC_ICR_HIGH, (uint32_t)apic_id << 24);
    lapic_write(LAPIC_ICR_LOW, command);
    while (lapic_read(LAPIC_ICR_LOW) & ICR_PENDING)
        ;
}

void lapic_send_init(uint8_t apic_id)
{
    send_ipi(apic_id, ICR_INIT | ICR_ASSERT);
}

/* Start-up IPI: the CPU starts in real mode at CS:IP = (page << 8):0000. */
void lapic_send_startup(uint8_t apic_id, uint64_t page_address)
{
    send_ipi(apic_id, ICR_STARTUP | ICR_ASSERT | (uint32_t)(page_address >> 12));
}
