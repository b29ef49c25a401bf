/*
 * vectors.S: the first instructions of every interrupt and exception.
 *
 * On an interrupt the CPU switches to the kernel stack (TSS.rsp0 when it
 * came from ring 3) and pushes SS, RSP, RFLAGS, CS, RIP and, for some
 * exceptions, an error code (SDM Vol. 3A, 6.14.2 "64-Bit Mode Stack
 * Frame").  Each stub below pushes a 0 where the CPU pushed no error code,
 * then its vector number, so that every trap reaches alltraps with the
 * same layout: struct trapframe in trap.c.
 */

/* Exceptions that push an error code (SDM Vol. 3A, Table 6-1). */
#define HAS_ERROR_CODE(n) ((n) == 8 || ((n) >= 10 && (n) <= 14) || (n) == 17 || (n) == 21 || (n) == 29 || (n) == 30)

.macro VECTOR n
    .balign 16
vector\n:
    .if !HAS_ERROR_CODE(\n)
    push $0
    .endif
    push $\n
    jmp alltraps
.endm

    .text
    /* 0-31: CPU exceptions; 32-47: the 16 PIC IRQs (pic.c); 48: the local
     * APIC timer (lapic.c); 0x80: int 0x80. */
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    VECTOR \n
    .endr
    .irp n, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,128
    VECTOR \n
    .endr

/* Save the general registers, call trap(tf), restore, return.  Coming
 * from ring 3 (the saved CS's low bits), SWAPGS first: the kernel's GS
 * base points at this CPU's struct cpu (smp.c), the user's is kept aside
 * until the return. */
#define CS_AT_ENTRY 24              /* vector, error code, rip, then cs */
#define CS_AT_IRETQ 8               /* rip, then cs */
alltraps:
    testb $3, CS_AT_ENTRY(%rsp)
    jz 1f
    swapgs
1:  push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rbp
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rdi              /* 22 quadwords pushed: %rsp is 16-byte aligned */
    call trap
    .globl trapret
trapret:                        /* also where a new process starts (proc.c) */
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rbp
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    add $16, %rsp               /* vector number and error code */
    testb $3, CS_AT_IRETQ(%rsp)
    jz 2f
    swapgs
2:  iretq

/* The stub addresses, for idt.c to put in the gate descriptors. */
    .section .rodata
    .balign 8
    .globl trap_stubs
trap_stubs:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad vector\n
    .endr
    .irp n, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48
    .quad vector\n
    .endr
    .globl trap_stub_syscall
trap_stub_syscall:
    .quad vector128
