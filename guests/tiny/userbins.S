/*
 * userbins.S: the user programs, linked into the kernel image as flat
 * binaries (built from user/ by the Makefile, linked at USER_BASE).
 * userprogs.c lists them by name.
 */
.macro USERPROG name
    .section .rodata
    .balign 16
    .globl userprog_\name\()_start, userprog_\name\()_end
userprog_\name\()_start:
    .incbin "build/user/\name\().bin"
userprog_\name\()_end:
.endm

    USERPROG hello
    USERPROG ping
    USERPROG pong
    USERPROG sleeper
    USERPROG fault
    USERPROG busy
    USERPROG counter
    USERPROG flood
