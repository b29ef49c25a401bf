"""Docker's default seccomp profile, as data, and Docker's profile format turned into the
OCI one (config-linux.md "Seccomp") that seccomp.py compiles.

`docker run` gives every container this profile unless told `--security-opt
seccomp=unconfined` or `seccomp=FILE`.  It is an allowlist: about 350 system calls any
program needs are allowed, everything else fails with EPERM.  What is left out is what
reaches the kernel's shared state or widens the attack surface: keyctl and add_key (the
kernel's keyrings are not namespaced), mount, unshare, setns, bpf, perf_event_open,
kexec, reboot, init_module, ptrace on old kernels, clock_settime, and so on.  A few
calls are allowed only to a container that holds the capability they need anyway
(mount with CAP_SYS_ADMIN, reboot with CAP_SYS_BOOT ...), and clone(2) without
CAP_SYS_ADMIN only when its flags ask for no new namespace.

Docker's own format is the OCI one plus, per rule, `includes`/`excludes` on the
capabilities in the bounding set, the architecture and the kernel version, and an
`archMap` from the native architecture to the ABIs it also runs (x86-64: i386, x32).
`oci_profile` applies them the way moby's profiles/seccomp/seccomp_linux.go does, for
x86-64, the only architecture pykvm runs on; the facts below are the rules of Docker's
profiles/seccomp/default.json that apply there.
"""
from __future__ import annotations

import errno
import json
import os

from pykvm.errors import ConfigError

__all__ = ["DEFAULT_PROFILE", "oci_profile", "load_profile_file", "NATIVE_ARCH"]

NATIVE_ARCH = "amd64"             # Go's name for x86-64: what Docker's includes/excludes compare
CLONE_NAMESPACE_FLAGS = 0x7E020000    # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET

# What any program may call.
ALLOWED = """
accept accept4 access adjtimex alarm bind brk capget capset chdir chmod chown chown32
clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64
clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range creat dup
dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2
epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit exit_group faccessat
faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat fchown
fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork fremovexattr
fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futex
futex_time64 futex_waitv futimesat getcpu getcwd getdents getdents64 getegid getegid32
geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid
getpgrp getpid getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32
getrlimit get_robust_list getrusage getsid getsockname getsockopt get_thread_area gettid
gettimeofday getuid getuid32 getxattr inotify_add_watch inotify_init inotify_init1
inotify_rm_watch io_cancel ioctl io_destroy io_getevents io_pgetevents io_pgetevents_time64
ioprio_get ioprio_set io_setup io_submit io_uring_enter io_uring_register io_uring_setup
ipc kill landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown lchown32
lgetxattr link linkat listen listxattr llistxattr _llseek lremovexattr lseek lsetxattr
lstat lstat64 madvise membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod
mknodat mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open
mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap
msgctl msgget msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep
newfstatat _newselect open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2
pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv preadv2
prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev pwritev2 read
readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg
remap_file_pages removexattr rename renameat renameat2 restart_syscall rmdir rseq
rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity sched_getattr
sched_getparam sched_get_priority_max sched_get_priority_min sched_getscheduler
sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity sched_setattr
sched_setparam sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop
semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32
setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority
setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32
setrlimit set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setuid32
setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask
sigreturn socketcall socketpair splice stat stat64 statfs statfs64 statx symlink symlinkat
sync sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete
timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create
timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate
truncate64 ugetrlimit umask uname unlink unlinkat utime utimensat utimensat_time64 utimes
vfork vmsplice wait4 waitid waitpid write writev
""".split()

# Allowed to a container whose bounding set holds the capability (they need it anyway).
BY_CAPABILITY = {
    "CAP_DAC_READ_SEARCH": ["open_by_handle_at"],
    "CAP_SYS_ADMIN": ["bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen",
                      "fspick", "lookup_dcookie", "mount", "mount_setattr", "move_mount",
                      "open_tree", "perf_event_open", "quotactl", "quotactl_fd", "setdomainname",
                      "sethostname", "setns", "syslog", "umount", "umount2", "unshare"],
    "CAP_SYS_BOOT": ["reboot"],
    "CAP_SYS_CHROOT": ["chroot"],
    "CAP_SYS_MODULE": ["delete_module", "init_module", "finit_module"],
    "CAP_SYS_PACCT": ["acct"],
    "CAP_SYS_PTRACE": ["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv",
                       "process_vm_writev", "ptrace"],
    "CAP_SYS_RAWIO": ["iopl", "ioperm"],
    "CAP_SYS_TIME": ["settimeofday", "stime", "clock_settime", "clock_settime64"],
    "CAP_SYS_TTY_CONFIG": ["vhangup"],
    "CAP_SYS_NICE": ["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"],
    "CAP_SYSLOG": ["syslog"],
    "CAP_BPF": ["bpf"],
    "CAP_PERFMON": ["perf_event_open"],
}


def _allow(names, **extra) -> dict:
    return {"names": list(names), "action": "SCMP_ACT_ALLOW", **extra}


def _arg0_is(value: int, op: str = "SCMP_CMP_EQ", **extra) -> list[dict]:
    return [{"index": 0, "value": value, "op": op, **extra}]


DEFAULT_PROFILE = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": errno.EPERM,
    "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
    "syscalls": [
        _allow(ALLOWED),
        # since Linux 4.8 a ptrace()d process cannot get round its tracee's seccomp filter
        _allow(["process_vm_readv", "process_vm_writev", "ptrace"], includes={"minKernel": "4.8"}),
        _allow(["socket"], args=_arg0_is(40, "SCMP_CMP_NE")),           # any family but AF_VSOCK
        # personality(2): only the query (0xffffffff) and the harmless execution domains
        *(_allow(["personality"], args=_arg0_is(v)) for v in (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)),
        _allow(["arch_prctl"], includes={"arches": ["amd64", "x32"]}),
        _allow(["modify_ldt"], includes={"arches": ["amd64", "x32", "x86"]}),
        *(_allow(names, includes={"caps": [cap]}) for cap, names in BY_CAPABILITY.items()),
        # without CAP_SYS_ADMIN: clone(2) only when no CLONE_NEW* flag is set ...
        _allow(["clone"], args=_arg0_is(CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ", valueTwo=0),
               excludes={"caps": ["CAP_SYS_ADMIN"]}),
        # ... and clone3(2), whose flags are in memory a filter cannot read, says ENOSYS:
        # glibc then falls back to clone(2), which the rule above can check
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS,
         "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
    ],
}


def oci_profile(bounding: list[str], profile: dict = DEFAULT_PROFILE, kernel: tuple[int, int] | None = None,
                where: str = "the default seccomp profile") -> dict:
    """A profile in Docker's format -> linux.seccomp for a container with this bounding
    set (capability names "CAP_..."), on x86-64: moby's setupSeccomp."""
    if not isinstance(profile, dict):
        raise ConfigError(f"{where} must be a JSON object")
    if profile.get("architectures") and profile.get("archMap"):
        raise ConfigError(f"{where}: use either 'architectures' or 'archMap'")
    kernel = kernel or _kernel_version()
    out = {"defaultAction": profile.get("defaultAction"), "architectures": list(profile.get("architectures") or []),
           "syscalls": []}
    for key in ("defaultErrnoRet", "flags", "listenerPath", "listenerMetadata"):
        if key in profile:
            out[key] = profile[key]
    for entry in profile.get("archMap") or []:
        if isinstance(entry, dict) and entry.get("architecture") == "SCMP_ARCH_X86_64":
            out["architectures"] = ["SCMP_ARCH_X86_64", *(entry.get("subArchitectures") or [])]
    caps = {c.upper() if c.upper().startswith("CAP_") else "CAP_" + c.upper() for c in bounding}
    syscalls = profile.get("syscalls") or []
    if not isinstance(syscalls, list):
        raise ConfigError(f"{where}: syscalls must be a list")
    for i, rule in enumerate(syscalls):
        if not isinstance(rule, dict):
            raise ConfigError(f"{where}: syscalls[{i}] must be an object")
        if _applies(rule, caps, kernel, f"{where}: syscalls[{i}]"):
            out["syscalls"].append(_oci_rule(rule, f"{where}: syscalls[{i}]"))
    return out


def _applies(rule: dict, caps: set[str], kernel: tuple[int, int], where: str) -> bool:
    """Docker's includes (all must hold) and excludes (any one rules it out)."""
    includes, excludes = rule.get("includes") or {}, rule.get("excludes") or {}
    if NATIVE_ARCH in (excludes.get("arches") or []) or caps & set(excludes.get("caps") or []):
        return False
    if excludes.get("minKernel") and kernel >= _version(excludes["minKernel"], where):
        return False
    if includes.get("arches") and NATIVE_ARCH not in includes["arches"]:
        return False
    if not set(includes.get("caps") or []) <= caps:
        return False
    return not includes.get("minKernel") or kernel >= _version(includes["minKernel"], where)


def _oci_rule(rule: dict, where: str) -> dict:
    """Docker's `name` (one) or `names`; the rest is the OCI rule as it is."""
    if rule.get("name") and rule.get("names"):
        raise ConfigError(f"{where}: use either 'name' or 'names'")
    out = {k: v for k, v in rule.items() if k in ("names", "action", "errnoRet", "args")}
    if rule.get("name"):
        out["names"] = [rule["name"]]
    return out


def _version(text, where: str) -> tuple[int, int]:
    try:
        major, minor = str(text).split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        raise ConfigError(f"{where}: minKernel {text!r} is not a version like 4.8") from None


def _kernel_version() -> tuple[int, int]:
    release = os.uname().release
    major, minor = release.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def load_profile_file(path: str, bounding: list[str]) -> dict:
    """`--security-opt seccomp=FILE`: a profile in Docker's (or the OCI) format -> linux.seccomp."""
    try:
        with open(path) as f:
            profile = json.load(f)
    except OSError as e:
        raise ConfigError(f"seccomp profile {path}: {e.strerror}") from None
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"seccomp profile {path} is not valid JSON: {e}") from None
    return oci_profile(bounding, profile, where=f"seccomp profile {path}")
