/*
 * spin.c, built twice: as `ping` (WORD="ping") and `pong` (WORD="pong").
 * Between lines it computes for a while without any system call, so only
 * the timer can take the CPU away: `run ping pong` shows preemptive
 * scheduling as interleaved lines.
 */
#include "ulib.h"

#define ROUNDS 5
#define SPIN   20000000UL          /* ~20-50 ms of user-mode work: several time slices */

int main(void)
{
    int pid = getpid();
    for (int i = 1; i <= ROUNDS; i++) {
        printf("%s %d (pid %d)\n", WORD, i, pid);
        for (volatile unsigned long n = 0; n < SPIN; n++)
            ;
    }
    return 0;
}
