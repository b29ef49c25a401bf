/*
 * power.c: leaving the machine.  Three ways, all the same on QEMU -M pc
 * and on pykvm:
 *
 *  poweroff   ACPI: write SLP_TYP=0 (S5 on QEMU's PIIX4) | SLP_EN to the
 *             PM1a control register whose port the FADT names (ACPI 6.4,
 *             4.8.3.2.1, 5.2.9 and 16.1.4).  The VMM exits with status 0.
 *             We do not use the debug-exit device for this: QEMU's
 *             isa-debug-exit turns a written value V into exit status
 *             (V << 1) | 1, which is always odd, so status 0 is unreachable
 *             through it.  A machine with no PM1a block (QEMU microvm: ACPI
 *             "hardware-reduced", or no tables at all) leaves at once through
 *             the debug-exit port with value 0, exit status 1, if the VMM has one.
 *  debug_exit the isa-debug-exit port: exit status (V << 1) | 1, handy
 *             for tests that want a specific non-zero status (shell: exit N).
 *  reboot     the 8042 keyboard controller's "pulse reset line" command;
 *             if nothing happens, a triple fault (an exception with an
 *             empty IDT) resets any x86 machine.
 */
#include "defs.h"
#include "memlayout.h"
#include "x86.h"

static void __attribute__((noreturn)) halt_forever(void)
{
    for (;;) {
        cli();
        hlt();
    }
}

/* Some VMMs act on a power-off request a little later (QEMU: from its main
 * loop, which under a slow emulator such as nested TCG can take longer than
 * 100 ms of guest time); give them a second of timer ticks before complaining. */
static void wait_ticks(int n)
{
    for (uint64_t end = ticks + n; ticks < end;)
        sti_hlt();
}

static uint16_t pm1a_control_port;    /* from the FADT; 0: the machine has none */

void power_init(const struct hvm_start_info *si)
{
    pm1a_control_port = acpi_pm1a_control_port(si);
}

void poweroff(void)
{
    if (!pm1a_control_port) {
        kprintf("poweroff: no ACPI PM1a control block; leaving through debug-exit (status 1)\n");
        debug_exit(0);
    }
    outw(pm1a_control_port, PM1_SLP_EN);
    wait_ticks(TIMER_HZ);
    kprintf("poweroff: writing PM1a control port %x did nothing; trying debug-exit (status 1)\n",
            pm1a_control_port);
    debug_exit(0);
}

void debug_exit(uint8_t value)
{
    outb(DEBUG_EXIT_PORT, value);  /* QEMU and pykvm exit at once */
    kprintf("exit: no debug-exit device at port %x; halting\n", DEBUG_EXIT_PORT);
    halt_forever();
}

void reboot(void)
{
    struct dtr empty = { 0, 0 };

    outb(I8042_CMD, I8042_RESET);
    cli();
    lidt(&empty);
    __asm__ volatile("ud2");       /* #UD -> no IDT -> #DF -> triple fault -> reset */
    halt_forever();
}
