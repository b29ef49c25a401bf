/*
 * pit.c: the 8254 programmable interval timer, channel 0, on IRQ 0.
 *
 * The PIT counts down at 1.193182 MHz; in mode 2 ("rate generator") it
 * raises IRQ 0 each time the count reaches zero and reloads.  A divisor of
 * 11932 gives 100.0 Hz.  Intel 8254 datasheet, "Control Word Format".
 */
#include "defs.h"
#include "x86.h"

#define PIT_CH0       0x40         /* channel 0 data port */
#define PIT_CMD       0x43         /* mode/command register */
#define PIT_CH0_MODE2 0x34         /* channel 0, lobyte/hibyte, mode 2, binary */
#define PIT_HZ        1193182      /* input clock */
#define PIT_DIVISOR   ((PIT_HZ + TIMER_HZ / 2) / TIMER_HZ)

volatile uint64_t ticks;           /* timer interrupts since boot */

void pit_init(void)
{
    outb(PIT_CMD, PIT_CH0_MODE2);
    outb(PIT_CH0, PIT_DIVISOR & 0xff);
    outb(PIT_CH0, PIT_DIVISOR >> 8);
    pic_unmask(IRQ_TIMER);
}

/* IRQ 0.  Kept tiny: count, and wake the processes whose sleep is over. */
void timer_intr(void)
{
    ticks++;
    proc_wakeup(ticks);
}
