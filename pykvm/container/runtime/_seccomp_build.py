"""cffi build script for libseccomp (API mode): a seccomp profile -> a BPF program.

runc 1.1 compiles config.json's `linux.seccomp` with libseccomp (the C library
behind libseccomp-golang), and so do we: the same library, Debian's libseccomp2,
turns the same profile into the same filter.  The compiler reads <seccomp.h>, so
every SCMP_* value below comes from the header; the ERRNO/TRACE actions are
macros with an argument, so they get a small C function each.

Only the launcher imports this module (seccomp.py compiles a profile there); the
container's command loads the finished program with seccomp(2) alone (syscalls.py).

Built by `pip install` (setup.py names this file in cffi_modules) into the
extension module `pykvm.container.runtime._seccomp_cffi`, linked with -lseccomp
(Debian package libseccomp-dev).
"""
from cffi import FFI

ffibuilder = FFI()

SOURCE = r"""
#include <seccomp.h>

/* SCMP_ACT_ERRNO(x) and SCMP_ACT_TRACE(x) are macros: give cffi functions. */
static uint32_t act_errno(uint16_t errno_ret) { return SCMP_ACT_ERRNO(errno_ret); }
static uint32_t act_trace(uint16_t msg) { return SCMP_ACT_TRACE(msg); }
"""

CDEF = r"""
#define SCMP_VER_MAJOR ...
#define SCMP_VER_MINOR ...
#define SCMP_VER_MICRO ...

/* actions: what the filter returns for a system call (seccomp(2) SECCOMP_RET_*) */
#define SCMP_ACT_KILL_PROCESS ...
#define SCMP_ACT_KILL_THREAD ...
#define SCMP_ACT_TRAP ...
#define SCMP_ACT_NOTIFY ...
#define SCMP_ACT_LOG ...
#define SCMP_ACT_ALLOW ...
uint32_t act_errno(uint16_t errno_ret);
uint32_t act_trace(uint16_t msg);

/* architectures (their AUDIT_ARCH_* tokens) */
#define SCMP_ARCH_NATIVE ...
#define SCMP_ARCH_X86 ...
#define SCMP_ARCH_X86_64 ...
#define SCMP_ARCH_X32 ...
#define SCMP_ARCH_ARM ...
#define SCMP_ARCH_AARCH64 ...
#define SCMP_ARCH_MIPS ...
#define SCMP_ARCH_MIPS64 ...
#define SCMP_ARCH_MIPS64N32 ...
#define SCMP_ARCH_MIPSEL ...
#define SCMP_ARCH_MIPSEL64 ...
#define SCMP_ARCH_MIPSEL64N32 ...
#define SCMP_ARCH_PPC ...
#define SCMP_ARCH_PPC64 ...
#define SCMP_ARCH_PPC64LE ...
#define SCMP_ARCH_S390 ...
#define SCMP_ARCH_S390X ...
#define SCMP_ARCH_PARISC ...
#define SCMP_ARCH_PARISC64 ...
#define SCMP_ARCH_RISCV64 ...

/* argument comparisons */
enum scmp_compare {
    SCMP_CMP_NE, SCMP_CMP_LT, SCMP_CMP_LE, SCMP_CMP_EQ, SCMP_CMP_GE, SCMP_CMP_GT,
    SCMP_CMP_MASKED_EQ, ...
};
typedef uint64_t scmp_datum_t;
struct scmp_arg_cmp {
    unsigned int arg;
    enum scmp_compare op;
    scmp_datum_t datum_a;
    scmp_datum_t datum_b;
};

/* filter attributes */
enum scmp_filter_attr {
    SCMP_FLTATR_ACT_DEFAULT, SCMP_FLTATR_ACT_BADARCH, SCMP_FLTATR_CTL_NNP,
    SCMP_FLTATR_CTL_TSYNC, SCMP_FLTATR_CTL_LOG, SCMP_FLTATR_CTL_SSB, ...
};

typedef void *scmp_filter_ctx;
#define __NR_SCMP_ERROR ...

struct scmp_version { unsigned int major; unsigned int minor; unsigned int micro; };
const struct scmp_version *seccomp_version(void);   /* the library loaded, not the header */
unsigned int seccomp_api_get(void);
scmp_filter_ctx seccomp_init(uint32_t def_action);
void seccomp_release(scmp_filter_ctx ctx);
int seccomp_attr_set(scmp_filter_ctx ctx, enum scmp_filter_attr attr, uint32_t value);
uint32_t seccomp_arch_native(void);
int seccomp_arch_exist(const scmp_filter_ctx ctx, uint32_t arch_token);
int seccomp_arch_add(scmp_filter_ctx ctx, uint32_t arch_token);
int seccomp_syscall_resolve_name(const char *name);
int seccomp_syscall_resolve_name_arch(uint32_t arch_token, const char *name);
int seccomp_rule_add_array(scmp_filter_ctx ctx, uint32_t action, int syscall,
                           unsigned int arg_cnt, const struct scmp_arg_cmp *arg_array);
int seccomp_export_bpf(const scmp_filter_ctx ctx, int fd);
int seccomp_export_pfc(const scmp_filter_ctx ctx, int fd);
"""

ffibuilder.cdef(CDEF)
ffibuilder.set_source("pykvm.container.runtime._seccomp_cffi", SOURCE, libraries=["seccomp"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
