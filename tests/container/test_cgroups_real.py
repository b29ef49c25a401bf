"""Limits enforced by real cgroups, and nothing left behind afterwards (marker `root`)."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clitools import containers_in
from escape_tools import cgroup2_root

from pykvm.container.runtime import cgroups
from pykvm.container.runtime.cgroups import CgroupV2, Limits

pytestmark = pytest.mark.root


def mountinfo() -> list[str]:
    return Path("/proc/self/mountinfo").read_text().splitlines()


def our_cgroup_dirs(cid: str) -> list[Path]:
    cg = cgroups.open_cgroup(cid)
    return [Path(d) for d in cg.dirs() if os.path.exists(d)]


def test_oom_kill_is_reported_as_137(pykvm, busybox_rootfs, state_root):
    # sh keeps the command substitution's output in memory: ~64 MiB against a 16 MiB limit.
    r = pykvm("container", "run", "--rm", "--memory", "16M", "--rootfs", busybox_rootfs,
              "sh", "-c", "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived")
    assert r.returncode == 137, (r.returncode, r.stdout, r.stderr)
    assert "survived" not in r.stdout
    assert "killed by the OOM killer (memory limit 16M)" in r.stderr
    assert containers_in(state_root) == []


def test_within_memory_limit_runs(pykvm, busybox_rootfs):
    r = pykvm("container", "run", "--rm", "--memory", "64M", "--rootfs", busybox_rootfs,
              "sh", "-c", "x=$(head -c 1048576 /dev/zero | tr '\\0' a); echo ${#x}")
    assert r.stdout == "1048576\n", r.stderr


def test_fork_bomb_is_contained(pykvm, busybox_rootfs):
    # 60 background sleepers against a limit of 16 tasks: fork fails, the host is fine.
    # Counted with shell built-ins only (a glob and echo).  Without the limit all 60 start.
    script = ("i=0; while [ $i -lt 60 ]; do sleep 30 & i=$((i+1)); done; "
              "set -- /proc/[0-9]*; echo $#")
    free = pykvm("container", "run", "--rm", "--rootfs", busybox_rootfs, "sh", "-c", script)
    assert int(free.stdout) >= 61, free.stdout
    r = pykvm("container", "run", "--rm", "--pids-limit", "16", "--rootfs", busybox_rootfs,
              "sh", "-c", script)
    assert r.returncode != 0 and "can't fork" in r.stderr, (r.returncode, r.stdout, r.stderr)


def test_limits_are_written_to_the_cgroup(pykvm, busybox_rootfs, state_root):
    cid = pykvm("container", "run", "-d", "--memory", "32M", "--pids-limit", "20", "--cpus", "0.5",
                "--rootfs", busybox_rootfs, "sleep", "1000").stdout.strip()
    try:
        state = json.loads((state_root / cid / "state.json").read_text())
        dirs = {Path(d).parts[4]: Path(d) for d in state["cgroup"]["dirs"]}   # /sys/fs/cgroup/<controller>/...
        assert (dirs["memory"] / "memory.limit_in_bytes").read_text().strip() == str(32 << 20)
        assert (dirs["pids"] / "pids.max").read_text().strip() == "20"
        assert (dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert str(state["pid"]) in (dirs["pids"] / "cgroup.procs").read_text().split()
        inside = pykvm("container", "run", "--rm", "--rootfs", busybox_rootfs, "cat", "/proc/self/cgroup")
        assert "pykvm" not in inside.stdout, "the cgroup namespace hides the host's cgroup paths"
    finally:
        pykvm("container", "rm", "-f", cid)
    assert not any(d.exists() for d in dirs.values())


@pytest.mark.parametrize("how", ["normal", "error", "not-found"])
def test_cleanup_after_exit(pykvm, busybox_rootfs, state_root, how):
    before = mountinfo()
    cmd = {"normal": ["true"], "error": ["sh", "-c", "exit 9"], "not-found": ["nope"]}[how]
    r = pykvm("container", "run", "--rm", "--name", f"c-{how}", "--memory", "32M",
              "--rootfs", busybox_rootfs, *cmd)
    assert r.returncode == {"normal": 0, "error": 9, "not-found": 127}[how]
    assert containers_in(state_root) == []
    assert mountinfo() == before
    leftovers = [p for p in Path("/sys/fs/cgroup/memory").rglob("c-*") if "pykvm" in str(p)]
    assert leftovers == []


def test_cleanup_after_kill_9_of_the_container(pykvm, busybox_rootfs, state_root):
    before = mountinfo()
    cid = pykvm("container", "run", "-d", "--rm", "--memory", "32M", "--rootfs", busybox_rootfs,
                "sleep", "1000").stdout.strip()
    state = json.loads((state_root / cid / "state.json").read_text())
    dirs = [Path(d) for d in state["cgroup"]["dirs"]]
    assert all(d.exists() for d in dirs)
    os.kill(state["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (state_root / cid).exists() or any(d.exists() for d in dirs):
        assert time.monotonic() < deadline, "state or cgroup left behind"
        time.sleep(0.05)
    assert mountinfo() == before
    assert not Path(f"/proc/{state['pid']}").exists()


def test_cleanup_after_kill_9_of_the_launcher(busybox_rootfs, state_root):
    """The launcher dies: its monitor kills the container and cleans up (PR_SET_PDEATHSIG)."""
    before = mountinfo()
    proc = subprocess.Popen([sys.executable, "-m", "pykvm", "container", "run", "--rm", "--memory", "32M",
                             "--rootfs", str(busybox_rootfs), "sleep", "1000"],
                            env={**os.environ, "PYKVM_STATE_ROOT": str(state_root)})
    deadline = time.monotonic() + 10
    while not list(state_root.glob("*/state.json")) or \
            not json.loads(next(state_root.glob("*/state.json")).read_text())["pid"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    state = json.loads(next(state_root.glob("*/state.json")).read_text())
    dirs = [Path(d) for d in state["cgroup"]["dirs"]]
    proc.kill()
    proc.wait()
    while Path(f"/proc/{state['pid']}").exists() or containers_in(state_root) or \
            any(d.exists() for d in dirs):
        assert time.monotonic() < deadline + 10, "container, state or cgroup outlived the launcher"
        time.sleep(0.02)
    assert mountinfo() == before


def test_v2_backend_on_a_real_cgroup2_hierarchy():
    """The unified hierarchy here has no controllers (they are bound to v1), but
    creating, joining, listing, killing and removing a cgroup are real."""
    root = cgroup2_root()
    cg = CgroupV2("pykvm-test/c1", root)
    cg.create(Limits())
    child = subprocess.Popen(["sleep", "1000"])
    try:
        cg.add(child.pid)
        assert cg.pids() == [child.pid]
        assert "0::/pykvm-test/c1" in Path(f"/proc/{child.pid}/cgroup").read_text()
        cg.destroy()
        assert child.wait(timeout=10) == -signal.SIGKILL
        assert not (root / "pykvm-test" / "c1").exists()
    finally:
        child.kill()
        child.wait()
        for d in (root / "pykvm-test" / "c1", root / "pykvm-test"):
            if d.exists():
                d.rmdir()


def test_a_cgroup_removed_between_open_and_read_has_no_processes(monkeypatch):
    """The race `container rm -f` lost to the container's own launcher: the launcher removed
    the cgroup after pids() opened its cgroup.procs and before it read it, and the kernel
    answered the read with ENODEV (kernfs: the file's node is gone).  That is an empty
    cgroup, not an error; destroy() then has nothing left to do."""
    root = cgroup2_root()
    cg = CgroupV2("pykvm-test/gone", root)
    cg.create(Limits())
    removed = []

    def open_then_remove(path, *args, **kwargs):
        f = open(path, *args, **kwargs)
        if os.path.basename(path) == "cgroup.procs":
            os.rmdir(os.path.dirname(path))         # the launcher's cleanup, at the worst moment
            removed.append(path)
        return f

    try:
        monkeypatch.setattr(cgroups, "open", open_then_remove, raising=False)
        with pytest.raises(OSError) as e:           # what the kernel does, seen directly
            with cgroups.open(os.path.join(cg.dirs()[0], "cgroup.procs")) as f:
                f.read()
        assert e.value.errno == errno.ENODEV
        CgroupV2("pykvm-test/gone", root).create(Limits())
        assert cg.pids() == [] and len(removed) == 2
        monkeypatch.undo()
        cg.destroy()
        assert not (root / "pykvm-test" / "gone").exists()
    finally:
        for d in (root / "pykvm-test" / "gone", root / "pykvm-test"):
            if d.exists():
                d.rmdir()


def _join_as_nobody(cg) -> int:
    """Fork a child that drops root, then joins `cg` through files opened before the fork."""
    fds = cg.join_files()
    pid = os.fork()
    if pid == 0:
        try:
            os.setresuid(65534, 65534, 65534)
            try:
                os.close(os.open(os.path.join(cg.dirs()[0], cg.JOIN_FILE), os.O_WRONLY))
                os._exit(2)                           # nobody must not be able to open it
            except PermissionError:
                pass
            cgroups.join(fds)
            os.kill(os.getpid(), signal.SIGSTOP)      # stay alive to be looked at
            os._exit(0)
        except BaseException:
            os._exit(1)
    cgroups.close_all(fds)
    _, status = os.waitpid(pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the child failed to join: wait status {status:#x}"
    return pid


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_child_joins_through_files_its_launcher_opened(version):
    """What the container's init does (Cgroup.join_files): v1 through `tasks`, v2 cgroup.procs."""
    if version == "v1":
        if cgroups.detect() != "v1":
            pytest.skip("the host's controllers are not on cgroup v1")
        cg = cgroups.open_cgroup("join-test", "pykvm-test/join", version="v1")
    else:
        cg = CgroupV2("pykvm-test/join", cgroup2_root())
    cg.create(Limits())
    pid = 0
    try:
        pid = _join_as_nobody(cg)
        assert cg.pids() == [pid]
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        joined = [line for line in lines if line.endswith("/pykvm-test/join")]
        assert len(joined) == len(cg.dirs()), lines
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        cg.destroy()
        for d in map(Path, cg.dirs()):
            if d.parent.name == "pykvm-test" and d.parent.exists():
                d.parent.rmdir()
