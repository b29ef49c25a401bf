/*
 * hello: the only file of the `hello` container image (like Docker's hello-world).
 *
 * Freestanding x86-64 Linux: no libc, two system calls (write, exit_group),
 * linked static, so the image needs nothing else: FROM scratch.
 * System call numbers: arch/x86/entry/syscalls/syscall_64.tbl.
 */
#define SYS_write      1   /* write(fd, buf, count) */
#define SYS_exit_group 231 /* exit_group(status) */
#define STDOUT         1

static long syscall3(long number, long a, long b, long c)
{
    long ret;
    /* x86-64 syscall ABI: number in rax, arguments in rdi, rsi, rdx; rcx and r11 are clobbered */
    __asm__ volatile ("syscall" : "=a"(ret) : "a"(number), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return ret;
}

static const char message[] =
    "Hello from pykvm!\n"
    "This message shows that your container image was built from a Dockerfile,\n"
    "stored as an OCI image, and started by a container runtime.\n";

void _start(void)
{
    syscall3(SYS_write, STDOUT, (long)message, sizeof message - 1);
    syscall3(SYS_exit_group, 0, 0, 0);
    for (;;)
        ;
}
