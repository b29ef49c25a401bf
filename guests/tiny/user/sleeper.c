/* sleeper: sleeps, so the CPU can halt or run others; also yields. */
#include "ulib.h"

int main(void)
{
    for (int i = 1; i <= 3; i++) {
        printf("sleeper: nap %d\n", i);
        sleep_ms(100);
        yield();
    }
    return 7;                      /* shows up as "exit 7" */
}
