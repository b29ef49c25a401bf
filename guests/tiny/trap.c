/*
 * trap.c: the Interrupt Descriptor Table and what happens after vectors.S.
 *
 * One gate per vector (SDM Vol. 3A, 6.14.1 "64-Bit Mode IDT"): exceptions
 * 0-31, the PIC's IRQs 32-47, the local APIC timer 48 and the system call
 * gate 0x80.  Every CPU loads the same table.  All are
 * interrupt gates, so the CPU clears IF on entry: the kernel runs its
 * trap paths with interrupts off, which keeps them simple and short.
 */
#include "defs.h"
#include "proc.h"
#include "x86.h"

#define GATE_INTERRUPT 0x8e        /* present, DPL 0, type 0xE: 64-bit interrupt gate */
#define GATE_DPL3      0x60        /* DPL 3: `int` from ring 3 may use the gate */
#define NUM_VECTORS    256
#define NUM_STUBS      49          /* vectors 0..48 have stubs in vectors.S */
#define PF_PRESENT     0x1         /* #PF error code bits, SDM Vol. 3A, 4.7 */
#define PF_WRITE       0x2
#define PF_USER        0x4
#define PF_FETCH       0x10
#define INT80_OPCODE_0 0xcd        /* `int imm8` */
#define INT80_OPCODE_1 0x80

struct __attribute__((packed)) gate {
    uint16_t offset_low;
    uint16_t selector;
    uint8_t ist;
    uint8_t type_attr;
    uint16_t offset_mid;
    uint32_t offset_high;
    uint32_t reserved;
};

static struct gate idt[NUM_VECTORS];
static void (*irq_handlers[PIC_IRQS])(int irq);   /* drivers' IRQs (irq_register) */
extern const uint64_t trap_stubs[NUM_STUBS];
extern const uint64_t trap_stub_syscall;

static const char *const exception_names[32] = {
    "#DE divide error", "#DB debug", "NMI", "#BP breakpoint", "#OF overflow",
    "#BR bound range", "#UD invalid opcode", "#NM device not available",
    "#DF double fault", "coprocessor overrun", "#TS invalid TSS", "#NP segment not present",
    "#SS stack fault", "#GP general protection", "#PF page fault", "reserved",
    "#MF x87 error", "#AC alignment check", "#MC machine check", "#XM SIMD error",
    "#VE virtualization", "#CP control protection",
};

static void set_gate(int vector, uint64_t handler, uint8_t type_attr)
{
    idt[vector] = (struct gate){
        .offset_low = handler & 0xffff,
        .selector = SEL_KCODE,
        .type_attr = type_attr,
        .offset_mid = (handler >> 16) & 0xffff,
        .offset_high = handler >> 32,
    };
}

void idt_init(void)
{
    struct dtr ptr = { sizeof(idt) - 1, (uint64_t)idt };

    for (int v = 0; v < NUM_STUBS; v++)
        set_gate(v, trap_stubs[v], GATE_INTERRUPT);
    set_gate(T_SYSCALL, trap_stub_syscall, GATE_INTERRUPT | GATE_DPL3);
    lidt(&ptr);
}

/* A driver's handler for a PIC IRQ; unmasks the IRQ. */
void irq_register(int irq, void (*handler)(int irq))
{
    irq_handlers[irq] = handler;
    pic_unmask(irq);
}

/* An IRQ with no fixed case in trap(): its driver's handler, then EOI. */
static void device_irq(int irq)
{
    if (irq < PIC_IRQS && irq_handlers[irq])
        irq_handlers[irq](irq);
    pic_eoi(irq);
}

/* An AP loads the table the BSP built. */
void idt_load(void)
{
    struct dtr ptr = { sizeof(idt) - 1, (uint64_t)idt };
    lidt(&ptr);
}

static int from_user(const struct trapframe *tf)
{
    return (tf->cs & 3) == 3;
}

static void dump_registers(const struct trapframe *tf)
{
    kprintf("  rax %p rbx %p rcx %p\n", tf->rax, tf->rbx, tf->rcx);
    kprintf("  rdx %p rsi %p rdi %p\n", tf->rdx, tf->rsi, tf->rdi);
    kprintf("  rbp %p rsp %p r8  %p\n", tf->rbp, tf->rsp, tf->r8);
    kprintf("  r9  %p r10 %p r11 %p\n", tf->r9, tf->r10, tf->r11);
    kprintf("  r12 %p r13 %p r14 %p\n", tf->r12, tf->r13, tf->r14);
    kprintf("  r15 %p rip %p rfl %p\n", tf->r15, tf->rip, tf->rflags);
    kprintf("  cs %x ss %x\n", (unsigned)tf->cs, (unsigned)tf->ss);
}

static void describe_page_fault(uint64_t err)
{
    kprintf("  cr2 %p (%s %s, %s)\n", read_cr2(),
            err & PF_USER ? "user" : "kernel",
            err & PF_FETCH ? "instruction fetch" : err & PF_WRITE ? "write" : "read",
            err & PF_PRESENT ? "protection violation" : "page not present");
}

/* A CPU exception: report it; a user program dies, the kernel panics. */
static void exception(struct trapframe *tf)
{
    const char *name = tf->vector < 32 && exception_names[tf->vector]
                           ? exception_names[tf->vector] : "unknown";
    kprintf("\nexception %d (%s), error code %x, rip %p, %s mode\n", (int)tf->vector, name,
            (unsigned)tf->error, tf->rip, from_user(tf) ? "user" : "kernel");
    if (tf->vector == T_PF)
        describe_page_fault(tf->error);
    dump_registers(tf);
    if (!from_user(tf))
        panic("exception in kernel mode");
    proc_kill_current(name);
}

/* Is the #UD at a user `int 0x80`?  Why this can happen: on this project's
 * PVM-backed KVM the guest's ring 3 runs natively in a host user process,
 * where `int 0x80` is not delivered through our IDT but comes back as an
 * invalid-opcode exception with RIP still pointing at the instruction.  On
 * hardware KVM and QEMU TCG the same instruction arrives as vector 0x80
 * with RIP after it.  Accepting both keeps one system call ABI everywhere. */
static int is_int80(const struct trapframe *tf)
{
    if (!from_user(tf) || !proc_user_range_ok(tf->rip, 2))
        return 0;
    const uint8_t *insn = (const uint8_t *)tf->rip;
    return insn[0] == INT80_OPCODE_0 && insn[1] == INT80_OPCODE_1;
}

/* A timer tick on this CPU: count it, and whether it caught a user program
 * running here while another CPU ran one too (the evidence, sampled 100
 * times a second, that two programs run at the same time). */
static void count_tick(const struct trapframe *tf)
{
    struct cpu *c = mycpu();
    c->timer_ticks++;
    if (!from_user(tf))
        return;
    c->user_ticks++;
    for (int i = 0; i < ncpu; i++) {
        struct proc *other = cpus[i].proc;
        if (&cpus[i] != c && other && other->pid > 0 && other->state == RUNNING) {
            c->together_ticks++;
            return;
        }
    }
}

/* Called by alltraps (vectors.S) for every interrupt and exception. */
void trap(struct trapframe *tf)
{
    switch (tf->vector) {
    case T_IRQ0 + IRQ_TIMER:       /* the PIT, on the bootstrap processor */
        pic_eoi(IRQ_TIMER);
        timer_intr();
        count_tick(tf);
        if (from_user(tf))
            proc_yield();          /* preemption: the time slice is over */
        break;
    case T_LAPIC_TIMER:            /* an AP's own timer */
        lapic_eoi();
        count_tick(tf);
        if (from_user(tf))
            proc_yield();
        break;
    case T_IRQ0 + IRQ_COM1:
        serial_intr();
        pic_eoi(IRQ_COM1);
        break;
    case T_IRQ0 + 7:               /* maybe spurious (pic.c): then no EOI */
    case T_IRQ0 + 15:
        if (!pic_spurious(tf->vector - T_IRQ0))
            device_irq(tf->vector - T_IRQ0);
        break;
    case T_SYSCALL:
        syscall(tf);
        break;
    case T_UD:
        if (is_int80(tf)) {
            tf->rip += 2;          /* as if the CPU had executed `int 0x80` */
            syscall(tf);
            break;
        }
        exception(tf);
        break;
    default:
        if (tf->vector < 32)
            exception(tf);
        else
            device_irq(tf->vector - T_IRQ0);
    }
}
