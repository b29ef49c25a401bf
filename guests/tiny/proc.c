/*
 * proc.c: processes and the scheduler.
 *
 * Process 0 is the shell: it runs in kernel mode on the boot stack and is
 * always runnable, so there is always something to run; when it has
 * nothing to do it halts the CPU (wait_for_interrupt).  Processes 1.. are
 * user programs in ring 3, each with its own page tables and a one-page
 * kernel stack that receives its traps.
 *
 * Switching happens only inside the kernel, by swtch.S, on three
 * occasions: the timer interrupts a user program (preemption, trap.c),
 * a program gives up the CPU (yield, sleep, exit: syscall.c), or the shell
 * waits.  Scheduling is round robin over the process table.
 *
 * Several CPUs share the table: each runs its own `current` (struct cpu,
 * smp.c) and picks the next RUNNABLE process itself.  One spinlock,
 * ptable_lock, guards every process's state, and it is held *across* a
 * switch, as in xv6: the process giving up the CPU takes it, the process
 * switched to releases it.  Until then no other CPU can pick the first
 * one, whose registers swtch is still saving.  The shell is pinned to
 * CPU 0 (it owns the console's input); each AP has an idle process of its
 * own that runs when nothing else can.
 */
#include "defs.h"
#include "memlayout.h"
#include "proc.h"
#include "spinlock.h"
#include "x86.h"

#define RFLAGS_RESERVED 0x002      /* bit 1 always reads as 1 */

struct proc procs[NPROC];
static struct spinlock ptable_lock = SPINLOCK_INIT("ptable");
static int next_pid = 1;

void swtch(struct context **save, struct context *load);
extern char trapret[];
extern char boot_stack[];

static const char *const state_names[] = {
    [UNUSED] = "unused", [RUNNABLE] = "runnable", [RUNNING] = "running",
    [SLEEPING] = "sleeping", [ZOMBIE] = "zombie",
};

static void set_name(struct proc *p, const char *name)
{
    size_t n = strlen(name);
    if (n >= sizeof(p->name))
        n = sizeof(p->name) - 1;
    memcpy(p->name, name, n);
    p->name[n] = 0;
}

void proc_init(void)
{
    struct proc *shell = &procs[0];
    shell->pid = 0;
    shell->state = RUNNING;
    shell->cpu = shell->pinned = 0;
    set_name(shell, "shell");
    shell->pml4 = kernel_pml4();
    shell->kstack = (uint8_t *)boot_stack;
    current = shell;
}

/* An AP's boot thread becomes its idle process (its stack: smp.c's). */
void proc_init_idle(struct cpu *c)
{
    struct proc *idle = &c->idle;
    idle->pid = 0;
    idle->state = RUNNING;
    idle->cpu = idle->pinned = c->index;
    set_name(idle, "idle");
    idle->pml4 = kernel_pml4();
    c->proc = idle;
}

int current_pid(void)
{
    return current->pid;
}

/* Copy the program image to fresh pages at USER_BASE; add a stack below
 * USER_STACK_TOP.  Returns 0, or -1 when memory runs out. */
static int load_image(struct proc *p, const struct userprog *prog)
{
    uint64_t size = prog->end - prog->start;
    if (size > USER_MAX_IMAGE)
        return -1;
    for (uint64_t off = 0; off < size; off += PAGE_SIZE) {
        uint8_t *page = kalloc();
        if (!page || uvm_map(p->pml4, USER_BASE + off, page) < 0)
            return -1;
        memcpy(page, prog->start + off, size - off < PAGE_SIZE ? size - off : PAGE_SIZE);
    }
    p->image_size = (size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
    for (uint64_t va = USER_STACK_BOTTOM; va < USER_STACK_TOP; va += PAGE_SIZE) {
        void *page = kalloc();
        if (!page || uvm_map(p->pml4, va, page) < 0)
            return -1;
    }
    return 0;
}

/* A new process's first instructions in the kernel: it was switched to
 * with ptable_lock held, like any process, so it releases it; then it
 * returns into trapret. */
static void first_run(void)
{
    release(&ptable_lock);
}

/* A new process's kernel stack, top down: a trap frame that "returns" to
 * USER_BASE in ring 3, trapret's address, and a context whose rip is
 * first_run.  The first swtch to the process thus runs first_run, which
 * returns into trapret, which pops the trap frame and iretq's into the
 * program (SDM Vol. 3A, 6.14.3: IRET to a less privileged level also pops
 * RSP and SS). */
static void setup_kstack(struct proc *p)
{
    struct trapframe *tf = (struct trapframe *)(p->kstack + PAGE_SIZE) - 1;
    tf->rip = USER_BASE;
    tf->cs = SEL_UCODE;
    tf->rflags = RFLAGS_IF | RFLAGS_RESERVED;
    tf->rsp = USER_STACK_TOP;
    tf->ss = SEL_UDATA;
    uint64_t *return_address = (uint64_t *)tf - 1;   /* where first_run returns */
    *return_address = (uint64_t)trapret;
    struct context *ctx = (struct context *)return_address - 1;
    ctx->rip = (uint64_t)first_run;
    p->context = ctx;
}

static void free_proc(struct proc *p)
{
    if (p->pml4)
        uvm_free(p->pml4);
    if (p->kstack)
        kfree(p->kstack);
    *p = (struct proc){ .state = UNUSED, .cpu = -1, .pinned = -1 };
}

/* Start user program `name`.  Returns its pid; -1: no such program;
 * -2: no free process slot or memory. */
int proc_spawn(const char *name)
{
    const struct userprog *prog = userprog_find(name);
    if (!prog)
        return -1;
    struct proc *p = NULL;
    for (int i = 1; i < NPROC && !p; i++)
        if (procs[i].state == UNUSED)
            p = &procs[i];
    if (!p)
        return -2;
    p->pml4 = uvm_create();
    p->kstack = kalloc();
    if (!p->pml4 || !p->kstack || load_image(p, prog) < 0) {
        free_proc(p);
        return -2;
    }
    setup_kstack(p);
    set_name(p, prog->name);
    p->cpu = p->pinned = -1;
    p->start_tick = ticks;
    acquire(&ptable_lock);
    p->pid = next_pid++;
    p->state = RUNNABLE;           /* from here on, any CPU may pick it */
    int pid = p->pid;
    release(&ptable_lock);
    return pid;
}

/* May CPU `c` run `p` now?  Pass 0 takes only processes that last ran on
 * `c` (or never ran): their cache is warm there, and two busy programs stay
 * on their two CPUs instead of trading places at every tick.  Pass 1 takes
 * any (an idle CPU takes work from a busy one).  Pass 2 also takes deferred
 * processes: the shell waiting for its programs only polls, so it runs when
 * nothing else can. */
static int can_run(const struct cpu *c, const struct proc *p, int pass)
{
    return p->state == RUNNABLE && (p->pinned < 0 || p->pinned == c->index) &&
           (pass > 0 || p->cpu < 0 || p->cpu == c->index) && (pass == 2 || !p->deferred);
}

/* Round robin, for CPU `c`: the first runnable process after the current
 * one (the current one last), by the passes of can_run; else the CPU's
 * idle process.  Call with ptable_lock held. */
static struct proc *pick_next(struct cpu *c)
{
    struct proc *cur = c->proc;
    int here = cur >= procs && cur < procs + NPROC ? cur - procs : 0;
    for (int pass = 0; pass <= 2; pass++) {
        for (int i = 1; i <= NPROC; i++) {
            struct proc *p = &procs[(here + i) % NPROC];
            if (can_run(c, p, pass))
                return p;
        }
    }
    if (cur->state == RUNNABLE)
        return cur;
    if (c->index == 0)
        panic("no runnable process (the shell should always be)");
    return &c->idle;
}

/* Run `next` on this CPU.  The caller holds ptable_lock and has set
 * current->state; the process switched to releases the lock. */
static void switch_to(struct cpu *c, struct proc *next)
{
    struct proc *prev = c->proc;
    next->state = RUNNING;
    next->cpu = c->index;
    if (next == prev)
        return;
    c->proc = next;
    c->switches++;
    tss_set_kernel_stack((uint64_t)next->kstack + PAGE_SIZE);
    write_cr3((uint64_t)next->pml4);
    int intena = c->intena;        /* belongs to this kernel thread, not to the CPU */
    swtch(&prev->context, next->context);
    mycpu()->intena = intena;      /* back, perhaps on another CPU */
}

/* Give up the CPU in state `state` (RUNNABLE or SLEEPING). */
static void reschedule(enum procstate state)
{
    acquire(&ptable_lock);
    struct cpu *c = mycpu();
    c->proc->state = state;
    switch_to(c, pick_next(c));
    release(&ptable_lock);
}

/* Is another process, not a deferred one, runnable on `c`?  Read without
 * the lock: a hint that spares the common case (a timer tick with nothing
 * else to run) the lock and the scheduler, which cost much in an emulated
 * kernel.  A process that becomes runnable just after is seen at the next tick. */
static int others_runnable(const struct cpu *c)
{
    for (int i = 0; i < NPROC; i++)
        if (&procs[i] != c->proc && can_run(c, &procs[i], 1))
            return 1;
    return 0;
}

void proc_yield(void)
{
    if (others_runnable(mycpu()))
        reschedule(RUNNABLE);
}

void proc_sleep(uint64_t nticks)
{
    current->wake_tick = ticks + nticks;
    reschedule(SLEEPING);
}

/* Called from the timer interrupt. */
void proc_wakeup(uint64_t now)
{
    int due = 0;                   /* a hint without the lock, as in others_runnable */
    for (int i = 1; i < NPROC && !due; i++)
        due = procs[i].state == SLEEPING && procs[i].wake_tick <= now;
    if (!due)
        return;
    acquire(&ptable_lock);
    for (int i = 1; i < NPROC; i++)
        if (procs[i].state == SLEEPING && procs[i].wake_tick <= now)
            procs[i].state = RUNNABLE;
    release(&ptable_lock);
}

static void __attribute__((noreturn)) become_zombie(int status)
{
    acquire(&ptable_lock);
    struct cpu *c = mycpu();
    c->proc->exit_status = status;
    c->proc->state = ZOMBIE;
    switch_to(c, pick_next(c));
    panic("zombie %d ran again", current->pid);
}

void proc_exit(int status)
{
    kprintf("[%d %s] exit %d\n", current->pid, current->name, status);
    become_zombie(status);
}

void proc_kill_current(const char *why)
{
    kprintf("[%d %s] killed: %s\n", current->pid, current->name, why);
    become_zombie(-1);
}

/* The shell frees what exited processes owned.  (A process cannot free its
 * own kernel stack: it is standing on it.) */
void proc_reap(void)
{
    acquire(&ptable_lock);         /* a zombie's CPU is done with its stack once the lock is free */
    for (int i = 1; i < NPROC; i++)
        if (procs[i].state == ZOMBIE)
            free_proc(&procs[i]);
    release(&ptable_lock);
}

int proc_alive(int pid)
{
    for (int i = 1; i < NPROC; i++)
        if (procs[i].pid == pid && (procs[i].state == RUNNABLE || procs[i].state == RUNNING ||
                                    procs[i].state == SLEEPING))
            return 1;
    return 0;
}

/* The shell's idle step, entered with interrupts off: run a user program
 * if one is runnable, else halt until the next interrupt (timer or
 * serial).  Halting, not spinning, matters here: kernel mode is emulated. */
void wait_for_interrupt(void)
{
    acquire(&ptable_lock);
    struct cpu *c = mycpu();
    c->proc->state = RUNNABLE;
    struct proc *next = pick_next(c);
    if (next == c->proc) {
        next->state = RUNNING;
        release(&ptable_lock);
        sti_hlt();
    } else {
        switch_to(c, next);
        release(&ptable_lock);
    }
    sti();
}

/* The shell waiting for its programs: as wait_for_interrupt, but deferred
 * meanwhile, so the programs on its CPU are not interrupted at every tick
 * to let it check on them. */
void wait_for_programs(void)
{
    current->deferred = 1;
    wait_for_interrupt();
    current->deferred = 0;
}

/* An AP's idle process: run whatever is runnable, else halt until the next timer tick. */
void proc_idle(void)
{
    for (;;) {
        cli();
        wait_for_interrupt();
    }
}

/* `ps`: a snapshot taken under the lock, printed after it (printing is slow:
 * another CPU should not spin on ptable_lock meanwhile). */
void proc_dump(void)
{
    struct proc snapshot[NPROC];
    acquire(&ptable_lock);
    memcpy(snapshot, procs, sizeof(procs));
    release(&ptable_lock);
    kprintf("PID  STATE     CPU  NAME\n");
    for (int i = 0; i < NPROC; i++) {
        struct proc *p = &snapshot[i];
        if (p->state == UNUSED)
            continue;
        if (p->cpu < 0)
            kprintf("%3d  %9s   -  %s\n", p->pid, state_names[p->state], p->name);
        else
            kprintf("%3d  %9s %3d  %s\n", p->pid, state_names[p->state], p->cpu, p->name);
    }
}

/* Is [addr, addr+len) inside the current process's code/data or stack?
 * System calls check every user pointer with this before touching it. */
int proc_user_range_ok(uint64_t addr, uint64_t len)
{
    uint64_t end = addr + len;
    if (current->pid == 0 || end < addr)
        return 0;
    if (addr >= USER_BASE && end <= USER_BASE + current->image_size)
        return 1;
    return addr >= USER_STACK_BOTTOM && end <= USER_STACK_TOP;
}
