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
 */
#include "defs.h"
#include "memlayout.h"
#include "proc.h"
#include "x86.h"

#define RFLAGS_IF       0x200      /* interrupts enabled */
#define RFLAGS_RESERVED 0x002      /* bit 1 always reads as 1 */

struct proc procs[NPROC];
struct proc *current;
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
    set_name(shell, "shell");
    shell->pml4 = kernel_pml4();
    shell->kstack = (uint8_t *)boot_stack;
    current = shell;
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

/* A new process's kernel stack, top down: a trap frame that "returns" to
 * USER_BASE in ring 3, and below it a context whose rip is trapret.  The
 * first swtch to the process thus returns into trapret, which pops the
 * trap frame and iretq's into the program (SDM Vol. 3A, 6.14.3: IRET to a
 * less privileged level also pops RSP and SS). */
static void setup_kstack(struct proc *p)
{
    struct trapframe *tf = (struct trapframe *)(p->kstack + PAGE_SIZE) - 1;
    tf->rip = USER_BASE;
    tf->cs = SEL_UCODE;
    tf->rflags = RFLAGS_IF | RFLAGS_RESERVED;
    tf->rsp = USER_STACK_TOP;
    tf->ss = SEL_UDATA;
    struct context *ctx = (struct context *)tf - 1;
    ctx->rip = (uint64_t)trapret;
    p->context = ctx;
}

static void free_proc(struct proc *p)
{
    if (p->pml4)
        uvm_free(p->pml4);
    if (p->kstack)
        kfree(p->kstack);
    *p = (struct proc){ .state = UNUSED };
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
    p->pid = next_pid++;
    p->start_tick = ticks;
    p->state = RUNNABLE;
    return p->pid;
}

/* Round robin: the first RUNNABLE process after the current one, or the
 * current one itself if it is still runnable. */
static struct proc *pick_next(void)
{
    int here = current - procs;
    for (int i = 1; i <= NPROC; i++) {
        struct proc *p = &procs[(here + i) % NPROC];
        if (p->state == RUNNABLE)
            return p;
    }
    panic("no runnable process (the shell should always be)");
}

/* Run `next`.  The caller has already set current->state. */
static void switch_to(struct proc *next)
{
    struct proc *prev = current;
    next->state = RUNNING;
    if (next == prev)
        return;
    current = next;
    tss_set_kernel_stack((uint64_t)next->kstack + PAGE_SIZE);
    write_cr3((uint64_t)next->pml4);
    swtch(&prev->context, next->context);
}

void proc_yield(void)
{
    current->state = RUNNABLE;
    switch_to(pick_next());
}

void proc_sleep(uint64_t nticks)
{
    current->wake_tick = ticks + nticks;
    current->state = SLEEPING;
    switch_to(pick_next());
}

/* Called from the timer interrupt. */
void proc_wakeup(uint64_t now)
{
    for (int i = 1; i < NPROC; i++)
        if (procs[i].state == SLEEPING && procs[i].wake_tick <= now)
            procs[i].state = RUNNABLE;
}

static void __attribute__((noreturn)) become_zombie(int status)
{
    current->exit_status = status;
    current->state = ZOMBIE;
    switch_to(pick_next());
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
    for (int i = 1; i < NPROC; i++)
        if (procs[i].state == ZOMBIE)
            free_proc(&procs[i]);
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
    current->state = RUNNABLE;
    struct proc *next = pick_next();
    if (next == current) {
        current->state = RUNNING;
        sti_hlt();
    } else {
        switch_to(next);
    }
    sti();
}

void proc_dump(void)
{
    kprintf("PID  STATE     NAME\n");
    for (int i = 0; i < NPROC; i++)
        if (procs[i].state != UNUSED)
            kprintf("%3d  %9s %s\n", procs[i].pid, state_names[procs[i].state], procs[i].name);
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
