/*
 * smp.c: the CPUs.  Finding them (the ACPI MADT), telling them apart
 * (mycpu), and starting the application processors (APs), which the
 * firmware leaves waiting for a start-up IPI while only the bootstrap
 * processor (BSP) runs (Intel SDM Vol. 3A, 8.4 "Multiple-Processor (MP)
 * Initialization").  For each AP the BSP:
 *
 *   1. copies trampoline.S to AP_TRAMPOLINE and gives it the kernel's page
 *      tables, a stack (one page, which becomes the AP's idle process's
 *      kernel stack) and the C function to call, ap_main;
 *   2. sends INIT, waits 10 ms, sends a start-up IPI (SIPI), and a second
 *      one if the AP has not answered ("INIT-SIPI-SIPI", SDM 8.4.4.1);
 *   3. waits until the AP says it runs (cpu->started), one AP at a time
 *      since they share the trampoline's parameters.
 * Then each AP loads its own GDT and TSS, the shared IDT, enables its
 * local APIC's timer, and enters the scheduler as its idle process.
 */
#include "defs.h"
#include "memlayout.h"
#include "proc.h"
#include "pvh.h"
#include "x86.h"

#define START_TIMEOUT_TICKS TIMER_HZ   /* 1 s for an AP to answer */
#define INIT_DELAY_TICKS    1          /* 10 ms between INIT and SIPI */

struct cpu cpus[MAX_CPUS];
int ncpu = 1;                      /* CPUs the MADT lists (1 without a MADT) */
int ncpu_started = 1;              /* ... of which are running: the BSP, and the APs that answered */
static struct cpu *cpu_by_apic_id[256];

extern const char trampoline_start[], trampoline_end[];
extern const char trampoline_cr3[], trampoline_stack[], trampoline_entry[];
#define TRAMPOLINE_PARAM(sym) (*(volatile uint64_t *)(AP_TRAMPOLINE + ((sym) - trampoline_start)))

/* This CPU's struct cpu.  Each CPU keeps its address in its GS base
 * (written once by cpu_local_init): reading %gs:0 is one load, where
 * asking the local APIC for its id would cost an emulated MMIO read on
 * every call.  User programs have a GS base of their own; vectors.S swaps
 * the two with SWAPGS at every entry from ring 3 and exit to it (SDM Vol.
 * 2B, SWAPGS).  Interrupts should be off while the answer is used (tiny's
 * kernel code never migrates between CPUs anyway: only ring 3 is preempted). */
struct cpu *mycpu(void)
{
    struct cpu *c;
    __asm__ volatile("mov %%gs:0, %0" : "=r"(c));
    return c;
}

/* Point this CPU's GS base at `c`; the user's GS base (0) waits in KERNEL_GS_BASE. */
void cpu_local_init(struct cpu *c)
{
    c->self = c;
    wrmsr(MSR_GS_BASE, (uint64_t)c);
    wrmsr(MSR_KERNEL_GS_BASE, 0);
}

/* Find the CPUs, map the local APIC; the BSP is cpus[0]. */
void smp_init(const struct hvm_start_info *si)
{
    uint8_t ids[MAX_CPUS];
    int n = acpi_cpu_apic_ids(si, ids, MAX_CPUS);

    if (!mmio_map(LAPIC_BASE, PAGE_SIZE))
        panic("cannot map the local APIC at %lx", LAPIC_BASE);
    uint8_t bsp = lapic_id();
    cpus[0].apic_id = bsp;
    cpus[0].started = 1;
    ncpu = 1;
    for (int i = 0; i < n; i++) {
        if (ids[i] == bsp)
            continue;
        cpus[ncpu] = (struct cpu){ .self = &cpus[ncpu], .index = ncpu, .apic_id = ids[i] };
        ncpu++;
    }
    for (int i = 0; i < ncpu; i++)
        cpu_by_apic_id[cpus[i].apic_id] = &cpus[i];
    lapic_init(0);                  /* the BSP's timer is the PIT */
}

static void wait_ticks_or_started(struct cpu *c, uint64_t n)
{
    for (uint64_t end = ticks + n; ticks < end && !c->started;)
        sti_hlt();
}

/* The C side of an AP's start: per-CPU descriptor tables, its APIC, then idle. */
static void __attribute__((noreturn)) ap_main(void)
{
    struct cpu *c = cpu_by_apic_id[lapic_id()];
    cpu_local_init(c);
    gdt_init(c->index);
    idt_load();
    lapic_init(1);
    proc_init_idle(c);
    __atomic_store_n(&c->started, 1, __ATOMIC_RELEASE);
    proc_idle();
}

static int start_ap(struct cpu *c)
{
    uint8_t *stack = kalloc();
    if (!stack)
        return 0;
    c->idle.kstack = stack;
    memcpy((void *)AP_TRAMPOLINE, trampoline_start, trampoline_end - trampoline_start);
    TRAMPOLINE_PARAM(trampoline_cr3) = (uint64_t)kernel_pml4();
    TRAMPOLINE_PARAM(trampoline_stack) = (uint64_t)stack + PAGE_SIZE;
    TRAMPOLINE_PARAM(trampoline_entry) = (uint64_t)ap_main;
    lapic_send_init(c->apic_id);
    wait_ticks_or_started(c, INIT_DELAY_TICKS);
    for (int sipi = 0; sipi < 2 && !c->started; sipi++) {
        lapic_send_startup(c->apic_id, AP_TRAMPOLINE);
        wait_ticks_or_started(c, sipi == 0 ? 1 : START_TIMEOUT_TICKS);
    }
    return c->started;
}

/* Start every AP; called by the BSP with its timer ticking. */
void smp_start_aps(void)
{
    for (int i = 1; i < ncpu; i++) {
        if (start_ap(&cpus[i]))
            ncpu_started++;
        else
            kprintf("smp: cpu %d (APIC id %d) did not start\n", i, cpus[i].apic_id);
    }
}

/* The shell's `cpus`: each CPU, its APIC id, its timer ticks (all, in user
 * mode, in user mode while another CPU was too), its switches, what it runs. */
void smp_dump(void)
{
    uint64_t together = 0;
    kprintf("%d CPU%s in the ACPI MADT, %d running\n", ncpu, ncpu > 1 ? "s" : "", ncpu_started);
    kprintf("CPU  APIC  TICKS   USER  TOGETHER  SWITCHES  RUNNING\n");
    for (int i = 0; i < ncpu; i++) {
        struct cpu *c = &cpus[i];
        if (!c->started) {
            kprintf("%3d  %4d  (not started)\n", i, c->apic_id);
            continue;
        }
        kprintf("%3d  %4d  %5lu  %5lu  %8lu  %8lu  %s (pid %d)\n", i, c->apic_id, c->timer_ticks,
                c->user_ticks, c->together_ticks, c->switches, c->proc->name, c->proc->pid);
        together += c->together_ticks;
    }
    kprintf("user programs ran on two CPUs at once at %lu timer ticks\n", together);
}
