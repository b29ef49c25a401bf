/*
 * fault: reads the kernel's memory from ring 3.  The kernel's pages are
 * mapped (PML4 entry 0) but without the U/S bit, so the CPU raises a page
 * fault with error code 5 (present, user, read).  The kernel prints it and
 * kills this program; the shell carries on.
 */
#include "ulib.h"

#define KERNEL_IMAGE 0x100000      /* memlayout.h: KERNEL_BASE */

int main(void)
{
    printf("fault: reading kernel memory at 0x100000 from ring 3\n");
    volatile uint64_t *p = (volatile uint64_t *)KERNEL_IMAGE;
    printf("fault: read %d: the kernel is not protected!\n", (int)*p);
    return 1;
}
