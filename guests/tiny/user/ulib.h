/*
 * ulib.h: the user programs' whole C library: the six system calls and
 * two printing helpers.  System call ABI: see ../syscall.h.
 */
#ifndef TINY_ULIB_H
#define TINY_ULIB_H
#include <stdint.h>
#include "../syscall.h"

static inline long syscall3(long n, long a, long b, long c)
{
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c) : "memory");
    return ret;
}

static inline long write(const char *buf, unsigned long len) { return syscall3(SYS_write, (long)buf, len, 0); }
static inline long getpid(void) { return syscall3(SYS_getpid, 0, 0, 0); }
static inline long yield(void) { return syscall3(SYS_yield, 0, 0, 0); }
static inline long sleep_ms(unsigned long ms) { return syscall3(SYS_sleep, ms, 0, 0); }
static inline long getcpu(void) { return syscall3(SYS_getcpu, 0, 0, 0); }
static inline void __attribute__((noreturn)) exit(int status)
{
    syscall3(SYS_exit, status, 0, 0);
    for (;;)
        ;
}

/* printf("...%s...%d...") with just those two conversions; one write. */
void printf(const char *fmt, ...);

#endif
