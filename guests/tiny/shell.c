/*
 * shell.c: the command interpreter on the serial console.  It runs as
 * process 0, in kernel mode: first the commands from the kernel command
 * line ("run=info;poweroff"), then whatever arrives on the serial port.
 */
#include "defs.h"
#include "memlayout.h"
#include "x86.h"

#define LINE_MAX 128
#define MAX_ARGS 8
#define PROMPT "tiny$ "
#define CPUID_VENDOR        0x00000000   /* vendor string in ebx, edx, ecx */
#define CPUID_FEATURES      0x00000001
#define CPUID_ECX_HYPERVISOR (1u << 31)  /* "hypervisor present" bit      */
#define CPUID_HV_SIGNATURE  0x40000000   /* hypervisor signature in ebx, ecx, edx */
#define ASCII_DEL 0x7f
#define ASCII_BS  0x08

struct command {
    const char *name;
    const char *args;
    const char *help;
    void (*run)(int argc, char **argv);
};

static void cmd_help(int argc, char **argv);   /* it lists commands[], defined below */

/* CPUID returns strings as 4 bytes per register; b, c, d say where in the
 * string ebx, ecx and edx go (0 = first 4 bytes). */
static void cpuid_string(uint32_t leaf, char out[13], int b, int c, int d)
{
    uint32_t r[4];
    cpuid(leaf, r);
    memcpy(out + 4 * b, &r[1], 4);
    memcpy(out + 4 * c, &r[2], 4);
    memcpy(out + 4 * d, &r[3], 4);
    out[12] = 0;
}

static void cmd_info(int argc, char **argv)
{
    (void)argc, (void)argv;
    char vendor[13], hypervisor[13] = "none";
    uint32_t r[4];

    cpuid_string(CPUID_VENDOR, vendor, 0, 2, 1);           /* "Genu" "ineI" "ntel": ebx edx ecx */
    cpuid(CPUID_FEATURES, r);
    if (r[2] & CPUID_ECX_HYPERVISOR)
        cpuid_string(CPUID_HV_SIGNATURE, hypervisor, 0, 1, 2);   /* ebx ecx edx */
    kprintf("kernel:     %s %s (x86-64)\n", KERNEL_NAME, KERNEL_VERSION);
    kprintf("boot:       PVH (hvm_start_info version 1)\n");
    kprintf("cpu:        %s\n", vendor);
    kprintf("hypervisor: %s\n", hypervisor);
    kprintf("memory:     %lu MiB\n", ram_bytes >> 20);
    kprintf("timer:      8254 PIT at %d Hz\n", TIMER_HZ);
    kprintf("cmdline:    %s\n", boot_cmdline);
}

static void cmd_uptime(int argc, char **argv)
{
    (void)argc, (void)argv;
    uint64_t t = ticks;
    kprintf("up %lu.%02lu s (%lu ticks at %d Hz)\n", t / TIMER_HZ, t % TIMER_HZ * 100 / TIMER_HZ, t,
            TIMER_HZ);
}

static const char *memtype(uint32_t type)
{
    static const char *const names[] = { "?", "ram", "reserved", "acpi", "acpi nvs", "bad" };
    return type < ARRAY_SIZE(names) ? names[type] : "?";
}

static void cmd_mem(int argc, char **argv)
{
    (void)argc, (void)argv;
    uint64_t total, free;

    kprintf("memory map (from hvm_start_info):\n");
    for (int i = 0; i < memmap_count; i++)
        kprintf("  %016lx-%016lx %s\n", memmap[i].addr, memmap[i].addr + memmap[i].size - 1,
                memtype(memmap[i].type));
    kprintf("kernel image: %lx-%lx (%lu KiB)\n", (uint64_t)__kernel_start, (uint64_t)__kernel_end,
            (uint64_t)(__kernel_end - __kernel_start) >> 10);
    mm_stats(&total, &free);
    kprintf("pages: %lu total, %lu used, %lu free (4 KiB each)\n", total, total - free, free);
}

static void cmd_echo(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        kprintf(i + 1 < argc ? "%s " : "%s", argv[i]);
    kprintf("\n");
}

static void cmd_ps(int argc, char **argv)
{
    (void)argc, (void)argv;
    proc_dump();
}

static void cmd_cpus(int argc, char **argv)
{
    (void)argc, (void)argv;
    smp_dump();
}

static int any_alive(const int *pids, int n)
{
    for (int i = 0; i < n; i++)
        if (proc_alive(pids[i]))
            return 1;
    return 0;
}

/* Start each named program; wait for all of them unless the last word is "&". */
static void cmd_run(int argc, char **argv)
{
    int pids[MAX_ARGS], n = 0, background = argc > 1 && strcmp(argv[argc - 1], "&") == 0;

    if (argc < 2) {
        for (int i = 0; i < userprog_count; i++)
            kprintf("  %8s %s\n", userprogs[i].name, userprogs[i].about);
        return;
    }
    for (int i = 1; i < argc - background; i++) {
        int pid = proc_spawn(argv[i]);
        if (pid == -1)
            kprintf("run: no program '%s' (try 'run' for a list)\n", argv[i]);
        else if (pid < 0)
            kprintf("run: no memory or process slot for '%s'\n", argv[i]);
        else
            pids[n++] = pid;
    }
    while (!background) {
        cli();
        if (!any_alive(pids, n)) {
            sti();
            break;
        }
        wait_for_programs();
    }
    proc_reap();
}

static void cmd_fault(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "kernel") == 0) {
        kprintf("reading address 0 in kernel mode...\n");
        (void)*(volatile uint64_t *)0;   /* page 0 is unmapped (mm.c): #PF, panic */
    }
    char *run_fault[] = { "run", "fault" };
    cmd_run(2, run_fault);
}

static void cmd_poweroff(int argc, char **argv)
{
    (void)argc, (void)argv;
    poweroff();
}

static void cmd_reboot(int argc, char **argv)
{
    (void)argc, (void)argv;
    reboot();
}

static void cmd_exit(int argc, char **argv)
{
    int status = 0;
    for (const char *p = argc > 1 ? argv[1] : ""; *p >= '0' && *p <= '9'; p++)
        status = status * 10 + (*p - '0');
    debug_exit(status);
}

static const struct command commands[] = {
    { "help", "", "this list", cmd_help },
    { "info", "", "kernel, boot protocol, CPU, hypervisor, memory", cmd_info },
    { "uptime", "", "time since boot, from the timer's tick count", cmd_uptime },
    { "mem", "", "memory map and page allocator", cmd_mem },
    { "echo", "WORDS", "print WORDS", cmd_echo },
    { "ps", "", "process table", cmd_ps },
    { "cpus", "", "the CPUs, and what each one runs", cmd_cpus },
    { "run", "PROG.. [&]", "start user programs (no PROG: list them)", cmd_run },
    { "fault", "[kernel]", "page fault in a user program (or the kernel)", cmd_fault },
    { "disk", "", "virtio disks: capacity, read-only, ID", cmd_disk },
    { "dread", "[vdX] N", "hex dump of disk sector N", cmd_dread },
    { "dwrite", "[vdX] N ..", "write the words after N to disk sector N", cmd_dwrite },
    { "dbench", "seq|rand N", "time N MiB of 1 MiB reads (seq) or N 4 KiB reads", cmd_dbench },
    { "net", "", "network card: MAC, address, frame counters", cmd_net },
    { "ping", "ADDR [N]", "N ICMP echo requests (default 3), answers printed", cmd_ping },
    { "poweroff", "", "ACPI power off: the VMM exits with status 0", cmd_poweroff },
    { "reboot", "", "reset through the 8042 keyboard controller", cmd_reboot },
    { "exit", "N", "debug-exit port: the VMM exits with status 2N+1", cmd_exit },
};
static const int ncommands = ARRAY_SIZE(commands);

static void cmd_help(int argc, char **argv)
{
    (void)argc, (void)argv;
    for (int i = 0; i < ncommands; i++)
        kprintf("  %8s %10s %s\n", commands[i].name, commands[i].args, commands[i].help);
}

/* Split line in place into words; returns their number. */
static int split(char *line, char **argv)
{
    int argc = 0;
    while (*line && argc < MAX_ARGS) {
        while (*line == ' ')
            *line++ = 0;
        if (!*line)
            break;
        argv[argc++] = line;
        while (*line && *line != ' ')
            line++;
    }
    return argc;
}

static void execute(char *line)
{
    char *argv[MAX_ARGS];
    int argc = split(line, argv);

    if (argc == 0)
        return;
    for (int i = 0; i < ncommands; i++) {
        if (strcmp(argv[0], commands[i].name) == 0) {
            commands[i].run(argc, argv);
            return;
        }
    }
    kprintf("%s: unknown command (try 'help')\n", argv[0]);
}

/* Read a line from the console with echo and backspace. */
static void read_line(char *buf)
{
    static int last_was_cr;
    int n = 0;

    for (;;) {
        int c = serial_getc();
        if (c == '\n' && last_was_cr) {   /* CR LF: the LF is not a second line */
            last_was_cr = 0;
            continue;
        }
        last_was_cr = c == '\r';
        if (c == '\r' || c == '\n') {
            serial_putc('\n');
            buf[n] = 0;
            return;
        }
        if ((c == ASCII_DEL || c == ASCII_BS) && n > 0) {
            n--;
            kprintf("\b \b");
        } else if (c >= ' ' && c < ASCII_DEL && n < LINE_MAX - 1) {
            buf[n++] = c;
            serial_putc(c);
        }
    }
}

/* Run the ';'-separated boot script, then read commands forever. */
void shell_run(const char *script)
{
    char line[LINE_MAX];

    while (*script) {
        int n = 0;
        while (*script && *script != ';')
            if (n < LINE_MAX - 1)
                line[n++] = *script++;
            else
                script++;
        line[n] = 0;
        if (*script == ';')
            script++;
        kprintf(PROMPT "%s\n", line);
        execute(line);
    }
    for (;;) {
        kprintf(PROMPT);
        read_line(line);
        execute(line);
    }
}
