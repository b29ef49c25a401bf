/*
 * void swtch(struct context **save, struct context *load);
 *
 * The context switch, as in xv6: push the registers the C calling
 * convention says a callee must preserve (System V AMD64 ABI, 3.2.1),
 * store the stack pointer in *save, load the other process's stack
 * pointer, pop its registers and return -- into the other process, at
 * the point where it once called swtch (or at trapret for a new one).
 */
    .text
    .globl swtch
swtch:
    push %rbp
    push %rbx
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, (%rdi)
    mov %rsi, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbx
    pop %rbp
    ret
