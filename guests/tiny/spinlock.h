/*
 * spinlock.h: mutual exclusion between CPUs (xv6's spinlock, in x86-64).
 *
 * A CPU takes a lock by atomically swapping 1 into `locked` (XCHG with a
 * memory operand is always locked: SDM Vol. 3A, 9.1.2.1) until the old
 * value was 0.  While it holds a lock its interrupts are off (push_off), so
 * an interrupt handler on the same CPU can never spin on a lock that the
 * code it interrupted holds.
 */
#ifndef TINY_SPINLOCK_H
#define TINY_SPINLOCK_H
#include <stdint.h>

struct spinlock {
    volatile uint32_t locked;      /* 1 while held */
    int cpu;                       /* index of the holding CPU, -1 if none */
    const char *name;              /* for panics */
};

#define SPINLOCK_INIT(lock_name) { 0, -1, lock_name }

void acquire(struct spinlock *lock);
void release(struct spinlock *lock);
int holding(const struct spinlock *lock);
void push_off(void);
void pop_off(void);

#endif
