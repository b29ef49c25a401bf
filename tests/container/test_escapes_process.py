"""Escapes through the container's processes: ids out of range, the host's keyring, a
privileged PID 1, and config fields that used to be ignored.  runc 1.1 is the oracle.

Each test here failed before the runtime checked ids against runc's range, gave every
container a session keyring of its own, dropped pykvm-init to the command's privileges,
applied umask/sysctl/oomScoreAdj and refused what it cannot apply.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from clitools import wait_for
from escape_tools import build_static, cgroup2_root, cgroup_view, edit, refused, runc_run

from pykvm.container.runtime import cgroups

pytestmark = pytest.mark.root

KEYPROBE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/keyctl.h>
/* Print our session keyring's name, then try to read key argv[1] (keyctl(2)). */
int main(int argc, char **argv)
{
    char buf[256];
    long ses = syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0);
    long n = syscall(SYS_keyctl, KEYCTL_DESCRIBE, ses, buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = 0;
    printf("session %s\n", n > 0 ? strrchr(buf, ';') + 1 : "none");
    n = syscall(SYS_keyctl, KEYCTL_READ, strtol(argv[1], 0, 10), buf, sizeof buf);
    if (n >= 0)
        printf("read %.*s\n", (int)n, buf);
    else
        printf("read refused\n");
    return 0;
}
"""

# A launcher in a session keyring of its own, holding one secret key: what the host's
# root keeps in its session.  Writes the key's serial to $KEY_FILE, then becomes `pykvm ARGS...`.
WITH_HOST_KEY = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
SYS_add_key, SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, KEY_SPEC_SESSION_KEYRING = 248, 250, 1, -3
assert libc.syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, None) > 0
key = libc.syscall(SYS_add_key, b"user", b"pykvm-test", b"host-secret", 11, KEY_SPEC_SESSION_KEYRING)
assert key > 0, ctypes.get_errno()
open(os.environ["KEY_FILE"], "w").write(str(key))
os.execv(sys.executable, [sys.executable, "-m", "pykvm", *sys.argv[1:]])
"""








# --- ids ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("user", ["4294967295", "1000:4294967295", "2147483648", "0:4294967296"])
def test_user_ids_out_of_range_are_refused(pykvm, busybox_rootfs, user):
    """(uid_t)-1 is "unchanged" to setresuid(2): `-u 4294967295` ran as root."""
    r = pykvm("container", "run", "--rm", "-u", user, "--rootfs", busybox_rootfs, "id")
    assert "must be in range 0-2147483647" in refused(r), r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize("field,value", [("uid", 4294967295), ("gid", 4294967295), ("uid", 2**32),
                                         ("additionalGids", [2**31])])
def test_config_ids_out_of_range_are_refused_as_runc_does(pykvm, runc_bundle, tmp_path, field, value):
    edit(runc_bundle, process__args=["id"], **{f"process__user__{field}": value})
    r = pykvm("container", "oci", "run", "--bundle", runc_bundle, "ids")
    assert "range 0-2147483647" in refused(r), r.stderr
    theirs = runc_run(runc_bundle, tmp_path)
    assert theirs.returncode != 0 and theirs.stdout == "", theirs.stdout


def test_user_takes_gid_and_groups_from_the_images_files(pykvm, fresh_rootfs):
    """Docker: -u 1000 -> the passwd line's gid, and the groups that list the user."""
    (fresh_rootfs / "etc" / "group").write_text("root:x:0:\nuser:x:1000:\nwheel:x:10:other,user\n")
    r = pykvm("container", "run", "--rm", "-u", "1000", "--rootfs", fresh_rootfs, "id")
    assert r.stdout == "uid=1000(user) gid=1000(user) groups=10(wheel)\n", r.stdout + r.stderr
    r = pykvm("container", "run", "--rm", "-u", "1000:0", "--rootfs", fresh_rootfs, "id")
    assert r.stdout == "uid=1000(user) gid=0(root)\n", r.stdout + r.stderr      # :GROUP given: no others


# --- the keyring --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keyprobe(tmp_path_factory) -> Path:
    return build_static(KEYPROBE, tmp_path_factory.mktemp("keyprobe"), "keyprobe")


@pytest.mark.parametrize("new_keyring", [True, False])
def test_container_gets_a_session_keyring_of_its_own(runc_bundle, keyprobe, state_root, new_keyring):
    """Host root's session key was readable by container root; runc: a new "_ses.<id>"."""
    rootfs = runc_bundle / "rootfs"
    shutil.copy(keyprobe, rootfs / "keyprobe")
    (rootfs / "probe.sh").write_text('#!/bin/sh\nexec /keyprobe "$(cat /key)"\n')
    os.chmod(rootfs / "probe.sh", 0o755)
    edit(runc_bundle, process__args=["/probe.sh"])
    args = ["container", "oci", "run", *([] if new_keyring else ["--no-new-keyring"]),
            "--bundle", str(runc_bundle), "keys"]
    r = subprocess.run([sys.executable, "-c", WITH_HOST_KEY, *args], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "PYKVM_STATE_ROOT": str(state_root),
                                        "KEY_FILE": str(rootfs / "key")})
    assert r.returncode == 0, r.stderr
    if new_keyring:
        assert r.stdout == "session _ses.keys\nread refused\n", r.stdout
    else:                                   # the opt-out keeps the caller's, as runc's does
        assert r.stdout == "session _ses\nread host-secret\n", r.stdout


def test_exec_joins_the_containers_keyring(pykvm, busybox_rootfs, keyprobe, tmp_path, state_root):
    rootfs = tmp_path / "rootfs"
    shutil.copytree(busybox_rootfs, rootfs, symlinks=True)
    shutil.copy(keyprobe, rootfs / "keyprobe")
    assert pykvm("container", "run", "-d", "--name", "ex", "--security-opt", "seccomp=unconfined",
                 "--rootfs", rootfs, "sleep", "300").returncode == 0
    try:
        cid = json.loads(next(state_root.glob("*/state.json")).read_text())["id"]
        r = pykvm("container", "exec", "ex", "/keyprobe", "0")
        assert r.stdout.splitlines()[0] == f"session _ses.{cid}", r.stdout + r.stderr
    finally:
        pykvm("container", "rm", "-f", "ex")


def test_default_seccomp_profile_blocks_keyctl(pykvm, fresh_rootfs, keyprobe):
    """Container root could join another container's `_ses.<id>` (searchable by uid 0, so that
    `exec` can join it; runc has the same gap).  Docker's default profile, `container run`'s
    too, fails every keyctl(2) with EPERM: no keyring is in reach at all."""
    shutil.copy(keyprobe, fresh_rootfs / "keyprobe")
    r = pykvm("container", "run", "--rm", "--rootfs", fresh_rootfs, "/keyprobe", "0")
    assert r.stdout == "session none\nread refused\n", r.stdout + r.stderr
    r = pykvm("container", "run", "--rm", "--security-opt", "seccomp=unconfined", "--rootfs", fresh_rootfs,
              "/keyprobe", "0")
    assert r.stdout.startswith("session _ses."), r.stdout + r.stderr


# --- pykvm-init ----------------------------------------------------------------------------------

STATUS_FIELDS = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs")


@pytest.mark.parametrize("options", [[], ["-u", "1000"], ["--cap-drop", "ALL"], ["--cap-add", "SYS_ADMIN"]])
def test_init_has_no_more_privilege_than_the_command(pykvm, busybox_rootfs, options):
    """PID 1 (pykvm-init, --init) kept the host's full capability set for the container's life."""
    fields = "|".join(STATUS_FIELDS)
    r = pykvm("container", "run", "--rm", "--init", *options, "--rootfs", busybox_rootfs, "sh", "-c",
              f"grep -E '^({fields}):' /proc/1/status; echo --; grep -E '^({fields}):' /proc/self/status")
    assert r.returncode == 0, r.stderr
    init, _, command = r.stdout.partition("--\n")
    assert init == command, f"init:\n{init}command:\n{command}"


# --- umask, /dev, sysctl, oomScoreAdj ------------------------------------------------------------

def test_umask_is_runcs_not_the_callers(pykvm, busybox_rootfs):
    """The caller's umask 077 leaked in, and cut /dev/null to 0600: user 1000 could not write it."""
    r = pykvm("container", "run", "--rm", "-u", "1000", "--rootfs", busybox_rootfs, "sh", "-c",
              "umask; stat -c '%a %n' /dev/null /dev/zero /dev/tty /dev/full; echo x > /dev/null && echo ok",
              preexec_fn=lambda: os.umask(0o077))
    assert r.stdout == "0022\n666 /dev/null\n666 /dev/zero\n666 /dev/tty\n666 /dev/full\nok\n", r.stdout + r.stderr


def test_config_umask_sysctl_and_oom_score_adj_match_runc(pykvm, runc_bundle, tmp_path):
    probe = ("umask; cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmni "
             "/proc/self/oom_score_adj; touch /dev/shm/f; stat -c %a /dev/shm/f")
    edit(runc_bundle, process__args=["sh", "-c", probe], process__user__umask=0o027,
         process__oomScoreAdj=423, linux__sysctl={"net.ipv4.ip_forward": "1", "kernel.shmmni": "1234"})
    host_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    ours = pykvm("container", "oci", "run", "--bundle", runc_bundle, "tuned")
    theirs = runc_run(runc_bundle, tmp_path)
    assert ours.returncode == theirs.returncode == 0, (ours.stderr, theirs.stderr)
    assert ours.stdout == theirs.stdout == "0027\n1\n1234\n423\n640\n", (ours.stdout, theirs.stdout)
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == host_forward


@pytest.mark.parametrize("sysctl,message", [
    ({"kernel.pid_max": "100"}, "is not namespaced"),
    ({"vm.overcommit_memory": "1"}, "is not namespaced"),
    ({"net.ipv4.ip_forward": "1"}, "needs a network namespace"),
])
def test_sysctl_outside_the_containers_namespaces_is_refused(pykvm, runc_bundle, sysctl, message):
    spec = json.loads((runc_bundle / "config.json").read_text())
    namespaces = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"]
    edit(runc_bundle, process__args=["true"], linux__sysctl=sysctl, linux__namespaces=namespaces)
    r = pykvm("container", "oci", "run", "--bundle", runc_bundle, "sysctl")
    assert message in refused(r), r.stderr


@pytest.mark.parametrize("field,value", [
    ("process__apparmorProfile", "docker-default"),
    ("process__selinuxLabel", "system_u:system_r:container_t:s0"),
])
def test_what_pykvm_cannot_apply_is_refused_by_name(pykvm, runc_bundle, field, value):
    """Ignoring an AppArmor profile or an SELinux label silently runs a container weaker than asked for."""
    edit(runc_bundle, process__args=["true"], **{field: value})
    r = pykvm("container", "oci", "run", "--bundle", runc_bundle, "unsupported")
    assert f"config.json: {field.replace('__', '.')} is set" in refused(r), r.stderr


# --- hooks ----------------------------------------------------------------------------------------

HOOK_KINDS = ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"]


def with_hooks(bundle: Path, log_dir: Path, fail: str | None = None) -> Path:
    """Every hook kind appends `KIND <state JSON> <argv[1]> <$FOO>` to log_dir/log (seen as
    /hooklog/log from the new root, where startContainer runs); `fail` exits 3 instead."""
    (bundle / "rootfs" / "hooklog").mkdir(exist_ok=True)

    def hook(kind):
        log = "/hooklog/log" if kind == "startContainer" else f"{log_dir}/log"
        script = "exit 3" if kind == fail else f'read s; echo {kind} "$s" "$0" "$FOO" >> {log}'
        return [{"path": "/bin/sh", "args": ["sh", "-c", script, "argzero"], "env": ["FOO=bar"]}]
    spec = json.loads((bundle / "config.json").read_text())
    spec["mounts"].append({"destination": "/hooklog", "type": "bind", "source": str(log_dir),
                           "options": ["rbind"]})
    (bundle / "config.json").write_text(json.dumps(spec))
    return edit(bundle, process__args=["true"], hooks={k: hook(k) for k in HOOK_KINDS})


def hook_log(log_dir: Path) -> list[tuple[str, dict, str, str]]:
    out = []
    for line in (log_dir / "log").read_text().splitlines():
        kind, rest = line.split(" ", 1)
        state, _, words = rest.rpartition("}")
        out.append((kind, json.loads(state + "}"), *words.split()))
    (log_dir / "log").unlink()
    return out


def test_hooks_run_where_and_when_runc_runs_them(pykvm, runc_bundle, tmp_path):
    """Each kind once, with its argv, env and the state JSON on stdin, in the spec's order."""
    log_dir = tmp_path / "hooklog"
    log_dir.mkdir()
    with_hooks(runc_bundle, log_dir)
    assert pykvm("container", "oci", "run", "--bundle", runc_bundle, "hooked").returncode == 0
    ours = hook_log(log_dir)
    assert runc_run(runc_bundle, tmp_path / "runc", "hooked").returncode == 0
    theirs = hook_log(log_dir)
    assert [k for k, *_ in ours] == HOOK_KINDS, ours
    assert sorted(k for k, *_ in theirs) == sorted(HOOK_KINDS), theirs
    runc_says = {kind: (state["status"], state.get("pid"), rest) for kind, state, *rest in theirs}
    for kind, state, *rest in ours:
        status, pid, runc_rest = runc_says[kind]
        assert rest == runc_rest == ["argzero", "bar"], (kind, rest, runc_rest)
        assert state["id"] == "hooked" and state["bundle"] == str(runc_bundle)
        if kind != "poststart":               # runc 1.1 runs it racing the exec.fifo: "created"
            assert state["status"] == status, (kind, state, status)
        assert (state.get("pid") == 1) == (pid == 1) and ("pid" in state) == (pid is not None), (kind, state)
    assert dict((k, s["status"]) for k, s, *_ in ours)["poststart"] == "running"


def test_hooks_across_create_start_delete(pykvm, runc_bundle, tmp_path):
    """poststart comes from `oci start`, poststop from `oci delete` (state.json keeps the hooks)."""
    log_dir = tmp_path / "hooklog"
    log_dir.mkdir()
    with_hooks(runc_bundle, log_dir)
    assert pykvm("container", "oci", "create", "--bundle", runc_bundle, "life", stdin=subprocess.DEVNULL,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
    assert [k for k, *_ in hook_log(log_dir)] == HOOK_KINDS[:3]
    assert pykvm("container", "oci", "start", "life").returncode == 0
    wait_for(lambda: json.loads(pykvm("container", "oci", "state", "life").stdout)["status"] == "stopped")
    assert pykvm("container", "oci", "delete", "life").returncode == 0
    assert [k for k, *_ in hook_log(log_dir)] == HOOK_KINDS[3:]


@pytest.mark.parametrize("kind,code", [("createRuntime", 1), ("createContainer", 125), ("startContainer", 125),
                                       ("poststart", 0), ("poststop", 0)])
def test_a_failing_hook_stops_or_warns_as_the_spec_says(pykvm, runc_bundle, tmp_path, state_root, kind, code):
    log_dir = tmp_path / "hooklog"
    log_dir.mkdir()
    with_hooks(runc_bundle, log_dir, fail=kind)
    r = pykvm("container", "oci", "run", "--bundle", runc_bundle, "failing")
    assert r.returncode == code, (r.returncode, r.stderr)
    assert f"hooks.{kind}[0] /bin/sh failed with status 3" in r.stderr, r.stderr
    assert r.stderr.startswith("pykvm: warning: " if code == 0 else "pykvm: error: "), r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert pykvm("container", "ps", "-a", "-q").stdout == ""


@pytest.mark.parametrize("hooks,message", [
    ({"prestart": [{"path": "bin/sh"}]}, "hooks.prestart[0].path must be an absolute path"),
    ({"onBoot": []}, "hooks.onBoot is not a hook kind"),
    ({"poststop": [{"path": "/bin/sh", "timeout": 0}]}, "timeout must be a positive number"),
    ({"poststop": [{"path": "/bin/sh", "env": ["NOEQUALS"]}]}, "env entries must be NAME=VALUE"),
])
def test_bad_hooks_are_refused_by_name(pykvm, runc_bundle, hooks, message):
    edit(runc_bundle, process__args=["true"], hooks=hooks)
    assert message in refused(pykvm("container", "oci", "run", "--bundle", runc_bundle, "badhook"))


# --- signals --------------------------------------------------------------------------------------

FORWARDED = ["ALRM", "CONT", "TSTP", "TTIN", "TTOU", "PIPE", "URG", "USR1", "WINCH", "34", "50", "64"]


@pytest.mark.parametrize("init", [[], ["--init"]])
def test_kill_forwards_every_signal(pykvm, busybox_rootfs, state_root, init):
    """pykvm-init dropped all but INT/TERM/HUP/QUIT/USR1/USR2/WINCH while `kill` said ok.
    Without it the command is PID 1 and gets them itself: it has a handler for each."""
    traps = "; ".join(f"trap 'echo got {s}' {s}" for s in FORWARDED)
    r = pykvm("container", "run", "-d", "--name", "sigs", *init, "--rootfs", busybox_rootfs, "sh", "-c",
              f"{traps}; echo ready; while :; do sleep 0.05; done")
    assert r.returncode == 0, r.stderr

    def logs():
        return pykvm("container", "logs", "sigs").stdout
    try:
        wait_for(lambda: "ready" in logs())
        for sig in FORWARDED:
            assert pykvm("container", "kill", "-s", sig, "sigs").returncode == 0
            wait_for(lambda: f"got {sig}\n" in logs())
    finally:
        pykvm("container", "rm", "-f", "sigs")


# --- the cgroup tree inside ----------------------------------------------------------------------

@pytest.fixture(params=["v1", "v2"])
def view(request):
    """Run a command on cgroup v1 or v2 (escape_tools.cgroup_view); skips what cannot be made."""
    return request.param, cgroup_view(request.param)


@pytest.fixture
def sibling_cgroups(view):
    """A cgroup named pykvm-test-* in every hierarchy (v1) or in the cgroup2 one (v2): the
    host's, not the container's."""
    name = f"pykvm-test-{uuid.uuid4().hex[:8]}"
    if view[0] == "v2":
        made = [cgroup2_root() / name]
    else:
        made = [Path(fields[4]) / name for fields in map(str.split, Path("/proc/self/mountinfo").read_text().splitlines())
                if fields[fields.index("-") + 1] == "cgroup" and "cpuset" not in fields[-1]]
    for d in made:                        # (a new cpuset needs cpus and mems: the others suffice)
        d.mkdir()
    yield name
    for d in made:
        d.rmdir()


def test_cgroup_mounts_show_only_the_containers_own(pykvm, busybox_rootfs, sibling_cgroups, view):
    """devices, blkio, freezer ... showed the host's whole tree (the controllers not joined)."""
    r = pykvm("container", "run", "--rm", "--rootfs", busybox_rootfs, "sh", "-c",
              f"find /sys/fs/cgroup -name '{sibling_cgroups}'; echo end", view=view[1])
    assert r.stdout == "end\n", r.stdout


def test_cgroup_mounts_without_a_cgroup_namespace_as_runc(pykvm, runc_bundle, tmp_path, sibling_cgroups, view):
    """`runc spec` has no cgroup namespace: on v1 runc binds the container's own cgroups, as
    pykvm does; on v2 runc 1.1.5 mounts the whole cgroup2 tree, pykvm still binds its own."""
    edit(runc_bundle, process__args=["sh", "-c", f"find /sys/fs/cgroup -name '{sibling_cgroups}'; "
                                                 f"ls /sys/fs/cgroup; echo end"])
    ours = pykvm("container", "oci", "run", "--bundle", runc_bundle, "nocgns", view=view[1])
    theirs = runc_run(runc_bundle, tmp_path, view=view[1])
    assert sibling_cgroups not in ours.stdout
    assert (sibling_cgroups in theirs.stdout) == (view[0] == "v2"), theirs.stdout
    assert ours.stdout.endswith("end\n") and ours.returncode == 0, ours.stderr
    if view[0] == "v1":             # (on v2 runc lists the root's files, pykvm a cgroup's own)
        assert set(ours.stdout.split()) <= set(theirs.stdout.split()), (ours.stdout, theirs.stdout)
