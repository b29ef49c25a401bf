/*
 * spinlock.c: acquire and release a spinlock; push_off/pop_off, the
 * nesting "interrupts off" that every held lock implies (xv6's pushcli).
 */
#include "defs.h"
#include "proc.h"
#include "spinlock.h"
#include "x86.h"

void acquire(struct spinlock *lock)
{
    push_off();
    if (holding(lock))
        panic("acquire: cpu %d already holds %s", mycpu()->index, lock->name);
    while (__atomic_exchange_n(&lock->locked, 1, __ATOMIC_ACQUIRE))
        __asm__ volatile("pause");     /* spin-wait hint (SDM Vol. 2B, PAUSE) */
    lock->cpu = mycpu()->index;
}

void release(struct spinlock *lock)
{
    if (!holding(lock))
        panic("release: cpu %d does not hold %s", mycpu()->index, lock->name);
    lock->cpu = -1;
    __atomic_store_n(&lock->locked, 0, __ATOMIC_RELEASE);
    pop_off();
}

/* Is this CPU the holder?  Call with interrupts off. */
int holding(const struct spinlock *lock)
{
    return lock->locked && lock->cpu == mycpu()->index;
}

/* Interrupts off, counted: the first push_off remembers whether they were
 * on, the matching last pop_off turns them back on if so. */
void push_off(void)
{
    int enabled = interrupts_enabled();
    cli();
    struct cpu *c = mycpu();
    if (c->ncli++ == 0)
        c->intena = enabled;
}

void pop_off(void)
{
    struct cpu *c = mycpu();
    if (interrupts_enabled())
        panic("pop_off: interrupts are on");
    if (--c->ncli < 0)
        panic("pop_off: unbalanced");
    if (c->ncli == 0 && c->intena)
        sti();
}
