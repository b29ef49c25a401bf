"""What a pykvm run can leak on the host, counted so that before and after can be compared.

Shared by the chaos harness (chaos.py) and the load harness (tests/load/load.py):

    PrivateCgroup   a cgroup of our own in every hierarchy: the pykvm processes we start
                    go in, so their containers' cgroups (<own>/pykvm/<id>) are ours to
                    count, not those of others on the machine
    descendants     our live child processes and theirs (we are a child subreaper, so a
                    daemonized monitor is still ours); OrphanReaper reaps the orphans
    mounts_under    /proc/self/mountinfo entries under a directory
    open_fds        our own open file descriptors
"""
from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

from pykvm.container.runtime.cgroups import CGROUP_ROOT, _own_in, detect, own_cgroups, v1_hierarchies

PR_SET_CHILD_SUBREAPER = 36     # <linux/prctl.h>: orphans of our descendants become our children


def become_subreaper() -> None:
    """prctl(PR_SET_CHILD_SUBREAPER): a monitor that double-forks or outlives its launcher
    is reparented to us, not to PID 1, so `descendants()` still sees it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def children(pid: int) -> list[int]:
    """/proc/PID/task/*/children (proc(5)): the live children of every thread of PID."""
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    found += [int(p) for p in f.read().split()]
            except OSError:
                pass
    except OSError:
        pass
    return found


def descendants(pid: int | None = None, exclude: set[int] = frozenset()) -> list[int]:
    """Every live (non-zombie) process below `pid` (default: us), but not the subtrees of `exclude`."""
    pending, found = [pid or os.getpid()], []
    while pending:
        for child in children(pending.pop()):
            if child in exclude or _is_zombie(child):
                continue
            found.append(child)
            pending.append(child)
    return found


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def reap_zombies() -> None:
    """Collect the exit status of orphans reparented to us (we are their subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class OrphanReaper(threading.Thread):
    """As a subreaper we inherit orphans, and must reap them promptly, as PID 1 would: a
    zombie of a container's PID namespace (an exec'd command whose pykvm was killed) keeps
    that namespace's dying init from finishing its exit (pid_namespaces(7)), and `rm -f`
    would wait for it in vain.  Our own subprocesses (`ours()`) are left to their Popen."""

    def __init__(self, ours):
        super().__init__(daemon=True)
        self.ours = ours
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(0.02):
            for pid in children(os.getpid()):
                if pid not in self.ours() and _is_zombie(pid):
                    try:
                        os.waitpid(pid, os.WNOHANG)
                    except ChildProcessError:
                        pass

    def stop(self) -> None:
        self.done.set()
        self.join()


def mounts_under(directory: str | Path) -> list[str]:
    prefix = str(Path(directory).resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if (p + "/").startswith(prefix)]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class PrivateCgroup:
    """<our cgroup>/NAME in every hierarchy pykvm would use; `enter` moves the calling
    process there (a subprocess's preexec_fn), `containers` lists the container cgroups
    made under it (NAME/pykvm/<id>), `remove` deletes the (empty) tree."""

    def __init__(self, name: str):
        own = own_cgroups()
        version = detect(CGROUP_ROOT)
        if version == "v2":
            self.dirs = [Path(CGROUP_ROOT) / own.get("", "/").strip("/") / name]
        else:
            self.dirs = [Path(CGROUP_ROOT) / h / _own_in(own, h).strip("/") / name for h in v1_hierarchies()]
        for d in self.dirs:
            d.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):     # v1 cpuset: empty until copied from above
                if (d / name).exists() and not (d / name).read_text().strip():
                    (d / name).write_text((d.parent / name).read_text())

    def enter(self) -> None:
        for d in self.dirs:
            (d / "cgroup.procs").write_text("0\n")

    def containers(self) -> list[str]:
        """The container cgroups under us, as "hierarchy-dir/id"."""
        found = []
        for d in self.dirs:
            parent = d / "pykvm"
            if parent.is_dir():
                found += [f"{d.parent.name}/{c.name}" for c in parent.iterdir() if c.is_dir()]
        return sorted(found)

    def processes(self) -> list[int]:
        """Every process in our tree, in any hierarchy."""
        found = set()
        for d in self.dirs:
            for procs in d.rglob("cgroup.procs"):
                try:
                    found |= {int(p) for p in procs.read_text().split()}
                except OSError:
                    pass
        return sorted(found)

    def remove(self) -> list[str]:
        """rmdir the tree, deepest first; returns what could not be removed."""
        left = []
        for d in self.dirs:
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                try:
                    sub.rmdir()
                except OSError:
                    left.append(str(sub))
            try:
                d.rmdir()
            except OSError:
                left.append(str(d))
        return left
