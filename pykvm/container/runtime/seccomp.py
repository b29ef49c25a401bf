"""Seccomp: a filter the kernel runs on every system call the container's process makes.

seccomp(2) with SECCOMP_SET_MODE_FILTER attaches a classic BPF program to a thread.
On each system call the kernel runs it over `struct seccomp_data` (the call's number,
the architecture, the six arguments) and obeys what it returns: allow the call, fail
it with an errno, kill the thread or process, send SIGSYS, log it.  The filter is
inherited by children and kept across execve(2), and it can never be removed: once
loaded, nothing the container's process does gets the blocked calls back.

runtime-spec config-linux.md "Seccomp" describes the profile in config.json:

    defaultAction    what a call no rule matches gets (SCMP_ACT_ERRNO, ..._ALLOW ...)
    defaultErrnoRet  the errno of a default SCMP_ACT_ERRNO (else EPERM)
    architectures    the ABIs the filter also accepts (x86-64 code may make i386 and
                     x32 calls: each has its own syscall numbers)
    flags            seccomp(2) flags: SECCOMP_FILTER_FLAG_LOG, ..._SPEC_ALLOW
    syscalls[]       names, action, errnoRet, args[] {index, value, valueTwo, op}

The profile is read into a Profile here (every field checked: a bad profile is one
line naming the field), compiled by libseccomp (runc's compiler: the names resolved
for each architecture, a 64-bit argument compared as two 32-bit halves, x86's
socketcall and ipc multiplexers) in the launcher, once, into a Filter: the BPF program,
behind runc's ENOSYS stub (_enosys_stub), and the flags.  The container's command loads it with seccomp(2) right before execve
(command.py), as runc's standard_init does; `exec` loads the same Filter, kept in
state.json.  Unknown syscall names are skipped with a warning, as runc skips them.
The launcher keeps each compiled program for the next container with the same profile
(seccomp_cache.py), as crun does.
"""
from __future__ import annotations

import base64
import errno
import os
import struct
from dataclasses import dataclass, field

from pykvm.errors import ConfigError

__all__ = ["Condition", "Rule", "Profile", "Filter", "parse_profile", "compile_filter",
           "export_pfc", "disassemble", "libseccomp", "kernel_flags", "ACTIONS", "OPERATORS", "FLAGS"]

ACTIONS = ("SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP",
           "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY")
OPERATORS = ("SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE",
             "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ")
FLAGS = ("SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW")
ARCHITECTURES = ("SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_ARM",
                 "SCMP_ARCH_AARCH64", "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32",
                 "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PPC",
                 "SCMP_ARCH_PPC64", "SCMP_ARCH_PPC64LE", "SCMP_ARCH_S390", "SCMP_ARCH_S390X",
                 "SCMP_ARCH_PARISC", "SCMP_ARCH_PARISC64", "SCMP_ARCH_RISCV64")
MAX_ARGS = 6                      # struct seccomp_data: args[6]
MAX_DATUM = 2**64 - 1             # an argument is compared as a 64-bit value
MAX_ERRNO_RET = 0xFFFF            # SECCOMP_RET_DATA: the low 16 bits of the filter's answer
SOCK_FILTER = struct.Struct("<HBBI")   # <linux/filter.h> struct sock_filter: code, jt, jf, k
MAX_INSNS = 4096                  # BPF_MAXINSNS: the kernel's limit on one program


@dataclass(frozen=True)
class Condition:
    """One args[] entry: compare argument `index` with `value` (MASKED_EQ: arg & value == value_two)."""

    index: int
    value: int
    value_two: int
    op: str


@dataclass(frozen=True)
class Rule:
    """One syscalls[] entry: these names get `action` when every condition holds."""

    names: tuple[str, ...]
    action: str
    errno_ret: int | None = None
    args: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class Profile:
    """linux.seccomp, checked."""

    default_action: str
    default_errno_ret: int | None = None
    architectures: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()
    warn_unknown: bool = True      # a user's profile: say which names this libseccomp lacks


@dataclass(frozen=True)
class Filter:
    """A compiled profile: the BPF program (struct sock_filter[]) and seccomp(2)'s flags;
    load() puts it on the calling process (the container's command, right before execve)."""

    program: bytes
    flags: int = 0

    def to_json(self) -> dict:
        return {"program": base64.b64encode(self.program).decode(), "flags": self.flags}

    @classmethod
    def from_json(cls, data: dict | None) -> Filter | None:
        if not data:
            return None
        return cls(base64.b64decode(data["program"]), int(data.get("flags", 0)))

    def load(self) -> None:
        """Wraps seccomp(SECCOMP_SET_MODE_FILTER): from here on, every call of this process
        and of whatever it execs goes through the filter.  Needs no_new_privs or CAP_SYS_ADMIN.

        A method, so that the container's process (command.py) loads the filter without
        importing this module: a container without seccomp is launched without it."""
        from pykvm.container.runtime.syscalls import check, ffi, lib
        program = ffi.from_buffer(self.program)
        check(lib.sys_seccomp_set_filter(self.flags, program, len(self.program) // SOCK_FILTER.size),
              "seccomp", "SECCOMP_SET_MODE_FILTER")


# --- reading a profile ----------------------------------------------------------------

def parse_profile(value, where: str = "config.json: linux.seccomp") -> Profile | None:
    """A linux.seccomp object -> Profile; None when it asks for nothing (no defaultAction
    and no syscalls: runc's specconv reads that as "no seccomp")."""
    value = _expect(value, dict, where)
    if not value.get("defaultAction") and not value.get("syscalls"):
        return None
    for key in ("listenerPath", "listenerMetadata"):
        if value.get(key):
            raise ConfigError(f"{where}.{key} is set, but pykvm has no seccomp agent to hand "
                              f"notifications to (SCMP_ACT_NOTIFY): remove it")
    default = _action(value.get("defaultAction"), f"{where}.defaultAction")
    rules = tuple(_rule(r, f"{where}.syscalls[{i}]")
                  for i, r in enumerate(_expect(value.get("syscalls") or [], list, f"{where}.syscalls")))
    return Profile(
        default_action=default,
        default_errno_ret=_errno_ret(value.get("defaultErrnoRet"), f"{where}.defaultErrnoRet"),
        architectures=_names(value.get("architectures"), ARCHITECTURES, f"{where}.architectures"),
        flags=_names(value.get("flags"), FLAGS, f"{where}.flags"),
        rules=rules)


def _rule(value, where: str) -> Rule:
    _expect(value, dict, where)
    names = _expect(value.get("names"), list, f"{where}.names")
    if not names or not all(isinstance(n, str) and n and "\0" not in n for n in names):
        raise ConfigError(f"{where}.names must be a non-empty list of syscall names")
    args = _expect(value.get("args") or [], list, f"{where}.args")
    return Rule(tuple(names), _action(value.get("action"), f"{where}.action"),
                _errno_ret(value.get("errnoRet"), f"{where}.errnoRet"),
                tuple(_condition(a, f"{where}.args[{i}]") for i, a in enumerate(args)))


def _condition(value, where: str) -> Condition:
    _expect(value, dict, where)
    index = _uint(value.get("index"), f"{where}.index", MAX_ARGS - 1)
    op = value.get("op")
    if op not in OPERATORS:
        raise ConfigError(f"{where}.op {op!r} is not one of {', '.join(OPERATORS)}")
    return Condition(index, _uint(value.get("value"), f"{where}.value", MAX_DATUM),
                     _uint(value.get("valueTwo", 0), f"{where}.valueTwo", MAX_DATUM), op)


def _action(value, where: str) -> str:
    if value == "SCMP_ACT_NOTIFY":
        raise ConfigError(f"{where} SCMP_ACT_NOTIFY needs a seccomp agent (listenerPath), "
                          f"which pykvm does not have")
    if value not in ACTIONS:
        raise ConfigError(f"{where} {value!r} is not one of {', '.join(a for a in ACTIONS if a != 'SCMP_ACT_NOTIFY')}")
    return value


def _errno_ret(value, where: str) -> int | None:
    return None if value is None else _uint(value, where, MAX_ERRNO_RET)


def _names(value, known: tuple[str, ...], where: str) -> tuple[str, ...]:
    value = _expect(value or [], list, where)
    for name in value:
        if name not in known:
            raise ConfigError(f"{where}: {name!r} is not one of {', '.join(known)}")
    return tuple(value)


def _uint(value, where: str, top: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        raise ConfigError(f"{where} must be an integer in 0-{top}, not {value!r}")
    return value


def _expect(value, kind, where: str):
    if not isinstance(value, kind):
        raise ConfigError(f"{where} must be {'an object' if kind is dict else 'a list'}, "
                          f"not {type(value).__name__}")
    return value


# --- compiling it: libseccomp, as runc's libcontainer/seccomp does -----------------------

def compile_filter(profile: Profile, warn=None) -> Filter:
    """The profile -> a BPF program (seccomp_export_bpf), in runc's order: the default
    action, the architectures, then one libseccomp rule per name."""
    program = _enosys_stub(profile) + _export(profile, "bpf", warn if profile.warn_unknown else None)
    if len(program) // SOCK_FILTER.size > MAX_INSNS:
        raise ConfigError(f"the seccomp profile compiles to {len(program) // SOCK_FILTER.size} BPF "
                          f"instructions; the kernel takes at most {MAX_INSNS}")
    return Filter(program, kernel_flags(profile.flags))


def export_pfc(profile: Profile) -> str:
    """libseccomp's "pseudo filter code" for the profile: the same program as readable text."""
    return _export(profile, "pfc", None).decode()


def _export(profile: Profile, form: str, warn) -> bytes:
    """Build the filter in libseccomp and write it out as `form` (bpf or pfc)."""
    lib = libseccomp().lib
    ctx = _new_context(profile)
    try:
        default = _action_value(profile.default_action, profile.default_errno_ret)
        for rule in profile.rules:
            for name in rule.names:
                _add_rule(ctx, name, rule, default, warn)
        fd = os.memfd_create(f"seccomp-{form}", os.MFD_CLOEXEC)
        try:
            _check(getattr(lib, f"seccomp_export_{form}")(ctx, fd), f"seccomp_export_{form}")
            return _read_all(fd)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


# --- runc's -ENOSYS stub: calls newer than the profile fail as the kernel would fail them ----

X32_SYSCALL_BIT = 0x40000000      # <asm/unistd.h> __X32_SYSCALL_BIT: an x32 call's number has it set
PERMISSIVE = ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_TRACE")
BPF_LD_W_ABS, BPF_JMP_JA, BPF_JEQ_K, BPF_JGT_K, BPF_JSET_K, BPF_RET_K = 0x20, 0x05, 0x15, 0x25, 0x45, 0x06


def _enosys_stub(profile: Profile) -> bytes:
    """runc's patchbpf: a few instructions put in front of libseccomp's program, so that a
    system call numbered above every call the profile names, for its architecture, fails
    with ENOSYS instead of the default action.  A call newer than the profile is one the
    profile's author never heard of; ENOSYS ("no such call") is what makes glibc fall back
    to an older one (clone3 -> clone, fchmodat2 -> fchmodat), where EPERM would be an error.
    None for a permissive default (nothing to fall back from) or one that is ENOSYS already.

        ld  [arch]
        jeq #AUDIT_ARCH_X86_64, x86_64, +0      one per architecture of the profile
        jeq #AUDIT_ARCH_I386, i386, +0
        ja  filter                              (anything else: libseccomp decides)
    x86_64:
        ld  [nr]
        jset #X32_SYSCALL_BIT, x32, amd64       x32 calls share the architecture
    amd64:  jgt #LAST, enosys, filter
    x32:    jgt #LAST_X32, enosys, filter
    i386:   ld [nr]; jgt #LAST, enosys, filter
    enosys: ret ERRNO(ENOSYS)
    filter: libseccomp's program
    """
    if profile.default_action in PERMISSIVE or (profile.default_action == "SCMP_ACT_ERRNO"
                                                and profile.default_errno_ret == errno.ENOSYS):
        return b""
    last = _last_syscalls(profile)
    if not last:
        return b""
    lib = libseccomp().lib
    x86_64, i386 = lib.SCMP_ARCH_X86_64 & 0xFFFFFFFF, lib.SCMP_ARCH_X86 & 0xFFFFFFFF
    program = [(BPF_LD_W_ABS, "", "", 4)]
    sections = []
    if "amd64" in last or "x32" in last:
        program.append((BPF_JEQ_K, "x86_64", "", x86_64))
        sections += [("x86_64", (BPF_LD_W_ABS, "", "", 0)),
                     ("", (BPF_JSET_K, "x32", "amd64", X32_SYSCALL_BIT)),
                     ("amd64", _above(last.get("amd64"))), ("x32", _above(last.get("x32")))]
    if "i386" in last:
        program.append((BPF_JEQ_K, "i386", "", i386))
        sections += [("i386", (BPF_LD_W_ABS, "", "", 0)), ("", _above(last["i386"]))]
    program.append((BPF_JMP_JA, "", "", "filter"))
    labels = {}
    for label, insn in sections:
        if label:
            labels[label] = len(program)
        program.append(insn)
    labels["enosys"] = len(program)
    program.append((BPF_RET_K, "", "", _action_value("SCMP_ACT_ERRNO", errno.ENOSYS)))
    labels["filter"] = len(program)
    return b"".join(_assemble(pc, insn, labels) for pc, insn in enumerate(program))


def _above(last: int | None) -> tuple:
    """Numbers above `last` get ENOSYS; the rest go to the filter (all of them: no `last`)."""
    if last is None:
        return (BPF_JMP_JA, "", "", "filter")
    return (BPF_JGT_K, "enosys", "filter", last)


def _assemble(pc: int, insn: tuple, labels: dict) -> bytes:
    """One struct sock_filter; jump targets given as labels become offsets from pc + 1."""
    code, jt, jf, k = insn
    def offset(label):
        return labels[label] - pc - 1 if label else 0
    if code == BPF_JMP_JA:
        return SOCK_FILTER.pack(code, 0, 0, offset(k))
    return SOCK_FILTER.pack(code, offset(jt), offset(jf), k)


def _last_syscalls(profile: Profile) -> dict[str, int]:
    """runc's findLastSyscalls: for each x86 ABI the profile lists, the highest number of a
    call it names (x32's with X32_SYSCALL_BIT set, as the kernel sees them)."""
    lib = libseccomp().lib
    abis = {"SCMP_ARCH_X86_64": "amd64", "SCMP_ARCH_X32": "x32", "SCMP_ARCH_X86": "i386"}
    last = {}
    for arch in profile.architectures:
        if arch not in abis:
            continue                         # never seen on an x86-64 host
        numbers = [lib.seccomp_syscall_resolve_name_arch(getattr(lib, arch), name.encode())
                   for rule in profile.rules for name in rule.names]
        if max(numbers, default=0) > 0:
            last[abis[arch]] = max(numbers)
    return last


def libseccomp():
    """libseccomp's cffi module (_seccomp_build.py), imported when a profile is compiled:
    loading the library costs ~1.5 ms that a container without a profile need not pay,
    nor `exec`, which loads a program compiled before."""
    from pykvm.container.runtime import _seccomp_cffi
    return _seccomp_cffi


def _new_context(profile: Profile):
    """seccomp_init(default action) and the extra architectures.  libseccomp must not set
    no_new_privs itself: command.py decides that (process.noNewPrivileges), as runc does."""
    c = libseccomp()
    ffi, lib = c.ffi, c.lib
    ctx = lib.seccomp_init(_action_value(profile.default_action, profile.default_errno_ret))
    if ctx == ffi.NULL:
        raise ConfigError(f"libseccomp refused the default action {profile.default_action}")
    try:
        for arch in profile.architectures:
            token = getattr(lib, arch)
            if lib.seccomp_arch_exist(ctx, token) == -errno.EEXIST:
                _check(lib.seccomp_arch_add(ctx, token), f"seccomp_arch_add {arch}")
        _check(lib.seccomp_attr_set(ctx, lib.SCMP_FLTATR_CTL_NNP, 0), "seccomp_attr_set NNP")
    except BaseException:
        lib.seccomp_release(ctx)
        raise
    return ctx


def _add_rule(ctx, name: str, rule: Rule, default: int, warn) -> None:
    """runc's matchCall: a rule whose action is the default is redundant and skipped; an
    unknown name is skipped (this kernel and libseccomp do not have it); conditions on
    the same argument twice become one rule each (libseccomp ANDs the conditions of a
    rule, and cannot AND two on one argument), else all go in one rule."""
    c = libseccomp()
    ffi, lib = c.ffi, c.lib
    action = _action_value(rule.action, rule.errno_ret)
    if action == default:
        return
    number = lib.seccomp_syscall_resolve_name(name.encode())
    if number == lib.__NR_SCMP_ERROR:
        if warn is not None:
            warn(f"seccomp: unknown syscall {name!r} skipped (libseccomp does not know it)")
        return
    indexes = [c.index for c in rule.args]
    groups = [[c] for c in rule.args] if len(set(indexes)) < len(indexes) else [list(rule.args)]
    for conditions in groups:
        array = ffi.new("struct scmp_arg_cmp[]", max(len(conditions), 1))
        for slot, c in zip(array, conditions):
            slot.arg, slot.op = c.index, getattr(lib, c.op)
            slot.datum_a, slot.datum_b = c.value, c.value_two
        _check(lib.seccomp_rule_add_array(ctx, action, number, len(conditions), array),
               f"seccomp rule for {name}")


def _action_value(action: str, errno_ret: int | None) -> int:
    """runc's getAction: KILL is KILL_THREAD; ERRNO and TRACE default to EPERM."""
    lib = libseccomp().lib
    if action == "SCMP_ACT_ERRNO":
        return lib.act_errno(errno.EPERM if errno_ret is None else errno_ret)
    if action == "SCMP_ACT_TRACE":
        return lib.act_trace(errno.EPERM if errno_ret is None else errno_ret)
    if action == "SCMP_ACT_KILL":
        return lib.SCMP_ACT_KILL_THREAD
    return getattr(lib, action)


def kernel_flags(flags: tuple[str, ...]) -> int:
    """seccomp(2)'s flags.  TSYNC means nothing here: the command is single-threaded (runc
    ignores it too)."""
    from pykvm.container.runtime.syscalls import lib
    out = 0
    for flag in flags:
        if flag != "SECCOMP_FILTER_FLAG_TSYNC":
            out |= getattr(lib, flag)
    return out


def _check(ret: int, what: str) -> None:
    """libseccomp returns -errno."""
    if ret < 0:
        raise ConfigError(f"{what}: {os.strerror(-ret)}")


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


# --- reading a program ---------------------------------------------------------------------

BPF_CLASSES = {0x00: "ld", 0x01: "ldx", 0x02: "st", 0x03: "stx", 0x04: "alu", 0x05: "jmp", 0x06: "ret"}
BPF_JUMPS = {0x10: "jeq", 0x20: "jgt", 0x30: "jge", 0x40: "jset"}
BPF_ALU_OPS = {0x40: "or", 0x50: "and"}
SECCOMP_DATA = {0: "nr", 4: "arch", 8: "ip.lo", 12: "ip.hi",
                **{16 + 8 * i + 4 * hi: f"args[{i}].{'hi' if hi else 'lo'}" for i in range(6) for hi in (0, 1)}}


def disassemble(program: bytes) -> list[str]:
    """One line per instruction of a seccomp BPF program, in the spirit of bpf_dbg:
    the loads name the struct seccomp_data field they read, jumps give absolute targets."""
    lines = []
    for pc, (code, jt, jf, k) in enumerate(SOCK_FILTER.iter_unpack(program)):
        kind = BPF_CLASSES.get(code & 0x07, "?")
        if code == 0x20:                                   # BPF_LD | BPF_W | BPF_ABS
            text = f"ld  [{SECCOMP_DATA.get(k, k)}]"
        elif kind == "jmp" and code & 0xF0 in BPF_JUMPS:
            text = f"{BPF_JUMPS[code & 0xF0]} #{k:#x}, {pc + 1 + jt}, {pc + 1 + jf}"
        elif kind == "jmp":
            text = f"ja  {pc + 1 + k}"
        elif kind == "alu" and code & 0xF0 in BPF_ALU_OPS:
            text = f"{BPF_ALU_OPS[code & 0xF0]} #{k:#x}"
        elif kind == "ret":
            text = f"ret #{k:#010x}"
        else:
            text = f"{kind} code={code:#04x} k={k:#x}"
        lines.append(f"{pc:4}: {text}")
    return lines
