"""Escapes through cgroups: a cgroupsPath that climbs out, a cgroup shared with someone
else's processes, host devices reached through mknod.  runc 1.1 is the oracle.

Each test here failed before the runtime confined cgroupsPath to the hierarchy, killed
only the container's own processes (its PID namespace) and applied the devices cgroup.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from clitools import wait_for
from escape_tools import edit, refused, runc_run

from pykvm.container.runtime import cgroups

pytestmark = pytest.mark.root

RUNC_DEVICES = ["b *:* m", "c *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
                "c 5:0 rwm", "c 5:2 rwm", "c 10:200 rwm", "c 136:* rwm"]   # runc 1.1's devices.list
OPEN_HOST_DEVICES = ("mknod /tmp/l b 7 0 && (exec 3</tmp/l) && echo OPENED-BLOCK-7:0; "
                     "mknod /tmp/f c 10 229 && (exec 3</tmp/f) && echo OPENED-CHAR-10:229; "
                     "echo x > /dev/null && echo null-ok")


def v1_only():
    if cgroups.detect() != "v1":
        pytest.skip("the devices controller file interface is cgroup v1's (this host is not v1)")






@pytest.fixture
def unique() -> str:
    return f"pykvm-test-{uuid.uuid4().hex[:8]}"


def cgroup_dirs(name: str) -> list[Path]:
    """/sys/fs/cgroup/<name> (v2) and /sys/fs/cgroup/*/<name> (v1 hierarchies) that exist."""
    return [d for d in [cgroups.CGROUP_ROOT / name, *cgroups.CGROUP_ROOT.glob(f"*/{name}")] if d.is_dir()]


@pytest.fixture
def cleanup_cgroups(unique):
    """Remove what a test left at /sys/fs/cgroup/[*/]<unique> (and kill what is in it)."""
    yield
    for d in cgroup_dirs(unique):
        for pid in (d / "cgroup.procs").read_text().split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_for(lambda: not (d / "cgroup.procs").read_text().split())
        d.rmdir()


# --- cgroupsPath confinement ------------------------------------------------------------------

@pytest.mark.parametrize("how", ["absolute", "relative", "inside"])
def test_cgroups_path_cannot_climb_out_of_the_hierarchy(pykvm, runc_bundle, tmp_path, how):
    target = tmp_path / "escape"
    path = {"absolute": f"/../../../../..{target}", "relative": f"../../../../../../..{target}",
            "inside": f"a/../../../../../..{target}"}[how]
    edit(runc_bundle, process__args=["true"], linux__cgroupsPath=path)
    r = pykvm("container", "oci", "run", "--bundle", runc_bundle, "climb")
    assert "cgroupsPath" in refused(r) and "'..'" in r.stderr, r.stderr
    assert not target.exists(), "a directory was made outside /sys/fs/cgroup"
    assert pykvm("container", "ps", "-a", "-q").stdout == ""


@pytest.mark.parametrize("path", ["/", "/./", "//"])
def test_cgroups_path_of_the_hierarchy_root_is_refused(pykvm, runc_bundle, path):
    """Reading the old code: "/" would have made every host process "the container's"."""
    edit(runc_bundle, process__args=["true"], linux__cgroupsPath=path)
    r = pykvm("container", "oci", "run", "--bundle", runc_bundle, "root-cg")
    assert "root of the cgroup hierarchy" in refused(r), r.stderr


def test_cgroups_path_above_our_own_cgroup_is_refused(pykvm, runc_bundle):
    own = {h: p for _, h, p in (line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().split())}
    deep = [p for h, p in own.items() if p.count("/") >= 2 and h]
    if not deep:
        pytest.skip("the tests run in a top-level cgroup: no ancestor of it to try")
    parent = deep[0].rsplit("/", 1)[0]
    edit(runc_bundle, process__args=["true"], linux__cgroupsPath=parent)
    r = pykvm("container", "oci", "run", "--bundle", runc_bundle, "above")
    assert "pykvm's own cgroup or one above it" in refused(r), r.stderr


def test_a_foreign_process_in_the_cgroup_survives_the_container(pykvm, runc_bundle, unique,
                                                                 cleanup_cgroups):
    """A host process sits in the cgroup the bundle names; the container comes and goes."""
    v1_only()
    pids_dir = cgroups.CGROUP_ROOT / "pids" / unique
    pids_dir.mkdir()
    host = subprocess.Popen(["sleep", "300"])
    try:
        (pids_dir / "cgroup.procs").write_text(f"{host.pid}\n")
        edit(runc_bundle, process__args=["true"], linux__cgroupsPath=f"/{unique}")
        r = pykvm("container", "oci", "run", "--bundle", runc_bundle, "guest")
        assert r.returncode == 0, r.stderr
        assert "is not empty: 1 process(es) found" in r.stderr           # runc 1.1 warns too
        assert host.poll() is None, "the container's end killed a host process in its cgroup"
        assert (pids_dir / "cgroup.procs").read_text().split() == [str(host.pid)]
        assert not (cgroups.CGROUP_ROOT / "memory" / unique).exists(), "the container's own dirs stay"
    finally:
        host.kill()
        host.wait()


def test_two_containers_sharing_a_cgroups_path_as_runc_does(pykvm, runc_bundle, unique, cleanup_cgroups,
                                                            tmp_path):
    """runc 1.1: the second warns, and deleting the first leaves the second running."""
    edit(runc_bundle, process__args=["sleep", "300"], linux__cgroupsPath=f"/{unique}")
    for name in ("first", "second"):
        with open(tmp_path / f"{name}.err", "w") as err:
            r = pykvm("container", "oci", "create", "--bundle", runc_bundle, name,
                      stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, (tmp_path / f"{name}.err").read_text()
        assert pykvm("container", "oci", "start", name).returncode == 0
    assert "is not empty" in (tmp_path / "second.err").read_text()
    second = json.loads(pykvm("container", "oci", "state", "second").stdout)
    assert pykvm("container", "oci", "delete", "-f", "first").returncode == 0
    assert json.loads(pykvm("container", "oci", "state", "second").stdout)["status"] == "running"
    assert Path(f"/proc/{second['pid']}").exists(), "deleting one container killed the other"
    assert cgroup_dirs(unique), "the cgroup stays while the second container uses it"
    assert pykvm("container", "oci", "delete", "-f", "second").returncode == 0
    assert not cgroup_dirs(unique), "the last one out removes the cgroup"


def test_pids_limit_one_is_one_clear_line(pykvm, busybox_rootfs):
    """pykvm-init (--init) takes one of the pids: a limit of 1 would leave the command none."""
    r = pykvm("container", "run", "--rm", "--init", "--pids-limit", "1", "--rootfs", busybox_rootfs, "true")
    assert "pids limit 1 leaves no room" in refused(r), r.stderr


def test_pids_limit_one_is_the_command_alone(pykvm, busybox_rootfs):
    """Without --init the command is the container's one process, as under runc: it runs,
    and cannot fork a second."""
    r = pykvm("container", "run", "--rm", "--pids-limit", "1", "--rootfs", busybox_rootfs, "true")
    assert r.returncode == 0, r.stderr
    r = pykvm("container", "run", "--rm", "--pids-limit", "1", "--rootfs", busybox_rootfs,
              "sh", "-c", "/bin/true; echo forked")
    assert r.stdout == "" and "can't fork" in r.stderr, (r.stdout, r.stderr)


# --- devices ----------------------------------------------------------------------------------

def test_mknod_cannot_reach_host_devices(pykvm, fresh_rootfs):
    """CAP_MKNOD makes the node; the devices cgroup refuses to open it (host loop0, fuse)."""
    v1_only()
    r = pykvm("container", "run", "--rm", "--cap-add", "MKNOD", "--rootfs", fresh_rootfs,
              "sh", "-c", OPEN_HOST_DEVICES)
    assert r.stdout == "null-ok\n", r.stdout
    assert r.stderr.count("Operation not permitted") == 2, r.stderr


def test_build_run_step_cannot_reach_host_devices(fresh_rootfs):
    """A Dockerfile RUN has Docker's default capabilities, MKNOD among them."""
    v1_only()
    rootfs = fresh_rootfs
    code = ("import sys; from pykvm.container.image.runconfig import run_build_step; "
            f"sys.exit(run_build_step({str(rootfs)!r}, ['sh', '-c', {OPEN_HOST_DEVICES!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout == "null-ok\n", (r.stdout, r.stderr)
    assert r.stderr.count("Operation not permitted") == 2, r.stderr


@pytest.mark.parametrize("extra", [[], [{"allow": True, "type": "c", "major": 1, "minor": 11, "access": "r"}]])
def test_device_rules_match_runc(pykvm, runc_bundle, tmp_path, extra):
    """The same bundle's devices.list, seen from inside, under runc and under pykvm."""
    v1_only()
    spec = json.loads((runc_bundle / "config.json").read_text())
    edit(runc_bundle, process__args=["cat", "/sys/fs/cgroup/devices/devices.list"],
         linux__resources__devices=spec["linux"]["resources"]["devices"] + extra)
    ours = pykvm("container", "oci", "run", "--bundle", runc_bundle, "dev-pykvm")
    theirs = runc_run(runc_bundle, tmp_path / "runc")
    assert theirs.returncode == ours.returncode == 0, (ours.stderr, theirs.stderr)
    assert sorted(ours.stdout.split("\n")) == sorted(theirs.stdout.split("\n")), (ours.stdout, theirs.stdout)
    assert sorted(filter(None, ours.stdout.split("\n"))) == sorted(RUNC_DEVICES + (["c 1:11 r"] if extra else []))


def _cgroup2_root() -> Path:
    """A real cgroup2 hierarchy: /sys/fs/cgroup (pure v2) or /sys/fs/cgroup/unified (hybrid)."""
    for root in (cgroups.CGROUP_ROOT, cgroups.CGROUP_ROOT / "unified"):
        if cgroups.detect(root) == "v2":
            return root
    pytest.skip("no cgroup2 hierarchy mounted at /sys/fs/cgroup or /sys/fs/cgroup/unified")


DEVICE_PROBES = [("/dev/null", os.O_RDONLY), ("/dev/null", os.O_WRONLY), ("/dev/zero", os.O_RDONLY),
                 ("/dev/loop0", os.O_RDONLY), ("/dev/fuse", os.O_RDWR), ("/dev/kmsg", os.O_RDONLY),
                 ("/dev/kmsg", os.O_WRONLY)]


def test_cgroup_v2_device_program_is_enforced(unique, tmp_path):
    """cgroup v2 has no devices file; the eBPF program (bpf_devices.py) must say the same
    as v1's rules: deny all, the config's (kmsg, then not for writing), runc's defaults."""
    from pykvm.container.runtime.cgroups import CgroupV2, DeviceRule, Limits
    root = _cgroup2_root()
    for dev, _ in DEVICE_PROBES:
        if not os.path.exists(dev):
            pytest.skip(f"needs {dev} on the host to probe")
    cg = CgroupV2(unique, root)
    cg.create(Limits(devices=[DeviceRule(True, "c", 1, 11, "rwm"), DeviceRule(False, "c", 1, 11, "w")]))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:                                          # join, probe, report one word per probe
        try:
            (root / unique / "cgroup.procs").write_text("0\n")
            words = []
            for dev, flags in DEVICE_PROBES:
                try:
                    os.close(os.open(dev, flags))
                    words.append("ok")
                except PermissionError:
                    words.append("EPERM")
            os.mknod(tmp_path / "node", 0o600 | 0o060000, os.makedev(7, 0))   # b *:* m: making is fine
            words.append("mknod-ok")
            os.write(write_end, " ".join(words).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    result = os.read(read_end, 4096).decode().split()
    os.close(read_end)
    cg.destroy()
    assert result == ["ok", "ok", "ok", "EPERM", "EPERM", "ok", "EPERM", "mknod-ok"], result
    assert not (root / unique).exists()
