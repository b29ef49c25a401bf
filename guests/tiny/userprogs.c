/*
 * userprogs.c: the table of user programs `run` can start (userprogs.S
 * holds their bytes).  To add a program: write user/NAME.c, add NAME to
 * UPROGS in the Makefile, a USERPROG line in userbins.S and a line here.
 */
#include "defs.h"

#define DECLARE(name) extern const uint8_t userprog_##name##_start[], userprog_##name##_end[]
#define ENTRY(name, about) { #name, userprog_##name##_start, userprog_##name##_end, about }

DECLARE(hello);
DECLARE(ping);
DECLARE(pong);
DECLARE(sleeper);
DECLARE(fault);
DECLARE(busy);
DECLARE(counter);
DECLARE(flood);

const struct userprog userprogs[] = {
    ENTRY(hello, "print a greeting and the pid, exit 0"),
    ENTRY(ping, "print 'ping' 5 times, computing in between (run with pong)"),
    ENTRY(pong, "print 'pong' 5 times, computing in between"),
    ENTRY(sleeper, "sleep 100 ms 3 times, yielding in between"),
    ENTRY(fault, "read kernel memory from ring 3: a page fault"),
    ENTRY(busy, "compute 4 rounds, saying on which CPU (run two on two CPUs)"),
    ENTRY(counter, "print 'count N' every 200 ms, forever (run with &)"),
    ENTRY(flood, "write 64 KiB of text to the console, as fast as it goes"),
};
const int userprog_count = ARRAY_SIZE(userprogs);

const struct userprog *userprog_find(const char *name)
{
    for (int i = 0; i < userprog_count; i++)
        if (strcmp(userprogs[i].name, name) == 0)
            return &userprogs[i];
    return NULL;
}
