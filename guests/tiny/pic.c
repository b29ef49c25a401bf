/*
 * pic.c: the two cascaded 8259A programmable interrupt controllers.
 *
 * After reset the master PIC delivers IRQs 0-7 on vectors 8-15, on top of
 * the CPU's exception vectors, so every PC kernel first moves ("remaps")
 * them.  Initialisation sequence: Intel 8259A datasheet, "Initialization
 * Command Words" ICW1..ICW4.
 */
#include "defs.h"
#include "memlayout.h"
#include "x86.h"

#define PIC1_CMD   0x20     /* master: command port */
#define PIC1_DATA  0x21     /* master: data port (interrupt mask) */
#define PIC2_CMD   0xa0     /* slave */
#define PIC2_DATA  0xa1
#define ICW1_INIT  0x11     /* ICW1: initialise, ICW4 follows, edge-triggered, cascade */
#define ICW4_8086  0x01     /* ICW4: 8086 mode, normal (not automatic) EOI */
#define PIC_EOI    0x20     /* OCW2: non-specific end of interrupt */
#define OCW3_READ_ISR 0x0b  /* OCW3: the next read of the command port gives the ISR */
#define CASCADE_IRQ 2       /* the slave hangs off master IRQ 2 */

/* Local APIC registers (SDM Vol. 3A, Table 10-1), offsets from LAPIC_BASE. */
#define LAPIC_SVR        0x0f0     /* spurious-interrupt vector register      */
#define LAPIC_SVR_ENABLE 0x100     /* bit 8: APIC software enable             */
#define LAPIC_LVT_LINT0  0x350     /* what arrives on pin LINT0               */
#define LVT_EXTINT       0x700     /* delivery mode 111: ask the 8259 for the vector */
/* The vector of the APIC's spurious interrupt (rare; it needs no EOI):
 * trap() finds IRQ 15 not in service at the 8259 and takes it as the
 * 8259's own spurious IRQ 15 (pic_spurious). */
#define LAPIC_SPURIOUS_VECTOR (T_IRQ0 + 15)

static uint16_t mask = 0xffff & ~(1 << CASCADE_IRQ);   /* 1 = masked */

static void write_masks(void)
{
    outb(PIC1_DATA, mask & 0xff);
    outb(PIC2_DATA, mask >> 8);
}

void pic_init(void)
{
    outb(PIC1_CMD, ICW1_INIT);
    outb(PIC2_CMD, ICW1_INIT);
    outb(PIC1_DATA, T_IRQ0);            /* ICW2: master vectors 32-39 */
    outb(PIC2_DATA, T_IRQ0 + 8);        /* ICW2: slave vectors 40-47 */
    outb(PIC1_DATA, 1 << CASCADE_IRQ);  /* ICW3: master has a slave on IRQ 2 */
    outb(PIC2_DATA, CASCADE_IRQ);       /* ICW3: slave's cascade identity */
    outb(PIC1_DATA, ICW4_8086);
    outb(PIC2_DATA, ICW4_8086);
    write_masks();                      /* everything off until a driver asks */
}

/* The 8259's output reaches the CPU through the local APIC's LINT0 pin,
 * which must be in ExtINT mode ("virtual wire", MP spec 1.4, 3.6.2.2).
 * Firmware usually sets this up (SeaBIOS on QEMU -M pc, pykvm's boot
 * state), but not all of it: QEMU microvm's qboot leaves LINT0 masked, and
 * then no timer tick ever arrives.  So tiny sets it itself, as Linux does.
 * An LVT entry can only be unmasked while the APIC is software-enabled
 * (SDM Vol. 3A, 10.4.7.2), hence SVR first.  Needs the page tables (mm.c). */
void pic_virtual_wire(void)
{
    volatile uint8_t *lapic = mmio_map(LAPIC_BASE, PAGE_SIZE);
    if (!lapic)
        panic("cannot map the local APIC at %lx", LAPIC_BASE);
    *(volatile uint32_t *)(lapic + LAPIC_SVR) = LAPIC_SVR_ENABLE | LAPIC_SPURIOUS_VECTOR;
    *(volatile uint32_t *)(lapic + LAPIC_LVT_LINT0) = LVT_EXTINT;
}

void pic_unmask(int irq)
{
    mask &= ~(1 << irq);
    write_masks();
}

/* Is this IRQ 7 or 15 spurious?  The 8259A raises one on IRQ 7 when a
 * request went away before the CPU acknowledged it; its in-service bit is
 * then clear, and it must get no EOI (8259A datasheet, "Interrupt
 * Sequence").  A spurious IRQ 15 still leaves the cascade IRQ 2 in
 * service at the master: that one gets its EOI here. */
int pic_spurious(int irq)
{
    uint16_t port = irq < 8 ? PIC1_CMD : PIC2_CMD;
    outb(port, OCW3_READ_ISR);
    if (inb(port) & (1 << (irq & 7)))
        return 0;
    if (irq >= 8)
        outb(PIC1_CMD, PIC_EOI);
    return 1;
}

/* Tell the PIC(s) the interrupt has been handled, so it can deliver the
 * next one of equal or lower priority. */
void pic_eoi(int irq)
{
    if (irq >= 8)
        outb(PIC2_CMD, PIC_EOI);
    outb(PIC1_CMD, PIC_EOI);
}
