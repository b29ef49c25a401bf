/*
 * syscall.c: the system calls.  trap.c calls syscall() for `int 0x80`
 * (vector 0x80, or the #UD it becomes on PVM); the arguments are the
 * user's registers, saved in the trap frame, and the result is written
 * back into the saved %rax, which trapret restores.
 */
#include "defs.h"
#include "memlayout.h"
#include "proc.h"
#include "syscall.h"

#define WRITE_MAX 4096             /* longest single write */

static int64_t sys_write(uint64_t buf, uint64_t len)
{
    if (len > WRITE_MAX)
        len = WRITE_MAX;
    if (!proc_user_range_ok(buf, len))
        return E_FAULT;            /* never touch memory the process does not own */
    kputs((const char *)buf, len);
    return len;
}

static int64_t sys_sleep(uint64_t ms)
{
    uint64_t nticks = (ms * TIMER_HZ + 999) / 1000;   /* round up: sleep at least ms */
    proc_sleep(nticks ? nticks : 1);
    return 0;
}

void syscall(struct trapframe *tf)
{
    switch (tf->rax) {
    case SYS_write:  tf->rax = sys_write(tf->rdi, tf->rsi); break;
    case SYS_getpid: tf->rax = current_pid(); break;
    case SYS_yield:  proc_yield(); tf->rax = 0; break;
    case SYS_sleep:  tf->rax = sys_sleep(tf->rdi); break;
    case SYS_exit:   proc_exit((int)tf->rdi);
    case SYS_getcpu: tf->rax = mycpu()->index; break;
    default:         tf->rax = E_NOSYS; break;
    }
}
