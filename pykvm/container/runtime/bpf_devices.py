"""Device rules on cgroup v2: a small eBPF program the kernel runs on every device access.

cgroup v1 has a devices controller with `devices.allow` / `devices.deny` files;
cgroup v2 has none.  Instead a program of type BPF_PROG_TYPE_CGROUP_DEVICE is
attached to the cgroup (BPF_CGROUP_DEVICE, cgroup-v2.rst "Device controller");
on each open or mknod of a device node the kernel calls it with

    struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }
    access_type = (BPF_DEVCG_ACC_{MKNOD,READ,WRITE} << 16) | BPF_DEVCG_DEV_{BLOCK,CHAR}

and allows the access if it returns 1.  runc generates the same kind of program
(libcontainer/cgroups/devices/ebpf_linux.go, devicefilter).  Ours, for rules in
the order cgroups.Limits.device_rules() gives them (deny all, the config's, runc's
defaults), checks them from the last to the first, so the last rule that matches
decides, as each later write to devices.allow/deny overrides on v1:

    r2 = type   r3 = access   r4 = major   r5 = minor       (loaded from the context)
    rule k:  if type != T goto k-1                            (not for type "a")
             allow: if access & ~A goto k-1   deny: if !(access & A) goto k-1
             if major != M goto k-1; if minor != N goto k-1   (not for "*")
             r0 = allow; exit
    end:     r0 = 0; exit                                     (no rule matched: deny)

Instructions are `struct bpf_insn` (Documentation/bpf/instruction-set.rst): an
8-bit opcode (class | operation | source), two 4-bit registers, a 16-bit jump
offset counted in instructions after this one, a 32-bit immediate.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

from pykvm.container.runtime.syscalls import check, ffi, lib
from pykvm.errors import ContainerError, SyscallError

__all__ = ["program", "attach"]

INSN = struct.Struct("<BBhi")          # struct bpf_insn: code, dst|src<<4, off, imm
LOG_SIZE = 1 << 16                     # the verifier's log, shown when it refuses the program
R0, R1, R2, R3, R4, R5 = range(6)      # return value; context; our four loaded fields
TYPE_MASK, ACCESS_SHIFT = 0xFFFF, 16   # access_type = access << 16 | type
ACCESS_ALL = lib.BPF_DEVCG_ACC_MKNOD | lib.BPF_DEVCG_ACC_READ | lib.BPF_DEVCG_ACC_WRITE
ACCESS_BITS = {"m": lib.BPF_DEVCG_ACC_MKNOD, "r": lib.BPF_DEVCG_ACC_READ, "w": lib.BPF_DEVCG_ACC_WRITE}
DEVICE_TYPES = {"b": lib.BPF_DEVCG_DEV_BLOCK, "c": lib.BPF_DEVCG_DEV_CHAR}


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    assert INSN.size == ffi.sizeof("struct bpf_insn")
    return INSN.pack(code, dst | src << 4, off, imm)


def _load_field(dst: int, field: str) -> bytes:
    """dst = ctx->field (a 32-bit load from the context R1 points at)."""
    return _insn(lib.BPF_LDX | lib.BPF_MEM | lib.BPF_W, dst, R1, ffi.offsetof("struct bpf_cgroup_dev_ctx", field))


def _alu32(op: int, dst: int, imm: int) -> bytes:
    return _insn(lib.BPF_ALU | op | lib.BPF_K, dst, imm=imm)


def _jump_if(op: int, reg: int, imm: int, skip: int) -> bytes:
    """if reg OP imm: skip the next `skip` instructions."""
    return _insn(lib.BPF_JMP | op | lib.BPF_K, reg, off=skip, imm=imm)


def _return(value: int) -> list[bytes]:
    return [_insn(lib.BPF_ALU64 | lib.BPF_MOV | lib.BPF_K, R0, imm=value), _insn(lib.BPF_JMP | lib.BPF_EXIT)]


def _prologue() -> list[bytes]:
    return [_load_field(R2, "access_type"), _alu32(lib.BPF_AND, R2, TYPE_MASK),
            _load_field(R3, "access_type"), _alu32(lib.BPF_RSH, R3, ACCESS_SHIFT),
            _load_field(R4, "major"), _load_field(R5, "minor")]


def _rule(rule) -> list[bytes]:
    """One rule's block; each test jumps past the block's end when the access does not match."""
    tests: list[tuple[list[bytes], int, int, int]] = []      # (set-up, jump op, register, immediate)
    access = sum(ACCESS_BITS[c] for c in set(rule.access))
    if rule.type != "a":
        tests.append(([], lib.BPF_JNE, R2, DEVICE_TYPES[rule.type]))
    if access != ACCESS_ALL:
        # r1 = the access asked for & what the rule does not allow (allow rule: must be 0)
        #                             & what the rule denies (deny rule: must not be 0)
        mask = (ACCESS_ALL & ~access) if rule.allow else access
        setup = [_insn(lib.BPF_ALU | lib.BPF_MOV | lib.BPF_X, R1, R3), _alu32(lib.BPF_AND, R1, mask)]
        tests.append((setup, lib.BPF_JNE if rule.allow else lib.BPF_JEQ, R1, 0))
    for reg, number in ((R4, rule.major), (R5, rule.minor)):
        if number is not None:
            tests.append(([], lib.BPF_JNE, reg, number))
    body = _return(1 if rule.allow else 0)
    out: list[bytes] = []
    for i, (setup, op, reg, imm) in enumerate(tests):
        after = sum(len(s) + 1 for s, *_ in tests[i + 1:]) + len(body)
        out += setup + [_jump_if(op, reg, imm, after)]
    return out + body


def program(rules) -> bytes:
    """The instructions for `rules` (cgroups.DeviceRule, in writing order: the last that
    matches decides; none: deny)."""
    insns = _prologue()
    for rule in reversed(rules):
        block = _rule(rule)
        insns += block
        if len(block) == len(_return(0)):        # no test: it matches everything, and the
            return b"".join(insns)              # verifier refuses code that cannot be reached
    return b"".join(insns + _return(0))


def attach(cgroup_dir: Path, rules) -> None:
    """Load the program for `rules` and attach it to the cgroup v2 directory (it stays
    attached, holding the program, until the cgroup is removed)."""
    code = program(rules)
    log = ffi.new("char[]", LOG_SIZE)
    buf = ffi.from_buffer(code)
    prog = lib.bpf_load_device_program(buf, len(code) // INSN.size, log, LOG_SIZE)
    if prog < 0:
        err = ffi.errno
        raise ContainerError(f"cannot load the cgroup device program ({os.strerror(err)}): "
                             f"{ffi.string(log).decode(errors='replace').strip()[-300:]}")
    try:
        cgroup = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            check(lib.bpf_attach_device_program(cgroup, prog), "bpf", f"BPF_PROG_ATTACH to {cgroup_dir}")
        finally:
            os.close(cgroup)
    except SyscallError as e:
        raise ContainerError(f"cannot attach the device program to {cgroup_dir}: {os.strerror(e.errno)}") from None
    finally:
        os.close(prog)
