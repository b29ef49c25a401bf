/* crt0.S: a user program starts here, at USER_BASE, with %rsp at the top
 * of its stack (16-byte aligned).  exit(main()). */
#include "../syscall.h"
    .section .text.entry, "ax"
    .globl _start
_start:
    call main
    mov %eax, %edi
    mov $SYS_exit, %eax
    int $0x80
1:  jmp 1b
