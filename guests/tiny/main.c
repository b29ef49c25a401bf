/*
 * main.c: kmain, the kernel's table of contents.  entry.S calls it in long
 * mode on the boot stack with interrupts off.  Each step needs the ones
 * before it.
 */
#include "defs.h"
#include "memlayout.h"
#include "proc.h"
#include "pvh.h"
#include "x86.h"

#define CMDLINE_MAX 2048         /* as Linux on x86: room for a VMM's device words */

char boot_cmdline[CMDLINE_MAX];

/* Copy the command line out of VMM-owned memory (kalloc may reuse it). */
static void read_cmdline(const struct hvm_start_info *si)
{
    if (!si->cmdline_paddr || si->cmdline_paddr >= BOOT_MAP_END - CMDLINE_MAX)
        return;
    const char *s = (const char *)si->cmdline_paddr;
    for (int i = 0; i < CMDLINE_MAX - 1 && s[i]; i++)
        boot_cmdline[i] = s[i];
}

/* The commands after "run=" (to the end of the line, so they may contain
 * spaces): "console=ttyS0 run=echo hi;poweroff" -> "echo hi;poweroff".
 * A VMM may append words of its own (QEMU microvm: " virtio_mmio.device=");
 * the script stops before them. */
static const char *boot_script(void)
{
    static char script[CMDLINE_MAX];
    const char *p = boot_cmdline;

    while (*p && !((p == boot_cmdline || p[-1] == ' ') && strncmp(p, "run=", 4) == 0))
        p++;
    if (!*p)
        return "";
    p += 4;
    for (int n = 0; p[n] && strncmp(p + n, " virtio_mmio.device=", 20) != 0; n++)
        script[n] = p[n];
    return script;
}

void kmain(const struct hvm_start_info *si)
{
    cpu_local_init(&cpus[0]);   /* mycpu(): this is CPU 0, the bootstrap CPU    */
    gdt_init(0);        /* ring 0 and ring 3 segments, this CPU's TSS  */
    idt_init();         /* exception and interrupt gates                */
    pic_init();         /* IRQs to vectors 32-47, all masked            */
    serial_init();      /* the console; unmasks IRQ 4                   */
    kprintf("\n%s %s: booting\n", KERNEL_NAME, KERNEL_VERSION);
    if (si->magic != XEN_HVM_START_MAGIC_VALUE)
        panic("not started through PVH: start info magic %x", si->magic);
    read_cmdline(si);
    mm_init(si);        /* memory map, page allocator, own page tables  */
    pic_virtual_wire(); /* the PIC's output to the CPU: LAPIC LINT0     */
    smp_init(si);       /* the CPUs the ACPI MADT lists; the local APIC */
    power_init(si);     /* the PM1a control port the ACPI FADT names    */
    proc_init();        /* this thread becomes process 0, the shell     */
    pit_init();         /* 100 Hz timer on IRQ 0                        */
    sti();
    smp_start_aps();    /* INIT-SIPI-SIPI: the other CPUs join in        */
    kprintf("%s %s: %lu MiB RAM, %d CPU%s, timer %d Hz, %d user programs. Type 'help'.\n",
            KERNEL_NAME, KERNEL_VERSION, ram_bytes >> 20, ncpu_started, ncpu_started > 1 ? "s" : "",
            TIMER_HZ, userprog_count);
    net_init(boot_cmdline);      /* ip= : the network address, if any  */
    virtio_init(boot_cmdline);   /* virtio_mmio.device= words: disks, network card */
    shell_run(boot_script());
}
