"""Hostile input: one clear line, a non-zero status, nothing left behind.

Each case here used to end in a traceback, a container that ran anyway, or an
operation on the wrong container.  runc refuses the same bundles (checked where
it runs them at all).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from clitools import containers_in
from escape_tools import edit, refused, runc_run

pytestmark = pytest.mark.root






def nothing_left(pykvm, state_root: Path) -> None:
    assert pykvm("container", "ps", "-a", "-q").stdout == ""
    assert containers_in(state_root) == []


def without_uts(spec_namespaces):
    return [n for n in spec_namespaces if n["type"] != "uts"]


RUNC_NAMESPACES = [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]

BUNDLE_CASES = {
    "rlimit 2**64": ({"process__rlimits": [{"type": "RLIMIT_NOFILE", "soft": 2**64, "hard": 2**64}]},
                     "out of range"),
    "rlimit soft > hard": ({"process__rlimits": [{"type": "RLIMIT_NOFILE", "soft": 2048, "hard": 1024}]},
                           "soft limit 2048 is above the hard limit 1024"),
    "NUL in args": ({"process__args": ["sh", "-c", "echo a\0b"]}, "process.args[2] contains a NUL byte"),
    "NUL in cwd": ({"process__cwd": "/tmp\0/x"}, "process.cwd contains a NUL byte"),
    "missing namespace path": ({"linux__namespaces": RUNC_NAMESPACES[:-1] + [
        {"type": "mount"}, {"type": "cgroup", "path": "/proc/999999999/ns/cgroup"}]},
        "/proc/999999999/ns/cgroup, does not exist"),
    "env without =": ({"process__env": ["PATH=/bin", "JUSTANAME"]}, "bad environment variable 'JUSTANAME'"),
    "hostname without uts": ({"hostname": "box", "linux__namespaces": without_uts(RUNC_NAMESPACES)},
                             "without a private UTS namespace"),
    "cgroupsPath with NUL": ({"linux__cgroupsPath": "/a\0b"}, "cgroupsPath must not contain a NUL byte"),
    "NUL in a mount": ({"mounts": [{"destination": "/mnt\0x", "type": "tmpfs", "source": "tmpfs"}]},
                       "mounts[0] ('/mnt\\x00x') contains a NUL byte"),
    "relative masked path": ({"linux__maskedPaths": ["proc/kcore"]}, "linux.maskedPaths: 'proc/kcore' must be"),
    "oomScoreAdj out of range": ({"process__oomScoreAdj": 5000}, "out of range -1000..1000"),
    "device type": ({"linux__resources__devices": [{"allow": True, "type": "x"}]},
                    "linux.resources.devices[0].type must be one of a, c, b"),
}


@pytest.mark.parametrize("case", list(BUNDLE_CASES))
def test_hostile_bundle_is_one_line(pykvm, runc_bundle, state_root, tmp_path, case):
    changes, message = BUNDLE_CASES[case]
    edit(runc_bundle, **{"process__args": ["true"], **changes})
    refused(pykvm("container", "oci", "run", "--bundle", runc_bundle, "hostile"), message)
    nothing_left(pykvm, state_root)
    if case not in ("oomScoreAdj out of range", "cgroupsPath with NUL", "relative masked path"):
        theirs = runc_run(runc_bundle, tmp_path / "runc")
        assert theirs.returncode != 0, f"runc ran it: {theirs.stdout}"


def test_deeply_nested_config_json(pykvm, runc_bundle, state_root):
    (runc_bundle / "config.json").write_text('{"a": ' * 100_000 + "1" + "}" * 100_000)
    refused(pykvm("container", "oci", "run", "--bundle", runc_bundle, "deep"), "nested too deeply")
    nothing_left(pykvm, state_root)


def test_symlinked_root_path(pykvm, runc_bundle, state_root):
    """root.path -> / would have made the host's root the container's (runc refuses it)."""
    (runc_bundle / "hostroot").symlink_to("/")
    edit(runc_bundle, root__path="hostroot", process__args=["true"])
    refused(pykvm("container", "oci", "run", "--bundle", runc_bundle, "link"), "is (or passes through) a symlink")
    nothing_left(pykvm, state_root)


@pytest.mark.parametrize("args,message", [
    (["-m", "99999999999999999999999G"], "below 8 EiB"),
    (["--init", "--pids-limit", "1"], "pids limit 1 leaves no room"),
    (["-u", "4294967295"], "range 0-2147483647"),
])
def test_hostile_run_options(pykvm, busybox_rootfs, state_root, args, message):
    r = pykvm("container", "run", "--rm", *args, "--rootfs", busybox_rootfs, "true")
    refused(r, message)
    nothing_left(pykvm, state_root)


def test_empty_reference_matches_no_container(pykvm, busybox_rootfs, state_root):
    """`rm -f ''` and `exec ''` picked the only container (every id starts with '')."""
    assert pykvm("container", "run", "-d", "--name", "only", "--rootfs", busybox_rootfs,
                 "sleep", "300").returncode == 0
    try:
        for args in (["rm", "-f", ""], ["exec", "", "true"], ["kill", ""], ["oci", "delete", "-f", ""]):
            refused(pykvm("container", *args), "no such container: ''", code=1)
        assert pykvm("container", "ps", "-q").stdout.strip(), "the container is still running"
    finally:
        pykvm("container", "rm", "-f", "only")
    nothing_left(pykvm, state_root)


def test_config_error_leaves_no_cgroup(pykvm, runc_bundle, state_root):
    """A config refused after parsing (hostname, no UTS) makes no cgroup directory."""
    before = set(Path("/sys/fs/cgroup").glob("*/*"))
    edit(runc_bundle, hostname="box", linux__namespaces=without_uts(RUNC_NAMESPACES), process__args=["true"])
    refused(pykvm("container", "oci", "run", "--bundle", runc_bundle, "nocg"), "UTS")
    assert set(Path("/sys/fs/cgroup").glob("*/*")) - before == set()
    assert os.path.exists("/proc/self")


def test_sysctl_the_kernel_refuses_is_one_line(pykvm, runc_bundle, state_root):
    """Checked, namespaced, but not a parameter this kernel has: init's error, then clean-up."""
    edit(runc_bundle, process__args=["true"], linux__sysctl={"net.ipv4.no_such_parameter": "1"})
    r = pykvm("container", "oci", "run", "--bundle", runc_bundle, "nosuch")
    refused(r, "cannot write /proc/sys/net/ipv4/no_such_parameter: No such file or directory", code=125)
    nothing_left(pykvm, state_root)


# --- every field of config.md / config-linux.md: applied, or refused naming it ----------------
# A field pykvm read nowhere used to be dropped without a word (`oci run` said nothing, exit 0).

REFUSED_FIELDS = {
    "linux.resources.blockIO": {"linux__resources__blockIO": {"weight": 500}},
    "linux.resources.hugepageLimits": {"linux__resources__hugepageLimits": [{"pageSize": "2MB", "limit": 2 << 20}]},
    "linux.resources.network": {"linux__resources__network": {"classID": 1048577}},
    "linux.resources.rdma": {"linux__resources__rdma": {"mlx5_1": {"hcaHandles": 3}}},
    "linux.resources.unified": {"linux__resources__unified": {"memory.high": "1G"}},
    "linux.resources.memory.reservation": {"linux__resources__memory": {"reservation": 32 << 20}},
    "linux.resources.memory.kernel": {"linux__resources__memory": {"kernel": 64 << 20}},
    "linux.resources.memory.kernelTCP": {"linux__resources__memory": {"kernelTCP": 64 << 20}},
    "linux.resources.memory.swappiness": {"linux__resources__memory": {"swappiness": 0}},
    "linux.resources.memory.disableOOMKiller": {"linux__resources__memory": {"disableOOMKiller": True}},
    "linux.resources.memory.useHierarchy": {"linux__resources__memory": {"useHierarchy": True}},
    "linux.resources.memory.checkBeforeUpdate": {"linux__resources__memory": {"checkBeforeUpdate": True}},
    "linux.resources.cpu.realtimeRuntime": {"linux__resources__cpu": {"realtimeRuntime": 950000}},
    "linux.resources.cpu.realtimePeriod": {"linux__resources__cpu": {"realtimePeriod": 1000000}},
    "linux.resources.cpu.burst": {"linux__resources__cpu": {"burst": 1000}},
    "linux.resources.cpu.idle": {"linux__resources__cpu": {"idle": 1}},
    "linux.timeOffsets": {"linux__timeOffsets": {"monotonic": {"secs": 1}}},
    "linux.netDevices": {"linux__netDevices": {"eth1": {}}},
    "linux.memoryPolicy": {"linux__memoryPolicy": {"mode": "MPOL_BIND", "nodes": "0"}},
    "process.scheduler": {"process__scheduler": {"policy": "SCHED_BATCH"}},
    "process.execCPUAffinity": {"process__execCPUAffinity": {"initial": "0"}},
    "vm": {"vm": {"kernel": {"path": "/vmlinuz"}}},
    "linux.rootfsPropagation": {"linux__rootfsPropagation": "rslave"},
    "linux.personality.flags": {"linux__personality": {"domain": "LINUX", "flags": ["ADDR_NO_RANDOMIZE"]}},
    "mounts[0].uidMappings": {"mounts": [{"destination": "/mnt", "type": "bind", "source": "/tmp",
                                          "options": ["rbind"],
                                          "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]}]},
}


@pytest.mark.parametrize("field", list(REFUSED_FIELDS))
def test_a_field_pykvm_does_not_apply_is_refused_by_name(pykvm, runc_bundle, state_root, field):
    edit(runc_bundle, process__args=["true"], **REFUSED_FIELDS[field])
    message = refused(pykvm("container", "oci", "run", "--bundle", runc_bundle, "unapplied"))
    assert field.split(".flags")[0].replace("[0].uidMappings", "[0].uidMappings/") in message, message
    nothing_left(pykvm, state_root)


def test_every_refused_field_is_tested():
    from pykvm.container.runtime.bundle import UNSUPPORTED
    security = {("linux", "seccomp"), ("process", "apparmorProfile"), ("process", "selinuxLabel"),
                ("linux", "mountLabel"), ("linux", "intelRdt")}      # test_escapes_process.py
    assert {".".join(path) for path in set(UNSUPPORTED) - security} <= set(REFUSED_FIELDS)


def test_empty_values_of_refused_fields_are_no_setting(pykvm, runc_bundle, state_root):
    """What Docker writes for "not set" ("blockIO": {}, "disableOOMKiller": false) runs."""
    edit(runc_bundle, process__args=["true"], linux__resources__blockIO={"weightDevice": []},
         linux__resources__memory={"disableOOMKiller": False}, linux__resources__cpu={"shares": 0})
    r = pykvm("container", "oci", "run", "--bundle", runc_bundle, "empties")
    assert r.returncode == 0, r.stderr


def _cgroup_file(v1: str, v2: str) -> str:
    """The container's own cgroup file as seen inside (its cgroup namespace's root)."""
    from pykvm.container.runtime import cgroups
    return f"/sys/fs/cgroup/{v2}" if cgroups.detect() == "v2" else f"/sys/fs/cgroup/{v1}"


DEVICE_NODES = [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o640, "uid": 5, "gid": 6},
                {"path": "/dev/sub/loop", "type": "b", "major": 7, "minor": 0}, {"path": "/dev/fifo", "type": "p"}]
NODES_SEEN = ("/dev/fuse character special file 640 5:6 a:e5\n"
              "/dev/sub/loop block special file 666 0:0 7:0\n/dev/fifo fifo 666 0:0 0:0")


def _applied_fields():
    """field -> (config.json changes, a probe command, what it prints, does runc 1.1.5 apply it)."""
    from pykvm.container.runtime import cgroups
    v2 = cgroups.detect() == "v2"
    return {
        "domainname": ({"domainname": "example.org"}, "cat /proc/sys/kernel/domainname", "example.org", False),
        "linux.personality": ({"linux__personality": {"domain": "LINUX32"}}, "uname -m", "i686", False),
        "process.ioPriority": ({"process__ioPriority": {"class": "IOPRIO_CLASS_BE", "priority": 6}},
                               "ionice", "best-effort: prio 6", False),
        "linux.resources.cpu.shares": ({"linux__resources__cpu": {"shares": 512}},
                                       "cat " + _cgroup_file("cpu/cpu.shares", "cpu.weight"),
                                       str(cgroups.cpu_weight(512)) if v2 else "512", True),
        "linux.resources.cpu.cpus": ({"linux__resources__cpu": {"cpus": "0"}},
                                     "cat " + _cgroup_file("cpuset/cpuset.cpus", "cpuset.cpus"), "0", True),
        "linux.resources.cpu.mems": ({"linux__resources__cpu": {"mems": "0"}},
                                     "cat " + _cgroup_file("cpuset/cpuset.mems", "cpuset.mems"), "0", True),
        "linux.resources.memory.swap": (
            {"linux__resources__memory": {"limit": 64 << 20, "swap": 96 << 20}},
            "cat " + _cgroup_file("memory/memory.memsw.limit_in_bytes", "memory.swap.max"),
            str((32 if v2 else 96) << 20), True),
        "linux.devices": ({"linux__devices": DEVICE_NODES},
                          "stat -c '%n %F %a %u:%g %t:%T' /dev/fuse /dev/sub/loop /dev/fifo", NODES_SEEN, True),
        "linux.rootfsPropagation rprivate": ({"linux__rootfsPropagation": "rprivate"},   # no peer group
                                             "grep -cE ' (shared|master):' /proc/self/mountinfo || true", "0", True),
    }   # process.consoleSize: test_terminal.py (it needs a pty)


@pytest.mark.parametrize("field", list(_applied_fields()))
def test_a_field_pykvm_applies_shows_inside(pykvm, runc_bundle, state_root, tmp_path, field):
    changes, probe, expected, runc_applies = _applied_fields()[field]
    if "memsw" in probe and not os.path.exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"):
        pytest.skip("this kernel has no swap accounting (memory.memsw.*): boot with swapaccount=1")
    edit(runc_bundle, process__args=["sh", "-c", probe], **changes)
    ours = pykvm("container", "oci", "run", "--bundle", runc_bundle, "applied")
    assert (ours.returncode, ours.stdout.strip()) == (0, expected), ours.stderr
    theirs = runc_run(runc_bundle, tmp_path / "runc")
    assert theirs.returncode == 0, theirs.stderr
    assert (theirs.stdout == ours.stdout) == runc_applies, (ours.stdout, theirs.stdout)


@pytest.mark.parametrize("changes,message", [
    ({"domainname": "example.org", "hostname": None, "linux__namespaces": without_uts(RUNC_NAMESPACES)},
     "domainname: unable to set the domain name without a private UTS namespace"),
    ({"linux__resources__memory": {"swap": 64 << 20}}, "memory.swap needs linux.resources.memory.limit"),
    ({"linux__resources__memory": {"limit": 64 << 20, "swap": 32 << 20}}, "is below memory.limit"),
    ({"linux__resources__cpu": {"shares": 1}}, "out of the kernel's range 2..262144"),
    ({"linux__resources__cpu": {"cpus": "0;1"}}, "linux.resources.cpu.cpus must be a list such as"),
    ({"linux__personality": {"domain": "BSD"}}, "linux.personality.domain must be one of LINUX, LINUX32"),
    ({"process__ioPriority": {"class": "IOPRIO_CLASS_BE", "priority": 8}}, "out of range 0..7"),
    ({"process__ioPriority": {"class": "best"}}, "process.ioPriority.class must be one of"),
    ({"linux__devices": [{"path": "/etc/shadow", "type": "b", "major": 7, "minor": 0}]},
     "linux.devices[0].path must be a plain absolute path under /dev/"),
    ({"linux__devices": [{"path": "/dev/../etc/x", "type": "c", "major": 1, "minor": 3}]}, "under /dev/"),
    ({"linux__devices": [{"path": "/dev/x", "type": "c", "major": 1}]}, "linux.devices[0].minor must be an integer"),
    ({"linux__devices": [{"path": "/dev/x", "type": "c", "major": 1, "minor": 3, "uid": 2**32}]},
     "uids and gids must be in range"),
])
def test_a_bad_value_of_an_applied_field_is_one_line(pykvm, runc_bundle, state_root, changes, message):
    edit(runc_bundle, process__args=["true"], **changes)
    refused(pykvm("container", "oci", "run", "--bundle", runc_bundle, "badvalue"), message)
    nothing_left(pykvm, state_root)


def test_a_device_node_already_there_is_fine(pykvm, runc_bundle):
    """/dev/null listed again (runc 1.1.5 then fails: "error reopening /dev/null")."""
    edit(runc_bundle, process__args=["sh", "-c", "echo x > /dev/null && echo ok"],
         linux__devices=[{"path": "/dev/null", "type": "c", "major": 1, "minor": 3}])
    r = pykvm("container", "oci", "run", "--bundle", runc_bundle, "null-again")
    assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr


def test_a_device_node_must_not_replace_another(pykvm, runc_bundle, state_root):
    """config-linux.md "Devices": a file already at the path that is another device is an error."""
    edit(runc_bundle, process__args=["true"],
         linux__devices=[{"path": "/dev/null", "type": "b", "major": 7, "minor": 0}])
    refused(pykvm("container", "oci", "run", "--bundle", runc_bundle, "notnull"),
            "linux.devices: /dev/null already exists and is not b 7:0", code=125)
    nothing_left(pykvm, state_root)


def test_a_device_node_cannot_be_opened_without_a_rule(pykvm, runc_bundle, tmp_path):
    """Making the node is not allowing it: the devices cgroup still says no, as under runc."""
    edit(runc_bundle, process__args=["sh", "-c", "exec 3< /dev/sub/loop"], linux__devices=DEVICE_NODES)
    ours = pykvm("container", "oci", "run", "--bundle", runc_bundle, "noopen")
    theirs = runc_run(runc_bundle, tmp_path / "runc")
    assert ours.returncode == theirs.returncode != 0
    assert "Operation not permitted" in ours.stderr and "Operation not permitted" in theirs.stderr


def test_exec_gets_the_personality_and_io_priority_too(pykvm, runc_bundle, tmp_path):
    """They belong to the container's processes, not only to its first one."""
    edit(runc_bundle, process__args=["sleep", "300"], linux__personality={"domain": "LINUX32"},
         process__ioPriority={"class": "IOPRIO_CLASS_IDLE", "priority": 0})
    with open(tmp_path / "create.err", "w") as err:          # the container keeps it open: not a pipe
        created = pykvm("container", "oci", "create", "--bundle", runc_bundle, "ex", stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL, stderr=err)
    assert created.returncode == 0, (tmp_path / "create.err").read_text()
    try:
        assert pykvm("container", "oci", "start", "ex").returncode == 0
        r = pykvm("container", "exec", "ex", "sh", "-c", "uname -m; ionice")
        assert (r.returncode, r.stdout) == (0, "i686\nidle\n"), r.stderr
    finally:
        pykvm("container", "oci", "delete", "-f", "ex")
