/*
 * defs.h: what each file of the kernel offers the others, file by file
 * (the same map as xv6's defs.h).
 */
#ifndef TINY_DEFS_H
#define TINY_DEFS_H
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#define KERNEL_NAME    "tiny"
#define KERNEL_VERSION "1.0"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

struct hvm_start_info;
struct trapframe;
struct proc;
struct cpu;

/* gdt.c: segment selectors (index * 8 | requested privilege level) */
#define SEL_KCODE 0x08
#define SEL_KDATA 0x10
#define SEL_UDATA (0x18 | 3)
#define SEL_UCODE (0x20 | 3)
#define SEL_TSS   0x28
void gdt_init(int cpu);
void tss_set_kernel_stack(uint64_t rsp0);

/* serial.c: the 16550 UART on COM1 */
void serial_init(void);
void serial_putc(char c);
void serial_intr(void);
int serial_getc(void);

/* printf.c */
void kprintf(const char *fmt, ...);
void kvprintf(const char *fmt, va_list ap);
void kputs(const char *s, size_t len);
void panic(const char *fmt, ...) __attribute__((noreturn));

/* string.c */
void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);

/* trap.c: IDT, exceptions, interrupt dispatch */
#define T_UD       6                /* invalid opcode        */
#define T_PF       14               /* page fault            */
#define T_IRQ0     32               /* PIC IRQ 0 lands here  */
#define T_LAPIC_TIMER 48            /* each AP's local APIC timer */
#define T_SYSCALL  0x80             /* int 0x80              */
void idt_init(void);
void irq_register(int irq, void (*handler)(int irq));
void idt_load(void);

/* pic.c: the two 8259A interrupt controllers */
#define IRQ_TIMER 0
#define IRQ_COM1  4
#define PIC_IRQS  16                /* two 8259As: IRQs 0-15 */
void pic_init(void);
void pic_virtual_wire(void);
void pic_unmask(int irq);
void pic_eoi(int irq);
int pic_spurious(int irq);

/* pit.c: the 8254 timer */
#define TIMER_HZ 100
extern volatile uint64_t ticks;
void pit_init(void);
void timer_intr(void);

/* mm.c: memory map, physical pages, page tables */
struct memregion {
    uint64_t addr, size;
    uint32_t type;
};
void mm_init(const struct hvm_start_info *si);
void *kalloc(void);
void *kalloc_contiguous(uint64_t npages);
void kfree(void *page);
uint64_t *kernel_pml4(void);
uint64_t *uvm_create(void);
int uvm_map(uint64_t *pml4, uint64_t va, void *page);
void uvm_free(uint64_t *pml4);
void mm_stats(uint64_t *total_pages, uint64_t *free_pages);
void *mmio_map(uint64_t pa, uint64_t size);
extern struct memregion memmap[];
extern int memmap_count;
extern uint64_t ram_bytes;

/* proc.c: processes and the scheduler */
void proc_init(void);
int proc_spawn(const char *prog);
void proc_exit(int status) __attribute__((noreturn));
void proc_kill_current(const char *why) __attribute__((noreturn));
void proc_wakeup(uint64_t now);
void proc_yield(void);
void proc_sleep(uint64_t nticks);
void proc_reap(void);
int proc_alive(int pid);
void wait_for_interrupt(void);
void wait_for_programs(void);
void proc_dump(void);
int proc_user_range_ok(uint64_t addr, uint64_t len);
void proc_init_idle(struct cpu *c);
void proc_idle(void) __attribute__((noreturn));
int current_pid(void);

/* smp.c, lapic.c, acpi.c: the CPUs */
struct cpu *mycpu(void);
void cpu_local_init(struct cpu *c);
void smp_init(const struct hvm_start_info *si);
void smp_start_aps(void);
void smp_dump(void);
uint8_t lapic_id(void);
void lapic_init(int timer);
void lapic_eoi(void);
void lapic_send_init(uint8_t apic_id);
void lapic_send_startup(uint8_t apic_id, uint64_t page_address);
int acpi_cpu_apic_ids(const struct hvm_start_info *si, uint8_t *ids, int max);
uint16_t acpi_pm1a_control_port(const struct hvm_start_info *si);

/* userbins.S: the user programs linked into the kernel image */
struct userprog {
    const char *name;
    const uint8_t *start;
    const uint8_t *end;
    const char *about;
};
const struct userprog *userprog_find(const char *name);
extern const struct userprog userprogs[];
extern const int userprog_count;

/* syscall.c */
void syscall(struct trapframe *tf);

/* shell.c */
void shell_run(const char *cmdline);

/* power.c */
void power_init(const struct hvm_start_info *si);
void poweroff(void) __attribute__((noreturn));
void reboot(void) __attribute__((noreturn));
void debug_exit(uint8_t value) __attribute__((noreturn));

/* virtio_mmio.c: virtio devices named on the command line (virtio.h has the rest) */
void virtio_init(const char *cmdline);

/* disk.c: the shell's disk commands, on virtio_blk.c */
void cmd_disk(int argc, char **argv);
void cmd_dread(int argc, char **argv);
void cmd_dwrite(int argc, char **argv);
void cmd_dbench(int argc, char **argv);

/* net.c: ip= from the command line; the shell's network commands */
void net_init(const char *cmdline);
void cmd_net(int argc, char **argv);
void cmd_ping(int argc, char **argv);

/* main.c */
extern char boot_cmdline[];

/* linker symbols (kernel.ld) */
extern char __kernel_start[], __kernel_end[];

#endif
