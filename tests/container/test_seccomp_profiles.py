"""Seccomp without root: profiles read and checked, Docker's rules chosen by capability, and
filters compiled by libseccomp and loaded into a forked child (no_new_privs makes loading a
filter unprivileged), whose system calls then get the profile's answers."""
from __future__ import annotations

import errno
import json
import os

import pytest

from pykvm.container.runtime.docker_seccomp import oci_profile
from pykvm.container.runtime.seccomp import Filter, compile_filter, disassemble, export_pfc, parse_profile
from pykvm.container.runtime.syscalls import lib, prctl
from pykvm.errors import ConfigError


def under_filter(profile: dict, *calls) -> list:
    """Fork; the child sets no_new_privs, loads the compiled profile and makes each call
    (a function of no argument); the errno each one failed with, or "ok", comes back."""
    flt = compile_filter(parse_profile(profile))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            prctl(lib.PR_SET_NO_NEW_PRIVS, 1)
            flt.load()
            results = []
            for call in calls:
                try:
                    call()
                    results.append("ok")
                except OSError as e:
                    results.append(e.errno)
            os.write(write_end, json.dumps(results).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return json.loads(out)


def test_an_errno_rule_answers_for_the_kernel():
    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EDOM}]}
    assert under_filter(profile, os.uname, os.getpid) == [errno.EDOM, "ok"]


def test_conditions_on_different_arguments_must_all_hold():
    """setpriority(which, who, prio): only PRIO_PROCESS *and* prio 7 is refused."""
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["setpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EDOM,
         "args": [{"index": 0, "value": os.PRIO_PROCESS, "op": "SCMP_CMP_EQ"},
                  {"index": 2, "value": 7, "op": "SCMP_CMP_EQ"}]}]}
    assert under_filter(profile, lambda: os.setpriority(os.PRIO_PROCESS, 0, 6),
                        lambda: os.setpriority(os.PRIO_PROCESS, 0, 7),
                        lambda: os.setpriority(os.PRIO_PGRP, 0, 7)) == ["ok", errno.EDOM, "ok"]


def test_two_conditions_on_one_argument_are_separate_rules_as_in_runc():
    """runc's matchCall: then each condition is a rule of its own, so either one matches."""
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["setpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EDOM,
         "args": [{"index": 2, "value": 7, "op": "SCMP_CMP_EQ"},
                  {"index": 2, "value": 9, "op": "SCMP_CMP_EQ"}]}]}
    assert under_filter(profile, lambda: os.setpriority(os.PRIO_PROCESS, 0, 7),
                        lambda: os.setpriority(os.PRIO_PROCESS, 0, 8),
                        lambda: os.setpriority(os.PRIO_PROCESS, 0, 9)) == [errno.EDOM, "ok", errno.EDOM]


def test_masked_eq_compares_the_masked_bits():
    """Docker's clone rule in miniature: setpriority's prio & 0x3 == 1 is refused."""
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["setpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EDOM,
         "args": [{"index": 2, "value": 0x3, "valueTwo": 1, "op": "SCMP_CMP_MASKED_EQ"}]}]}
    assert under_filter(profile, lambda: os.setpriority(os.PRIO_PROCESS, 0, 4),
                        lambda: os.setpriority(os.PRIO_PROCESS, 0, 5)) == ["ok", errno.EDOM]


def test_default_errno_ret_and_an_allowlist():
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": errno.ENOSYS,
               "syscalls": [{"names": ["getpid", "write", "exit_group", "uname"], "action": "SCMP_ACT_ALLOW"}]}
    assert under_filter(profile, os.getpid, os.getcwd) == ["ok", errno.ENOSYS]


def test_unknown_names_are_skipped_with_a_warning():
    warnings = []
    profile = parse_profile({"defaultAction": "SCMP_ACT_ALLOW",
                             "syscalls": [{"names": ["no_such_call", "uname"], "action": "SCMP_ACT_ERRNO"}]})
    compile_filter(profile, warnings.append)
    assert warnings == ["seccomp: unknown syscall 'no_such_call' skipped (libseccomp does not know it)"]


@pytest.mark.parametrize("profile,message", [
    ({"syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ERRNO"}]}, "defaultAction None is not one of"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [], "action": "SCMP_ACT_ERRNO"}]},
     "syscalls[0].names must be a non-empty list"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ERRNO",
                                                       "errnoRet": 70000}]}, "errnoRet must be an integer in 0-65535"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ERRNO",
                                                       "args": [{"index": 0, "value": 2**64, "op": "SCMP_CMP_EQ"}]}]},
     "args[0].value must be an integer in 0-18446744073709551615"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ERRNO",
                                                       "args": [{"index": 0, "value": 1, "op": "EQ"}]}]},
     "args[0].op 'EQ' is not one of"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent"}, "listenerPath is set"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": "uname"}, "syscalls must be a list"),
])
def test_bad_profiles_name_the_field(profile, message):
    with pytest.raises(ConfigError, match=r"^config\.json: linux\.seccomp") as e:
        parse_profile(profile)
    assert message in str(e.value), str(e.value)


def test_an_empty_profile_asks_for_no_filter():
    """runc's specconv: no defaultAction and no syscalls is no seccomp at all."""
    assert parse_profile({}) is None


def test_a_compiled_filter_survives_state_json():
    flt = compile_filter(parse_profile({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_LOG"],
                                        "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ERRNO"}]}))
    assert flt.flags == lib.SECCOMP_FILTER_FLAG_LOG
    assert Filter.from_json(json.loads(json.dumps(flt.to_json()))) == flt
    assert Filter.from_json(None) is None


def test_the_program_reads_as_the_profile_says():
    """The arch check first, then the call's number, then the answers."""
    flt = compile_filter(parse_profile({"defaultAction": "SCMP_ACT_ALLOW",
                                        "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ERRNO"}]}))
    lines = [line.split(": ", 1)[1] for line in disassemble(flt.program)]
    assert lines[0] == "ld  [arch]" and lines[1].startswith("jeq #0xc000003e, 2,"), lines   # AUDIT_ARCH_X86_64
    assert lines[2] == "ld  [nr]", lines
    assert any(line.startswith("jeq #0x3f,") for line in lines), lines       # uname is 63 on x86-64
    assert lines[-3:] == ["ret #0x7fff0000", "ret #0x00050001", "ret #0x00000000"], lines
    assert 'if ($syscall == 63)' in export_pfc(parse_profile({"defaultAction": "SCMP_ACT_ALLOW",
                                                              "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ERRNO"}]}))


# --- Docker's default profile -----------------------------------------------------------------

def rules_for(profile: dict, name: str) -> list[dict]:
    return [r for r in profile["syscalls"] if name in r["names"]]


def test_docker_profile_without_sys_admin_masks_clone_and_blocks_mount():
    profile = oci_profile(["CAP_KILL", "CAP_NET_BIND_SERVICE"])
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO" and profile["defaultErrnoRet"] == errno.EPERM
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert rules_for(profile, "mount") == [] and rules_for(profile, "keyctl") == []
    (clone,) = rules_for(profile, "clone")
    assert clone["args"] == [{"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]
    assert rules_for(profile, "clone3") == [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS}]


def test_docker_profile_with_sys_admin_allows_what_it_needs():
    profile = oci_profile(["SYS_ADMIN"])
    assert [r["action"] for r in rules_for(profile, "mount")] == ["SCMP_ACT_ALLOW"]
    assert all("args" not in r for r in rules_for(profile, "clone")), rules_for(profile, "clone")
    assert rules_for(profile, "clone3")[0]["action"] == "SCMP_ACT_ALLOW"
    assert rules_for(profile, "keyctl") == []


def test_docker_format_min_kernel_and_name():
    rules = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"name": "uname", "action": "SCMP_ACT_ERRNO", "includes": {"minKernel": "99.0"}},
        {"name": "getpid", "action": "SCMP_ACT_ERRNO", "excludes": {"minKernel": "99.0"}}]}
    assert [r["names"] for r in oci_profile([], rules, kernel=(6, 1))["syscalls"]] == [["getpid"]]
    assert [r["names"] for r in oci_profile([], rules, kernel=(99, 1))["syscalls"]] == [["uname"]]
    with pytest.raises(ConfigError, match="use either 'name' or 'names'"):
        oci_profile([], {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"name": "a", "names": ["b"]}]})


def test_docker_profile_compiles_for_this_libseccomp():
    """Every name in it is one libseccomp 2.5 knows (no warning), and the program fits."""
    warnings = []
    flt = compile_filter(parse_profile(oci_profile(["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"])), warnings.append)
    assert warnings == [] and 0 < len(flt.program) // 8 <= 4096


def raw_syscall(number: int, *args):
    """A call by number (libc's syscall(2)), an OSError if it fails."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    def call():
        if libc.syscall(number, *args) == -1:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return call


def test_calls_above_the_profile_fail_with_enosys_as_under_runc():
    """runc's stub: above the highest call Docker's profile names is "no such call" (ENOSYS);
    a known call the profile leaves out is EPERM; keyctl is 250 on x86-64, 1000 is no call."""
    profile = oci_profile(["CAP_KILL"])
    assert under_filter(profile, raw_syscall(250, 0, 0), raw_syscall(1000), os.getpid) == \
        [errno.EPERM, errno.ENOSYS, "ok"]


def test_no_stub_where_nothing_would_fall_back():
    """A permissive default, or a default of ENOSYS already: libseccomp's program alone."""
    for default in ({"defaultAction": "SCMP_ACT_ALLOW"},
                    {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": errno.ENOSYS}):
        profile = parse_profile({**default, "architectures": ["SCMP_ARCH_X86_64"],
                                 "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_LOG"}]})
        lines = disassemble(compile_filter(profile).program)
        assert lines[1].split(": ")[1].startswith("jeq #0xc000003e, 2,"), lines   # libseccomp's arch check
        assert "ret #0x00050026" not in "\n".join(lines[:3]), lines
