/*
 * hello: the only file of the `hello` container image (like Docker's hello-world).
 *
 * Freestanding x86-64 Linux: no libc, a handful of system calls, linked
 * static, so the image needs nothing else: FROM scratch.
 * System call numbers: arch/x86/entry/syscalls/syscall_64.tbl.
 *
 *   /hello            prints the greeting below and exits 0
 *   /hello --probe    prints what `pykvm compare` asks every workload for (the
 *                     kernel it sees, the boot_id, the hostname), in the same
 *                     "@@section" format as the busybox workload's shell script
 *                     (pykvm/comparison/workload.py), since this image has no shell.
 */
#define SYS_read       0   /* read(fd, buf, count) */
#define SYS_write      1   /* write(fd, buf, count) */
#define SYS_open       2   /* open(path, flags) */
#define SYS_close      3   /* close(fd) */
#define SYS_uname      63  /* uname(struct utsname *) */
#define SYS_exit_group 231 /* exit_group(status) */
#define STDOUT         1
#define O_RDONLY       0

/* struct new_utsname (include/uapi/linux/utsname.h): six fields of 65 bytes */
struct utsname {
    char sysname[65], nodename[65], release[65], version[65], machine[65], domainname[65];
};

static long syscall3(long number, long a, long b, long c)
{
    long ret;
    /* x86-64 syscall ABI: number in rax, arguments in rdi, rsi, rdx; rcx and r11 are clobbered */
    __asm__ volatile ("syscall" : "=a"(ret) : "a"(number), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return ret;
}

static long length(const char *s)
{
    long n = 0;
    while (s[n])
        n++;
    return n;
}

static void print(const char *s)
{
    syscall3(SYS_write, STDOUT, (long)s, length(s));
}

static int same(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}

static const char message[] =
    "Hello from pykvm!\n"
    "This message shows that your container image was built from a Dockerfile,\n"
    "stored as an OCI image, and started by a container runtime.\n";

/* What `uname -sr; cat /proc/sys/kernel/random/boot_id; hostname` would print. */
static void probe(void)
{
    static struct utsname uts;
    static char boot_id[64];
    long fd, n = 0;

    print("pykvm-compare: hello\n@@kernel\n");
    if (syscall3(SYS_uname, (long)&uts, 0, 0) == 0) {
        print(uts.sysname), print(" "), print(uts.release), print("\n");
    }
    print("@@boot_id\n");
    fd = syscall3(SYS_open, (long)"/proc/sys/kernel/random/boot_id", O_RDONLY, 0);
    if (fd >= 0) {
        n = syscall3(SYS_read, fd, (long)boot_id, sizeof boot_id - 1);
        syscall3(SYS_close, fd, 0, 0);
    }
    if (n > 0) {
        boot_id[n] = 0;
        print(boot_id);             /* the file ends in a newline */
    }
    print("@@hostname\n");
    print(uts.nodename), print("\n");
    print("@@end\n");
}

/* The kernel starts us with argc at the stack pointer, then argv[] (System V
 * x86-64 psABI, 3.4.1 "Initial Stack and Register State"); there is no libc to
 * hand them to a main(), so _start passes the stack pointer on itself. */
void hello_start(long *stack);
void hello_start(long *stack)
{
    long argc = stack[0];
    char **argv = (char **)(stack + 1);

    if (argc > 1 && same(argv[1], "--probe"))
        probe();
    else
        print(message);
    syscall3(SYS_exit_group, 0, 0, 0);
    for (;;)
        ;
}

__asm__(".globl _start\n"
        "_start:\n"
        "    mov  %rsp, %rdi\n"      /* hello_start(stack) */
        "    and  $-16, %rsp\n"      /* the ABI's 16-byte alignment at a call */
        "    call hello_start\n");
