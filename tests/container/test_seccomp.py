"""Seccomp: the same config.json under runc and pykvm blocks and allows the same system
calls; `pykvm container run` applies Docker's default profile unless told otherwise.

A static probe, built here from C, tries each system call named on its command line and
prints `NAME ok` or `NAME errno N`; runc 1.1 (the same libseccomp compiles its filter)
is the oracle.
"""
from __future__ import annotations

import errno
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from clitools import containers_in
from escape_tools import build_static, edit, refused, runc_run

pytestmark = pytest.mark.root

PROBE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <linux/keyctl.h>
/* Try each system call named on the command line; print "NAME ok" or "NAME errno N". */
static long try(const char *name)
{
    if (!strcmp(name, "getpid")) return syscall(SYS_getpid);
    if (!strcmp(name, "keyctl")) return syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0);
    if (!strcmp(name, "mkdir")) return syscall(SYS_mkdir, "/tmp/probe-dir", 0755);
    if (!strcmp(name, "personality-query")) return syscall(SYS_personality, 0xffffffffUL);
    if (!strcmp(name, "personality-8")) return syscall(SYS_personality, 8UL);
    if (!strcmp(name, "unshare")) return syscall(SYS_unshare, CLONE_NEWUSER);
    if (!strcmp(name, "mount")) return syscall(SYS_mount, "none", "/tmp", "tmpfs", 0UL, 0);
    if (!strcmp(name, "sysinfo")) { char buf[256]; return syscall(SYS_sysinfo, buf); }
    if (!strcmp(name, "setpriority-17")) return syscall(SYS_setpriority, 0, 0, 17);
    if (!strcmp(name, "setpriority-19")) return syscall(SYS_setpriority, 0, 0, 19);
    if (!strcmp(name, "clone-newuser")) {         /* a new user namespace needs no capability */
        long pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
        if (pid == 0)
            _exit(0);
        if (pid > 0)
            waitpid(pid, 0, 0);
        return pid;
    }
    if (!strncmp(name, "nr-", 3)) return syscall(strtol(name + 3, 0, 10));   /* by number */
    errno = EINVAL;
    return -1;
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        long r = try(argv[i]);
        char line[128];
        int n = r >= 0 ? snprintf(line, sizeof line, "%s ok\n", argv[i])
                       : snprintf(line, sizeof line, "%s errno %d\n", argv[i], errno);
        write(1, line, n);
    }
    return 0;
}
"""

# A profile with a rule of each kind: an errno of its own, the default errno, a condition
# on an argument (EQ and MASKED_EQ), KILL, and a name no libseccomp knows.
PROFILE = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "syscalls": [
        {"names": ["keyctl", "add_key"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"},
        {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES,
         "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
        {"names": ["setpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EDOM,
         "args": [{"index": 2, "value": 0x3, "valueTwo": 1, "op": "SCMP_CMP_MASKED_EQ"}]},
        {"names": ["sysinfo"], "action": "SCMP_ACT_KILL"},   # none of runc's own calls after its load
        {"names": ["no_such_syscall"], "action": "SCMP_ACT_ERRNO"},
    ],
}
# Nice values 17 and 19: (17 & 3) == 1 is refused by the filter, 19 passes it.  Both are at the
# bottom of the nice range, so the kernel allows 19 without CAP_SYS_NICE even where the test
# runs niced (a lower value than the caller's own nice would be EACCES, whatever the filter).
CALLS = ["getpid", "keyctl", "mkdir", "personality-query", "personality-8", "setpriority-17",
         "setpriority-19"]


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    return build_static(PROBE, tmp_path_factory.mktemp("probe"), "probe")


def probe_bundle(bundle: Path, probe: Path, args: list[str], seccomp: dict, **changes) -> Path:
    shutil.copy(probe, bundle / "rootfs" / "probe")
    return edit(bundle, process__args=["/probe", *args], linux__seccomp=seccomp, **changes)


@pytest.mark.parametrize("no_new_privileges", [True, False])
def test_profile_blocks_and_allows_what_runc_does(pykvm, runc_bundle, probe, tmp_path, no_new_privileges):
    probe_bundle(runc_bundle, probe, CALLS, PROFILE, process__noNewPrivileges=no_new_privileges)
    ours = pykvm("container", "oci", "run", "--bundle", runc_bundle, "probe")
    theirs = runc_run(runc_bundle, tmp_path)
    assert ours.returncode == theirs.returncode == 0, (ours.stderr, theirs.stderr)
    assert ours.stdout == theirs.stdout, (ours.stdout, theirs.stdout)
    results = dict(line.split(" ", 1) for line in ours.stdout.splitlines())
    assert results == {"getpid": "ok", "keyctl": f"errno {errno.ENOSYS}", "mkdir": f"errno {errno.EPERM}",
                       "personality-query": "ok", "personality-8": f"errno {errno.EACCES}",
                       "setpriority-17": f"errno {errno.EDOM}", "setpriority-19": "ok"}, ours.stdout


def test_kill_action_kills_as_under_runc(pykvm, runc_bundle, probe, tmp_path):
    """SCMP_ACT_KILL: the thread dies of SIGSYS before the call; the status says so (128 + 31)."""
    probe_bundle(runc_bundle, probe, ["getpid", "sysinfo", "getpid"], PROFILE)
    ours = pykvm("container", "oci", "run", "--bundle", runc_bundle, "probe")
    theirs = runc_run(runc_bundle, tmp_path)
    assert ours.returncode == theirs.returncode == 128 + 31, (ours.returncode, theirs.returncode)
    assert ours.stdout == theirs.stdout == "getpid ok\n", (ours.stdout, theirs.stdout)


def test_default_errno_ret_as_under_runc(pykvm, runc_bundle, probe, tmp_path):
    """An allowlist (Docker's, from our data) whose default answer is ENOSYS, not EPERM."""
    from pykvm.container.runtime.docker_seccomp import oci_profile
    profile = oci_profile(bounding=[]) | {"defaultErrnoRet": errno.ENOSYS}
    probe_bundle(runc_bundle, probe, ["getpid", "keyctl", "mount", "clone-newuser", "unshare"], profile)
    ours = pykvm("container", "oci", "run", "--bundle", runc_bundle, "probe")
    theirs = runc_run(runc_bundle, tmp_path)
    assert ours.returncode == theirs.returncode == 0, (ours.stderr, theirs.stderr)
    assert ours.stdout == theirs.stdout == (f"getpid ok\nkeyctl errno {errno.ENOSYS}\nmount errno {errno.ENOSYS}\n"
                                            f"clone-newuser errno {errno.ENOSYS}\nunshare errno {errno.ENOSYS}\n"), \
        (ours.stdout, theirs.stdout)


def test_calls_newer_than_the_profile_get_enosys_as_under_runc(pykvm, runc_bundle, probe, tmp_path):
    """runc's stub: a number above every call Docker's profile names (449, futex_waitv, on
    x86-64) is "no such call", ENOSYS, so that glibc falls back; one the profile skips is EPERM."""
    from pykvm.container.runtime.docker_seccomp import oci_profile
    profile = oci_profile(bounding=[])
    probe_bundle(runc_bundle, probe, ["getpid", "keyctl", "nr-451", "nr-1000"], profile)
    ours = pykvm("container", "oci", "run", "--bundle", runc_bundle, "probe")
    theirs = runc_run(runc_bundle, tmp_path)
    assert ours.returncode == theirs.returncode == 0, (ours.stderr, theirs.stderr)
    assert ours.stdout == theirs.stdout == (f"getpid ok\nkeyctl errno {errno.EPERM}\nnr-451 errno {errno.ENOSYS}\n"
                                            f"nr-1000 errno {errno.ENOSYS}\n"), (ours.stdout, theirs.stdout)


@pytest.mark.parametrize("seccomp,field", [
    ({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"}, "linux.seccomp.listenerPath"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]},
     "linux.seccomp.syscalls[0].action"),
    ({"defaultAction": "SCMP_ACT_NOTIFY"}, "linux.seccomp.defaultAction"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO",
                                                       "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]},
     "linux.seccomp.syscalls[0].args[0].index"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]}, "linux.seccomp.architectures"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_NEW_LISTENER"]}, "linux.seccomp.flags"),
])
def test_what_pykvm_cannot_apply_is_one_line_naming_the_field(pykvm, runc_bundle, seccomp, field):
    """A seccomp agent (SCMP_ACT_NOTIFY) pykvm does not have; a bad value no runtime could use."""
    edit(runc_bundle, process__args=["true"], linux__seccomp=seccomp)
    r = pykvm("container", "oci", "run", "--bundle", runc_bundle, "refused")
    assert f"config.json: {field}" in refused(r), r.stderr


# --- pykvm container run: Docker's default profile ------------------------------------------

BLOCKED_BY_DOCKER = ["keyctl", "mount", "clone-newuser", "unshare"]   # clone first: unshare leaves the probe unmapped


def run_probe(pykvm, rootfs: Path, probe: Path, *options) -> subprocess.CompletedProcess:
    shutil.copy(probe, rootfs / "probe")
    return pykvm("container", "run", "--rm", *options, "--rootfs", rootfs, "/probe", "getpid", *BLOCKED_BY_DOCKER)


def test_docker_default_profile_blocks_what_docker_blocks(pykvm, fresh_rootfs, probe):
    r = run_probe(pykvm, fresh_rootfs, probe)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "getpid ok\n" + "".join(f"{c} errno {errno.EPERM}\n" for c in BLOCKED_BY_DOCKER), r.stdout


def test_unconfined_has_no_filter(pykvm, fresh_rootfs, probe):
    """keyctl and a new user namespace need no capability: only the filter stopped them.
    mount still fails: the kernel wants CAP_SYS_ADMIN."""
    r = run_probe(pykvm, fresh_rootfs, probe, "--security-opt", "seccomp=unconfined")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ("getpid ok\nkeyctl ok\nmount errno 1\nclone-newuser ok\nunshare ok\n"), r.stdout


def test_sys_admin_gets_the_rules_docker_gives_it(pykvm, fresh_rootfs, probe):
    """--cap-add SYS_ADMIN: mount, unshare and namespaced clone are allowed (Docker's includes)."""
    r = run_probe(pykvm, fresh_rootfs, probe, "--cap-add", "SYS_ADMIN")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"getpid ok\nkeyctl errno {errno.EPERM}\nmount ok\nclone-newuser ok\nunshare ok\n", r.stdout


def test_profile_file_and_no_new_privileges(pykvm, fresh_rootfs, probe, tmp_path):
    """seccomp=FILE in Docker's format (name, includes); no-new-privileges=false is honoured."""
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"name": "keyctl", "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES},
        {"names": ["mount"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EBUSY,
         "includes": {"caps": ["CAP_SYS_ADMIN"]}}]}
    (tmp_path / "profile.json").write_text(json.dumps(profile))
    r = run_probe(pykvm, fresh_rootfs, probe, "--security-opt", f"seccomp={tmp_path / 'profile.json'}",
                  "--security-opt", "no-new-privileges=false")
    assert r.stdout.splitlines()[:3] == ["getpid ok", f"keyctl errno {errno.EACCES}", "mount errno 1"], r.stdout
    r = pykvm("container", "run", "--rm", "--security-opt", "no-new-privileges=false", "--rootfs", fresh_rootfs,
              "grep", "NoNewPrivs", "/proc/self/status")
    assert r.stdout.split() == ["NoNewPrivs:", "0"], r.stdout + r.stderr


@pytest.mark.parametrize("content,message", [
    ("{not json", "is not valid JSON"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOPE"}]}',
     "syscalls[0].action 'SCMP_ACT_NOPE' is not one of"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", '
     '"args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}]}', "args[0].value must be an integer"),
])
def test_bad_profile_file_is_one_line(pykvm, busybox_rootfs, tmp_path, state_root, content, message):
    (tmp_path / "bad.json").write_text(content)
    r = pykvm("container", "run", "--rm", "--security-opt", f"seccomp={tmp_path / 'bad.json'}",
              "--rootfs", busybox_rootfs, "true")
    assert message in refused(r), r.stderr
    assert containers_in(state_root) == []


def test_exec_gets_the_containers_filter(pykvm, fresh_rootfs, probe, state_root):
    """runc exec loads the container's filter; so does ours, from state.json."""
    shutil.copy(probe, fresh_rootfs / "probe")
    cid = pykvm("container", "run", "-d", "--rootfs", fresh_rootfs, "sleep", "1000").stdout.strip()
    try:
        r = pykvm("container", "exec", cid, "/probe", "getpid", "keyctl")
        assert r.stdout == f"getpid ok\nkeyctl errno {errno.EPERM}\n", r.stdout + r.stderr
    finally:
        pykvm("container", "rm", "-f", cid)
