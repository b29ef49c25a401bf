"""Hostile input: one clear line, a non-zero status, nothing left behind.

Each case here used to end in a traceback, a container that ran anyway, or an
operation on the wrong container.  runc refuses the same bundles (checked where
it runs them at all).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from escape_tools import edit, refused, runc_run

pytestmark = pytest.mark.root






def nothing_left(pykvm, state_root: Path) -> None:
    assert pykvm("container", "ps", "-a", "-q").stdout == ""
    assert not state_root.exists() or not list(state_root.iterdir()), list(state_root.iterdir())


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
