/*
 * syscall.h: the system call numbers, shared by the kernel (syscall.c) and
 * the user library (user/ulib.h).
 *
 * ABI: `int 0x80` with the number in %rax and arguments in %rdi, %rsi,
 * %rdx (the System V function-call registers); the result comes back in
 * %rax.  Negative results are errors.
 */
#ifndef TINY_SYSCALL_H
#define TINY_SYSCALL_H

#define SYS_write  1   /* write(buf, len) -> bytes written           */
#define SYS_getpid 2   /* getpid() -> pid                            */
#define SYS_yield  3   /* yield() -> 0: let another process run      */
#define SYS_sleep  4   /* sleep(ms) -> 0: not runnable for ms        */
#define SYS_exit   5   /* exit(status): never returns                */
#define SYS_getcpu 6   /* getcpu() -> the CPU it runs on (0 = boot CPU) */

#define E_FAULT  (-14) /* a bad user pointer (Linux's EFAULT number)  */
#define E_NOSYS  (-38) /* no such system call (Linux's ENOSYS number) */

#endif
