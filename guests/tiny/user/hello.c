/* hello: the smallest user program. */
#include "ulib.h"

int main(void)
{
    printf("hello from user mode, pid %d\n", (int)getpid());
    return 0;
}
