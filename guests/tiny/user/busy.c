/*
 * busy: CPU-bound work in user mode, reporting which CPU each round ran
 * on.  `run busy busy` on two CPUs shows two programs computing at the
 * same time, one per CPU; on one CPU they take turns.  The same work
 * measures the speed-up of a second CPU (tests/bench/bench_smp.py).
 */
#include "ulib.h"

#define ROUNDS 4
#define WORK   40000000UL          /* ~50 ms of user-mode arithmetic per round */

int main(void)
{
    int pid = getpid();
    for (int i = 1; i <= ROUNDS; i++) {
        for (volatile unsigned long n = 0; n < WORK; n++)
            ;
        printf("busy %d: round %d on cpu %d\n", pid, i, (int)getcpu());
    }
    return 0;
}
