/*
 * counter: counts up once every 200 ms, forever (or until the VM stops).
 * `run counter &` leaves it counting beside the shell: a running program
 * whose state lives in registers and memory, the thing a snapshot of the
 * VM must bring back exactly (docs/07-snapshots.md).
 */
#include "ulib.h"

#define PERIOD_MS 200

int main(void)
{
    for (int n = 1;; n++) {
        printf("count %d\n", n);
        sleep_ms(PERIOD_MS);
    }
}
