"""Escapes through cgroups: a cgroupsPath that climbs out, a cgroup shared with someone
else's processes, host devices reached through mknod.  runc 1.1 is the oracle.

Each test here failed before the runtime confined cgroupsPath to the hierarchy, killed
only the container's own processes (its PID namespace) and applied the devices cgroup.
Those that need a cgroup layout run on v1 and on v2 (`cgroup_version`); on a hybrid host
the v2 runs see the host's cgroup2 hierarchy bound over /sys/fs/cgroup (cgroup_view).
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
from escape_tools import cgroup2_root, cgroup_view, edit, refused, runc_run

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


@pytest.fixture(params=["v1", "v2"])
def cgroup_version(request) -> str:
    return request.param


@pytest.fixture
def view(cgroup_version):
    """Run a command on cgroup v1 or v2 (escape_tools.cgroup_view); skips what cannot be made."""
    return cgroup_view(cgroup_version)


@pytest.fixture
def unique() -> str:
    return f"pykvm-test-{uuid.uuid4().hex[:8]}"


def cgroup_dirs(name: str) -> list[Path]:
    """/sys/fs/cgroup/<name> (v2) and /sys/fs/cgroup/*/<name> (v1 hierarchies) that exist."""
    root = Path(cgroups.CGROUP_ROOT)
    return [d for d in [root / name, *root.glob(f"*/{name}")] if d.is_dir()]


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


FOREIGN_FILES = {"memory": ["memory.limit_in_bytes"], "pids": ["pids.max"], "devices": ["devices.list"]}
FOREIGN_FILES_V2 = ["cgroup.subtree_control", "cgroup.max.descendants", "cgroup.type"]


def may_open(procs: list[Path], device: str) -> bool:
    """Can a new process in these cgroups open `device`?  (What their device rules say.)"""
    join = "; ".join(f"echo $$ > {p}" for p in procs)
    return subprocess.run(["sh", "-c", f"{join}; exec 3< {device}"], capture_output=True).returncode == 0


def test_a_foreign_cgroup_is_refused_and_left_as_it_was(pykvm, runc_bundle, unique, cleanup_cgroups,
                                                         cgroup_version, view):
    """A host process sits in the cgroup the bundle names: pykvm did not make it, so the
    container is refused and the cgroup's limits and device rules stay the host's (runc
    1.1.5 warns, rewrites them, and leaves them rewritten after the container ends)."""
    v2 = cgroup_version == "v2"
    host = subprocess.Popen(["sleep", "300"])
    try:
        if v2:
            dirs = {cgroup2_root() / unique: FOREIGN_FILES_V2}
        else:
            dirs = {Path(cgroups.CGROUP_ROOT) / h / unique: names for h, names in FOREIGN_FILES.items()}
        for d in dirs:
            d.mkdir()
            (d / "cgroup.procs").write_text(f"{host.pid}\n")
        files = [d / name for d, names in dirs.items() for name in names]
        before = [f.read_text() for f in files]
        limits = {} if v2 else {"linux__resources__memory": {"limit": 64 << 20},  # v2 here: no controllers
                                "linux__resources__pids": {"limit": 7}}
        edit(runc_bundle, process__args=["true"], linux__cgroupsPath=f"/{unique}", **limits)
        r = pykvm("container", "oci", "run", "--bundle", runc_bundle, "guest", view=view)
        assert "no pykvm container's" in refused(r, code=1), r.stderr
        assert [f.read_text() for f in files] == before, "a foreign cgroup's files were rewritten"
        procs = [d / "cgroup.procs" for d in dirs]
        assert may_open(procs, "/dev/loop0"), "the host's cgroup got the container's device rules"
        assert host.poll() is None, "the refused container killed a host process in the cgroup"
        for d in dirs:
            assert str(host.pid) in (d / "cgroup.procs").read_text().split()
    finally:
        host.kill()
        host.wait()


def test_two_containers_sharing_a_cgroups_path_as_runc_does(pykvm, runc_bundle, unique, cleanup_cgroups,
                                                            tmp_path, view):
    """runc 1.1: the second warns, and deleting the first leaves the second running."""
    edit(runc_bundle, process__args=["sleep", "300"], linux__cgroupsPath=f"/{unique}")
    for name in ("first", "second"):
        with open(tmp_path / f"{name}.err", "w") as err:
            r = pykvm("container", "oci", "create", "--bundle", runc_bundle, name, view=view,
                      stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, (tmp_path / f"{name}.err").read_text()
        assert pykvm("container", "oci", "start", name, view=view).returncode == 0
    assert "is not empty" in (tmp_path / "second.err").read_text()
    second = json.loads(pykvm("container", "oci", "state", "second", view=view).stdout)
    assert pykvm("container", "oci", "delete", "-f", "first", view=view).returncode == 0
    assert json.loads(pykvm("container", "oci", "state", "second", view=view).stdout)["status"] == "running"
    assert Path(f"/proc/{second['pid']}").exists(), "deleting one container killed the other"
    assert cgroup_dirs(unique), "the cgroup stays while the second container uses it"
    assert pykvm("container", "oci", "delete", "-f", "second", view=view).returncode == 0
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

def test_mknod_cannot_reach_host_devices(pykvm, fresh_rootfs, view):
    """CAP_MKNOD makes the node; the devices cgroup (v2: its eBPF program) refuses to open
    it (host loop0, fuse)."""
    r = pykvm("container", "run", "--rm", "--cap-add", "MKNOD", "--rootfs", fresh_rootfs,
              "sh", "-c", OPEN_HOST_DEVICES, view=view)
    assert r.stdout == "null-ok\n", r.stdout
    assert r.stderr.count("Operation not permitted") == 2, r.stderr


def test_mknod_reaches_what_runc_lets_it_reach(pykvm, runc_bundle, tmp_path, view):
    """The same bundle with CAP_MKNOD under both runtimes: the same nodes open, the same refused."""
    spec = json.loads((runc_bundle / "config.json").read_text())
    caps = {k: v + ["CAP_MKNOD"] for k, v in spec["process"]["capabilities"].items()}
    edit(runc_bundle, process__args=["sh", "-c", OPEN_HOST_DEVICES], process__capabilities=caps,
         root__readonly=False)
    ours = pykvm("container", "oci", "run", "--bundle", runc_bundle, "mknod-pykvm", view=view)
    for node in ("l", "f"):
        (runc_bundle / "rootfs" / "tmp" / node).unlink()
    theirs = runc_run(runc_bundle, tmp_path / "runc", view=view)
    assert (ours.stdout, ours.stderr) == (theirs.stdout, theirs.stderr) == \
        ("null-ok\n", "sh: can't open /tmp/l: Operation not permitted\n"
                      "sh: can't open /tmp/f: Operation not permitted\n")


def test_build_run_step_cannot_reach_host_devices(fresh_rootfs, view):
    """A Dockerfile RUN has Docker's default capabilities, MKNOD among them."""
    rootfs = fresh_rootfs
    code = ("import sys; from pykvm.container.image.runconfig import run_build_step; "
            f"sys.exit(run_build_step({str(rootfs)!r}, ['sh', '-c', {OPEN_HOST_DEVICES!r}]))")
    r = subprocess.run(view([sys.executable, "-c", code]), capture_output=True, text=True, timeout=60)
    assert r.stdout == "null-ok\n", (r.stdout, r.stderr)
    assert r.stderr.count("Operation not permitted") == 2, r.stderr


@pytest.mark.parametrize("extra", [[], [{"allow": True, "type": "c", "major": 1, "minor": 11, "access": "r"}]])
def test_device_rules_match_runc(pykvm, runc_bundle, tmp_path, extra):
    """The same bundle's devices.list, seen from inside, under runc and under pykvm.  v1 only:
    v2 has no devices.list (test_cgroup_v2_device_program_is_enforced checks its program)."""
    v1_only()
    spec = json.loads((runc_bundle / "config.json").read_text())
    edit(runc_bundle, process__args=["cat", "/sys/fs/cgroup/devices/devices.list"],
         linux__resources__devices=spec["linux"]["resources"]["devices"] + extra)
    ours = pykvm("container", "oci", "run", "--bundle", runc_bundle, "dev-pykvm")
    theirs = runc_run(runc_bundle, tmp_path / "runc")
    assert theirs.returncode == ours.returncode == 0, (ours.stderr, theirs.stderr)
    assert sorted(ours.stdout.split("\n")) == sorted(theirs.stdout.split("\n")), (ours.stdout, theirs.stdout)
    assert sorted(filter(None, ours.stdout.split("\n"))) == sorted(RUNC_DEVICES + (["c 1:11 r"] if extra else []))


DEVICE_PROBES = [("/dev/null", os.O_RDONLY), ("/dev/null", os.O_WRONLY), ("/dev/zero", os.O_RDONLY),
                 ("/dev/loop0", os.O_RDONLY), ("/dev/fuse", os.O_RDWR), ("/dev/kmsg", os.O_RDONLY),
                 ("/dev/kmsg", os.O_WRONLY)]


def test_cgroup_v2_device_program_is_enforced(unique, tmp_path):
    """cgroup v2 has no devices file; the eBPF program (bpf_devices.py) must say the same
    as v1's rules: deny all, the config's (kmsg, then not for writing), runc's defaults."""
    from pykvm.container.runtime.cgroups import CgroupV2, DeviceRule, Limits
    root = cgroup2_root()
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
