"""cffi build script for pykvm's KVM bindings (API mode).

Why API mode: cffi's ABI mode trusts our declarations blindly, and a slightly
misdeclared struct corrupts memory.  In API mode the C compiler reads
<linux/kvm.h> and <asm/bootparam.h> (the Linux boot protocol's zero page)
itself: every `...;` below asks it for the real offsets, every
`#define NAME ...` asks it for the real value.  So no struct layout and no
ioctl number in pykvm is typed by hand; if the header and this file ever
disagree, the build fails instead of the VM.

Built by `pip install` (setup.py names this file in cffi_modules) into the
extension module `pykvm.vm.kvm._kvm_cffi`.
"""
from pathlib import Path

from cffi import FFI

ffibuilder = FFI()
HERE = Path(__file__).resolve().parent
# The C half of the virtqueue (its own file, so it reads as C): see its comment.
VIRTQ_CHAIN_C = HERE.parent / "devices" / "virtio" / "chain.c"
# KVM_RUN that answers a few registers (InterruptStatus, InterruptACK) in C: see its comment.
ANSWERED_C = HERE / "answered.c"

# --- C side: the real headers, plus tiny helpers ---------------------------
#
# struct kvm_run keeps its exit data in an anonymous union of anonymous
# structs.  We give each struct we use a name with __typeof__, so cffi can
# check its fields one by one.
SOURCE = r"""
#include <errno.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <linux/kvm.h>
#include <asm/bootparam.h>

typedef __typeof__(((struct kvm_run *)0)->io)        kvm_run_io_t;
typedef __typeof__(((struct kvm_run *)0)->mmio)      kvm_run_mmio_t;
typedef __typeof__(((struct kvm_run *)0)->fail_entry) kvm_run_fail_entry_t;
typedef __typeof__(((struct kvm_run *)0)->hw)        kvm_run_hw_t;
typedef __typeof__(((struct kvm_run *)0)->ex)        kvm_run_ex_t;
typedef __typeof__(((struct kvm_run *)0)->internal)  kvm_run_internal_t;
typedef __typeof__(((struct kvm_run *)0)->emulation_failure) kvm_run_emulation_failure_t;
typedef __typeof__(((struct kvm_run *)0)->system_event) kvm_run_system_event_t;
typedef __typeof__(((struct kvm_run *)0)->debug)     kvm_run_debug_t;

/* ioctl(2) is variadic; these give cffi fixed signatures to call. */
static int ioctl_ptr(int fd, unsigned long request, void *arg)
{
    return ioctl(fd, request, arg);
}

static int ioctl_int(int fd, unsigned long request, unsigned long arg)
{
    return ioctl(fd, request, arg);
}

/* A full memory barrier (x86: mfence).  A virtio device that stores an
 * index the driver reads and then loads one the driver stores needs it
 * between the two: without it the CPU may do the load first (x86 lets a
 * load pass an earlier store to another address), and the device and the
 * driver can each miss the other's update (virtio 1.2, 2.7.10). */
static void full_fence(void)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

/* KVM_RUN, never retried here: EINTR (a signal, or immediate_exit) goes back
 * to the run loop, which then decides whether the VM stops. */
static int kvm_run(int vcpu_fd)
{
    return ioctl(vcpu_fd, KVM_RUN, 0);
}
"""

CDEF = r"""
typedef unsigned char  __u8;
typedef unsigned short __u16;
typedef unsigned int   __u32;
typedef unsigned long long __u64;
typedef signed int     __s32;
typedef signed short   __s16;

/* --- constants: values come from the header ------------------------------ */
#define KVM_API_VERSION ...

/* system ioctls (on /dev/kvm) */
#define KVM_GET_API_VERSION ...
#define KVM_CREATE_VM ...
#define KVM_CHECK_EXTENSION ...
#define KVM_GET_VCPU_MMAP_SIZE ...
#define KVM_GET_SUPPORTED_CPUID ...
#define KVM_GET_MSR_INDEX_LIST ...

/* VM ioctls */
#define KVM_CREATE_VCPU ...
#define KVM_SET_USER_MEMORY_REGION ...
#define KVM_SET_TSS_ADDR ...
#define KVM_SET_IDENTITY_MAP_ADDR ...
#define KVM_CREATE_IRQCHIP ...
#define KVM_CREATE_PIT2 ...
#define KVM_IRQ_LINE ...
#define KVM_ENABLE_CAP ...
#define KVM_IOEVENTFD ...
#define KVM_IRQFD ...
#define KVM_GET_IRQCHIP ...
#define KVM_SET_IRQCHIP ...
#define KVM_GET_PIT2 ...
#define KVM_SET_PIT2 ...
#define KVM_GET_CLOCK ...
#define KVM_SET_CLOCK ...

/* vCPU ioctls */
#define KVM_RUN ...
#define KVM_GET_REGS ...
#define KVM_SET_REGS ...
#define KVM_GET_SREGS ...
#define KVM_SET_SREGS ...
#define KVM_SET_CPUID2 ...
#define KVM_GET_MSRS ...
#define KVM_SET_MSRS ...
#define KVM_GET_LAPIC ...
#define KVM_SET_LAPIC ...
#define KVM_GET_FPU ...
#define KVM_GET_STATS_FD ...
#define KVM_SET_FPU ...
#define KVM_GET_MP_STATE ...
#define KVM_SET_MP_STATE ...
#define KVM_GET_CPUID2 ...
#define KVM_GET_XSAVE ...
#define KVM_SET_XSAVE ...
#define KVM_GET_XCRS ...
#define KVM_SET_XCRS ...
#define KVM_GET_VCPU_EVENTS ...
#define KVM_SET_VCPU_EVENTS ...
#define KVM_GET_DEBUGREGS ...
#define KVM_SET_DEBUGREGS ...
#define KVM_SET_GUEST_DEBUG ...
#define KVM_TRANSLATE ...
#define KVM_SET_MP_STATE ...

/* capabilities */
#define KVM_CAP_IRQCHIP ...
#define KVM_CAP_USER_MEMORY ...
#define KVM_CAP_SET_TSS_ADDR ...
#define KVM_CAP_EXT_CPUID ...
#define KVM_CAP_PIT2 ...
#define KVM_CAP_SET_IDENTITY_MAP_ADDR ...
#define KVM_CAP_IMMEDIATE_EXIT ...
#define KVM_CAP_NR_MEMSLOTS ...
#define KVM_CAP_NR_VCPUS ...
#define KVM_CAP_MAX_VCPUS ...
#define KVM_CAP_INTERNAL_ERROR_DATA ...
#define KVM_CAP_MP_STATE ...
#define KVM_CAP_SET_GUEST_DEBUG ...
#define KVM_CAP_SET_GUEST_DEBUG2 ...
#define KVM_CAP_IOEVENTFD ...
#define KVM_CAP_IRQFD ...
#define KVM_CAP_BINARY_STATS_FD ...

/* ioeventfd and irqfd flags */
#define KVM_IOEVENTFD_FLAG_DATAMATCH ...
#define KVM_IOEVENTFD_FLAG_PIO ...
#define KVM_IOEVENTFD_FLAG_DEASSIGN ...
#define KVM_IRQFD_FLAG_DEASSIGN ...
#define KVM_CAP_XSAVE ...
#define KVM_CAP_XCRS ...
#define KVM_CAP_VCPU_EVENTS ...
#define KVM_CAP_DEBUGREGS ...
#define KVM_CAP_ADJUST_CLOCK ...
#define KVM_CAP_PIT_STATE2 ...
#define KVM_CAP_TSC_DEADLINE_TIMER ...

/* exit reasons */
#define KVM_EXIT_UNKNOWN ...
#define KVM_EXIT_EXCEPTION ...
#define KVM_EXIT_IO ...
#define KVM_EXIT_HYPERCALL ...
#define KVM_EXIT_DEBUG ...
#define KVM_EXIT_HLT ...
#define KVM_EXIT_MMIO ...
#define KVM_EXIT_IRQ_WINDOW_OPEN ...
#define KVM_EXIT_SHUTDOWN ...
#define KVM_EXIT_FAIL_ENTRY ...
#define KVM_EXIT_INTR ...
#define KVM_EXIT_NMI ...
#define KVM_EXIT_INTERNAL_ERROR ...
#define KVM_EXIT_SYSTEM_EVENT ...
#define KVM_EXIT_IO_IN ...
#define KVM_EXIT_IO_OUT ...
#define KVM_INTERNAL_ERROR_EMULATION ...
#define KVM_INTERNAL_ERROR_SIMUL_EX ...
#define KVM_INTERNAL_ERROR_DELIVERY_EV ...
#define KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON ...
#define KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES ...
#define KVM_SYSTEM_EVENT_SHUTDOWN ...
#define KVM_SYSTEM_EVENT_RESET ...
#define KVM_SYSTEM_EVENT_CRASH ...
#define KVM_MEM_READONLY ...
#define KVM_PIT_SPEAKER_DUMMY ...
#define KVM_MP_STATE_RUNNABLE ...
#define KVM_MP_STATE_UNINITIALIZED ...
#define KVM_MP_STATE_INIT_RECEIVED ...
#define KVM_MP_STATE_HALTED ...
#define KVM_MP_STATE_SIPI_RECEIVED ...
#define KVM_APIC_REG_SIZE ...
#define KVM_IRQCHIP_PIC_MASTER ...
#define KVM_IRQCHIP_PIC_SLAVE ...
#define KVM_IRQCHIP_IOAPIC ...

/* guest debugging (KVM_SET_GUEST_DEBUG control bits; x86 ones from <asm/kvm.h>) */
#define KVM_GUESTDBG_ENABLE ...
#define KVM_GUESTDBG_SINGLESTEP ...
#define KVM_GUESTDBG_USE_SW_BP ...
#define KVM_GUESTDBG_USE_HW_BP ...
#define KVM_GUESTDBG_BLOCKIRQ ...

/* --- structures: `...;` = "compiler, fill in the real layout" ------------- */
struct kvm_userspace_memory_region {
    __u32 slot;
    __u32 flags;
    __u64 guest_phys_addr;
    __u64 memory_size;
    __u64 userspace_addr;
    ...;
};

struct kvm_regs {
    __u64 rax, rbx, rcx, rdx;
    __u64 rsi, rdi, rsp, rbp;
    __u64 r8,  r9,  r10, r11;
    __u64 r12, r13, r14, r15;
    __u64 rip, rflags;
    ...;
};

struct kvm_segment {
    __u64 base;
    __u32 limit;
    __u16 selector;
    __u8  type;
    __u8  present, dpl, db, s, l, g, avl;
    __u8  unusable;
    ...;
};

struct kvm_dtable {
    __u64 base;
    __u16 limit;
    ...;
};

struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss;
    struct kvm_segment tr, ldt;
    struct kvm_dtable gdt, idt;
    __u64 cr0, cr2, cr3, cr4, cr8;
    __u64 efer;
    __u64 apic_base;
    ...;
};

struct kvm_fpu {
    __u8  fpr[8][16];
    __u16 fcw;
    __u16 fsw;
    __u8  ftwx;
    __u16 last_opcode;
    __u64 last_ip;
    __u64 last_dp;
    __u32 mxcsr;
    ...;
};

struct kvm_msr_entry {
    __u32 index;
    __u64 data;
    ...;
};

struct kvm_msrs {
    __u32 nmsrs;
    struct kvm_msr_entry entries[];
    ...;
};

struct kvm_msr_list {
    __u32 nmsrs;
    __u32 indices[];
    ...;
};

struct kvm_cpuid_entry2 {
    __u32 function;
    __u32 index;
    __u32 flags;
    __u32 eax;
    __u32 ebx;
    __u32 ecx;
    __u32 edx;
    ...;
};

struct kvm_cpuid2 {
    __u32 nent;
    struct kvm_cpuid_entry2 entries[];
    ...;
};

struct kvm_pit_config {
    __u32 flags;
    ...;
};

struct kvm_mp_state {
    __u32 mp_state;
    ...;
};

struct kvm_irq_level {
    __u32 irq;
    __u32 level;
    ...;
};

struct kvm_enable_cap {
    __u32 cap;
    __u32 flags;
    __u64 args[4];
    ...;
};

struct kvm_guest_debug_arch {
    __u64 debugreg[8];
    ...;
};

struct kvm_guest_debug {
    __u32 control;
    struct kvm_guest_debug_arch arch;
    ...;
};

struct kvm_debug_exit_arch {
    __u32 exception;
    __u64 pc;
    __u64 dr6;
    __u64 dr7;
    ...;
};

struct kvm_translation {
    __u64 linear_address;
    __u64 physical_address;
    __u8  valid;
    __u8  writeable;
    __u8  usermode;
    ...;
};

struct kvm_ioeventfd {
    __u64 datamatch;
    __u64 addr;
    __u32 len;
    __s32 fd;
    __u32 flags;
    ...;
};

struct kvm_irqfd {
    __u32 fd;
    __u32 gsi;
    __u32 flags;
    __u32 resamplefd;
    ...;
};

struct kvm_stats_header {
    __u32 flags;
    __u32 name_size;
    __u32 num_desc;
    __u32 id_offset;
    __u32 desc_offset;
    __u32 data_offset;
    ...;
};

struct kvm_stats_desc {
    __u32 flags;
    __s16 exponent;
    __u16 size;
    __u32 offset;
    __u32 bucket_size;
    ...;
};

struct kvm_lapic_state {
    char regs[...];
};

/* --- the state a snapshot saves (pykvm.vm.snapshot); read and written whole --- */
struct kvm_xsave {
    __u32 region[1024];
    ...;
};

struct kvm_xcr {
    __u32 xcr;
    __u64 value;
    ...;
};

struct kvm_xcrs {
    __u32 nr_xcrs;
    __u32 flags;
    struct kvm_xcr xcrs[...];
    ...;
};

struct kvm_vcpu_events {
    __u32 sipi_vector;
    __u32 flags;
    ...;
};

struct kvm_debugregs {
    __u64 db[4];
    __u64 dr6;
    __u64 dr7;
    __u64 flags;
    ...;
};

struct kvm_pic_state {
    __u8 last_irr;
    __u8 irr;
    __u8 imr;
    __u8 isr;
    __u8 priority_add;
    __u8 irq_base;
    __u8 read_reg_select;
    __u8 poll;
    __u8 special_mask;
    __u8 init_state;
    __u8 auto_eoi;
    __u8 rotate_on_auto_eoi;
    __u8 special_fully_nested_mode;
    __u8 init4;
    __u8 elcr;
    __u8 elcr_mask;
};

struct kvm_irqchip {
    __u32 chip_id;
    union {
        char dummy[512];               /* the union's size; the IOAPIC's state is not read here */
        struct kvm_pic_state pic;
    } chip;
    ...;
};

struct kvm_pit_channel_state {
    __u32 count;
    __u8 read_state;
    __u8 write_state;
    __u8 rw_mode;
    __u8 mode;
    __u8 bcd;
    __u8 gate;
    ...;
};

struct kvm_pit_state2 {
    struct kvm_pit_channel_state channels[3];
    __u32 flags;
    ...;
};

struct kvm_clock_data {
    __u64 clock;
    __u32 flags;
    ...;
};

typedef struct { __u8 direction; __u8 size; __u16 port; __u32 count;
                 __u64 data_offset; ...; } kvm_run_io_t;
typedef struct { __u64 phys_addr; __u8 data[8]; __u32 len; __u8 is_write;
                 ...; } kvm_run_mmio_t;
typedef struct { __u64 hardware_entry_failure_reason; __u32 cpu; ...; }
        kvm_run_fail_entry_t;
typedef struct { __u64 hardware_exit_reason; ...; } kvm_run_hw_t;
typedef struct { __u32 exception; __u32 error_code; ...; } kvm_run_ex_t;
typedef struct { __u32 suberror; __u32 ndata; __u64 data[16]; ...; }
        kvm_run_internal_t;
typedef struct { __u32 suberror; __u32 ndata; __u64 flags;
                 __u8 insn_size; __u8 insn_bytes[15]; ...; }
        kvm_run_emulation_failure_t;
typedef struct { __u32 type; __u32 ndata; __u64 data[16]; ...; }
        kvm_run_system_event_t;
typedef struct { struct kvm_debug_exit_arch arch; ...; } kvm_run_debug_t;

/* The fields below named after union members overlap, as in the header. */
struct kvm_run {
    __u8 request_interrupt_window;
    __u8 immediate_exit;
    __u32 exit_reason;
    __u8 ready_for_interrupt_injection;
    __u8 if_flag;
    __u16 flags;
    __u64 cr8;
    __u64 apic_base;
    kvm_run_hw_t hw;
    kvm_run_fail_entry_t fail_entry;
    kvm_run_ex_t ex;
    kvm_run_debug_t debug;
    kvm_run_io_t io;
    kvm_run_mmio_t mmio;
    kvm_run_internal_t internal;
    kvm_run_emulation_failure_t emulation_failure;
    kvm_run_system_event_t system_event;
    ...;
};

/* --- <asm/bootparam.h>: the Linux boot protocol's zero page ------------- */
#define LOADED_HIGH ...
#define QUIET_FLAG ...
#define KEEP_SEGMENTS ...
#define CAN_USE_HEAP ...
#define XLF_KERNEL_64 ...
#define E820_MAX_ENTRIES_ZEROPAGE ...

struct setup_header {
    __u8  setup_sects;
    __u16 root_flags;
    __u32 syssize;
    __u16 ram_size;
    __u16 vid_mode;
    __u16 root_dev;
    __u16 boot_flag;
    __u16 jump;
    __u32 header;
    __u16 version;
    __u32 realmode_swtch;
    __u16 start_sys_seg;
    __u16 kernel_version;
    __u8  type_of_loader;
    __u8  loadflags;
    __u16 setup_move_size;
    __u32 code32_start;
    __u32 ramdisk_image;
    __u32 ramdisk_size;
    __u32 bootsect_kludge;
    __u16 heap_end_ptr;
    __u8  ext_loader_ver;
    __u8  ext_loader_type;
    __u32 cmd_line_ptr;
    __u32 initrd_addr_max;
    __u32 kernel_alignment;
    __u8  relocatable_kernel;
    __u8  min_alignment;
    __u16 xloadflags;
    __u32 cmdline_size;
    __u32 hardware_subarch;
    __u64 hardware_subarch_data;
    __u32 payload_offset;
    __u32 payload_length;
    __u64 setup_data;
    __u64 pref_address;
    __u32 init_size;
    __u32 handover_offset;
    __u32 kernel_info_offset;
    ...;
};

struct boot_e820_entry {
    __u64 addr;
    __u64 size;
    __u32 type;
    ...;
};

struct boot_params {
    __u64 acpi_rsdp_addr;
    __u32 ext_ramdisk_image;
    __u32 ext_ramdisk_size;
    __u32 ext_cmd_line_ptr;
    __u8  e820_entries;
    __u8  sentinel;
    struct setup_header hdr;
    struct boot_e820_entry e820_table[...];
    ...;
};

/* --- functions ------------------------------------------------------------ */
int ioctl_ptr(int fd, unsigned long request, void *arg);
int ioctl_int(int fd, unsigned long request, unsigned long arg);
int kvm_run(int vcpu_fd);
void full_fence(void);

/* --- kvm/answered.c -------------------------------------------------------- */
#define ANSWER_READ ...
#define ANSWER_WRITE_CLEARS ...
struct answered_register { uint64_t address; uint32_t kind; uint32_t *word; };
struct answered_counts { uint64_t reads; uint64_t writes; };
int kvm_run_answering(int vcpu_fd, struct kvm_run *run,
                      const struct answered_register *registers, int count,
                      struct answered_counts *counts);
uint32_t answered_word_or(uint32_t *word, uint32_t bits);
uint32_t answered_word_clear(uint32_t *word, uint32_t bits);
void answered_word_store(uint32_t *word, uint32_t value);
uint32_t answered_word_load(uint32_t *word);

/* --- devices/virtio/chain.c ------------------------------------------------ */
struct guest_ram { uint64_t guest_addr; uint64_t size; unsigned char *host; };
struct virtq_piece { uint64_t addr; uint64_t len; };
struct virtq_desc { uint64_t addr; uint32_t len; uint16_t flags; uint16_t next; };
struct virtq_chain_info { unsigned readable; uint64_t readable_length; uint64_t writable_length;
                          uint64_t last_writable_byte; };
int virtq_read_chain(const struct guest_ram *ram, int regions,
                     const struct virtq_desc *table, unsigned size, unsigned head,
                     int indirect_allowed, struct virtq_piece *pieces, unsigned max_pieces,
                     struct virtq_chain_info *info);
long long guest_rw_vectored(const struct guest_ram *ram, int regions, int fd, long long offset,
                            const struct virtq_piece *pieces, unsigned count,
                            unsigned long long skip, unsigned long long length, int write);
"""

ffibuilder.cdef(CDEF)
ffibuilder.set_source("pykvm.vm.kvm._kvm_cffi", SOURCE + ANSWERED_C.read_text() + VIRTQ_CHAIN_C.read_text())

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
