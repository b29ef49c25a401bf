/*
 * pic.c: the two cascaded 8259A programmable interrupt controllers.
 *
 * After reset the master PIC delivers IRQs 0-7 on vectors 8-15, on top of
 * the CPU's exception vectors, so every PC kernel first moves ("remaps")
 * them.  Initialisation sequence: Intel 8259A datasheet, "Initialization
 * Command Words" ICW1..ICW4.
 */
#include "defs.h"
#include "x86.h"

#define PIC1_CMD   0x20     /* master: command port */
#define PIC1_DATA  0x21     /* master: data port (interrupt mask) */
#define PIC2_CMD   0xa0     /* slave */
#define PIC2_DATA  0xa1
#define ICW1_INIT  0x11     /* ICW1: initialise, ICW4 follows, edge-triggered, cascade */
#define ICW4_8086  0x01     /* ICW4: 8086 mode, normal (not automatic) EOI */
#define PIC_EOI    0x20     /* OCW2: non-specific end of interrupt */
#define CASCADE_IRQ 2       /* the slave hangs off master IRQ 2 */

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

void pic_unmask(int irq)
{
    mask &= ~(1 << irq);
    write_masks();
}

/* Tell the PIC(s) the interrupt has been handled, so it can deliver the
 * next one of equal or lower priority. */
void pic_eoi(int irq)
{
    if (irq >= 8)
        outb(PIC2_CMD, PIC_EOI);
    outb(PIC1_CMD, PIC_EOI);
}
