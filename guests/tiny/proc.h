/*
 * proc.h: a process, and the trap frame every interrupt leaves on its
 * kernel stack.
 */
#ifndef TINY_PROC_H
#define TINY_PROC_H
#include <stdint.h>

/* The registers as vectors.S saves them: lowest address first. */
struct trapframe {
    uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
    uint64_t rdi, rsi, rbp, rdx, rcx, rbx, rax;
    uint64_t vector, error;        /* pushed by the stub (error: by the CPU for some) */
    uint64_t rip, cs, rflags, rsp, ss;   /* pushed by the CPU */
};

/* What swtch.S saves: callee-saved registers and the return address. */
struct context {
    uint64_t r15, r14, r13, r12, rbx, rbp, rip;
};

enum procstate { UNUSED, RUNNABLE, RUNNING, SLEEPING, ZOMBIE };

#define NPROC 8

struct proc {
    int pid;
    enum procstate state;
    int cpu;                       /* the CPU it runs on, or last ran on; -1: not yet */
    int pinned;                    /* -1: any CPU may run it; else only that CPU */
    int deferred;                  /* runs only when its CPU has nothing else (a waiting shell) */
    char name[16];
    uint64_t *pml4;                /* this process's page tables */
    uint8_t *kstack;               /* one page; TSS.rsp0 points at its top */
    struct context *context;       /* saved by swtch when not running */
    uint64_t image_size;           /* bytes mapped at USER_BASE */
    uint64_t wake_tick;            /* SLEEPING until ticks >= wake_tick */
    uint64_t start_tick;
    int exit_status;
};

/* One per CPU (smp.c); mycpu() finds this CPU's. */
#define MAX_CPUS 8
struct cpu {
    struct cpu *self;              /* at %gs:0, so mycpu() is one load (smp.c) */
    int index;                     /* 0: the bootstrap processor */
    uint8_t apic_id;               /* its local APIC's id (the MADT's, CPUID's) */
    volatile int started;          /* set by the CPU itself once it runs */
    struct proc *proc;             /* the process it runs now */
    struct proc idle;              /* an AP's idle loop (the BSP idles in the shell) */
    int ncli;                      /* push_off depth (spinlock.c) */
    int intena;                    /* were interrupts on before the first push_off? */
    uint64_t timer_ticks;          /* timer interrupts it took */
    uint64_t user_ticks;           /* ... of which found it running a user program */
    uint64_t together_ticks;       /* ... while another CPU ran one too: parallelism, sampled */
    uint64_t switches;             /* context switches it made */
};
extern struct cpu cpus[MAX_CPUS];
extern int ncpu, ncpu_started;

/* The running process is per CPU. */
#define current (mycpu()->proc)

#endif
