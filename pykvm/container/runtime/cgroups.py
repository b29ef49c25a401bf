"""Control groups: how much CPU, memory and how many processes a container gets.

One interface, two backends, chosen at run time (Documentation/admin-guide/cgroup-v2.rst
and cgroup-v1/*.rst in the kernel tree):

    cgroup v2 (unified)  one tree at /sys/fs/cgroup; a cgroup is one directory;
                         controllers are switched on for children through the
                         parent's cgroup.subtree_control.
                           memory.max, memory.swap.max, pids.max, cpu.max "QUOTA PERIOD",
                           memory.events "oom_kill N", cgroup.kill
    cgroup v1            one tree per controller: /sys/fs/cgroup/memory, /pids, /cpu ...;
                         a cgroup is one directory in each.
                           memory.limit_in_bytes, memory.memsw.limit_in_bytes,
                           pids.max, cpu.cfs_quota_us + cpu.cfs_period_us,
                           memory.oom_control "oom_kill N"

`detect()` says which one this machine runs: v2 when /sys/fs/cgroup itself is a
cgroup2 mount (cgroup.controllers exists there); v1 otherwise, which includes
the "hybrid" layout (v1 controllers plus an empty cgroup2 at
/sys/fs/cgroup/unified) that this project's machines have.

A container's cgroup is created *inside the launcher's own cgroup* (path
`<own cgroup>/pykvm/<id>`), so a container never escapes limits that were put
on whoever started it.
"""
from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from pykvm.errors import ConfigError, ContainerError

__all__ = ["CGROUP_ROOT", "Limits", "Cgroup", "CgroupV1", "CgroupV2", "detect",
           "open_cgroup", "join", "close_all", "parse_size", "parse_cpus", "own_cgroup",
           "own_cgroups"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
CPU_PERIOD_US = 100_000          # CFS period: 100 ms, the kernel's and Docker's default
V1_CONTROLLERS = ("memory", "pids", "cpu")
V2_CONTROLLERS = ("memory", "pids", "cpu")
V1_KNOWN = frozenset({"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "blkio",
                      "perf_event", "net_prio", "hugetlb", "pids", "rdma", "misc"})   # cgroup-v1/*.rst


@dataclass
class Limits:
    """Resource limits of one container; None = no limit."""

    memory: int | None = None          # bytes
    pids: int | None = None            # max number of tasks
    cpu_quota: int | None = None       # microseconds of CPU per period
    cpu_period: int = CPU_PERIOD_US

    def wanted(self) -> list[str]:
        """The controllers these limits need, for messages about what is missing."""
        return [name for name, value in (("memory", self.memory), ("pids", self.pids),
                                         ("cpu", self.cpu_quota)) if value is not None]


def parse_size(text: str) -> int:
    """Docker's sizes: `64M`, `1g`, `512k`, `100` (bytes); powers of 1024 (pykvm.sizes)."""
    from pykvm.sizes import parse_size as parse

    value = parse(text, what="--memory")
    if value <= 0:
        raise ConfigError(f"bad size {text!r}: must be more than 0 bytes")
    return value


def parse_cpus(text: str) -> int:
    """Docker's --cpus 0.5 -> a CFS quota in microseconds per CPU_PERIOD_US."""
    try:
        cpus = float(text)
    except ValueError:
        raise ConfigError(f"bad --cpus {text!r}: use a number of CPUs such as 0.5") from None
    if not 0.01 <= cpus <= os.cpu_count() * 1.0:
        raise ConfigError(f"bad --cpus {text!r}: must be between 0.01 and {os.cpu_count()} (CPUs here)")
    return int(cpus * CPU_PERIOD_US)


def detect(root: Path = CGROUP_ROOT) -> str | None:
    """'v2' (unified), 'v1' (per controller, including hybrid) or None (no cgroupfs)."""
    if (root / "cgroup.controllers").exists():
        return "v2"
    if (root / "memory").is_dir() or (root / "pids").is_dir():
        return "v1"
    return None


def own_cgroup(controller: str | None, proc_self_cgroup: str = "/proc/self/cgroup") -> str:
    """This process's cgroup path for a v1 controller (or v2 when controller is None)."""
    return own_cgroups(proc_self_cgroup).get(controller or "", "/")


def own_cgroups(proc_self_cgroup: str = "/proc/self/cgroup") -> dict[str, str]:
    """Every line of /proc/self/cgroup at once: v1 controller -> path, "" -> the v2 path."""
    found: dict[str, str] = {}
    for line in Path(proc_self_cgroup).read_text().splitlines():
        _, names, path = line.split(":", 2)
        for name in names.split(","):               # "cpu,cpuacct"; "" for cgroup v2
            found.setdefault(name, path)
    return found


class Cgroup:
    """One container's cgroup: create with limits, add processes, read OOM kills, kill, destroy."""

    version = "?"

    def __init__(self, name: str, root: Path = CGROUP_ROOT):
        self.name = name.strip("/")
        self.root = Path(root)

    def create(self, limits: Limits) -> None:
        raise NotImplementedError

    def add(self, pid: int) -> None:
        """Move a process (0 = the caller) into this cgroup."""
        for d in self.dirs():
            (d / "cgroup.procs").write_text(f"{pid}\n")

    # The file a process writes "0" to in order to move itself here (see join_files).
    JOIN_FILE = "cgroup.procs"

    def join_files(self) -> list[int]:
        """Open (as the launcher, with its rights) the files through which a child joins.

        The container's init then calls `join(fds)` itself, before it unshares
        its cgroup namespace.  Why not simply write init's PID to cgroup.procs
        from the launcher?  Moving a whole process takes the kernel's global
        cgroup_threadgroup_rwsem for writing, which waits for an RCU grace
        period: 5-15 ms per container here, the biggest single cost of a
        launch.  cgroup v1 lets a single-threaded caller move *itself* through
        `tasks` without that lock (CgroupV1.JOIN_FILE).  The kernel checks the
        rights of whoever *opened* the file (kernel/cgroup/cgroup-v1.c, "check
        permissions using the credentials from file open"), so init may already
        be in a user namespace that could not open it.
        """
        return [os.open(d / self.JOIN_FILE, os.O_WRONLY | os.O_CLOEXEC) for d in self.dirs()]

    def pids(self) -> list[int]:
        """The processes in this cgroup."""
        found = set()
        for d in self.dirs():
            try:
                found |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
            except FileNotFoundError:
                pass
        return sorted(found)

    def oom_kills(self) -> int:
        raise NotImplementedError

    def kill(self) -> None:
        """SIGKILL every process in the cgroup, looping while a fork races with us."""
        for _ in range(100):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.002)

    def destroy(self) -> None:
        """Kill what is left and remove the directories (rmdir waits for exiting tasks)."""
        if not self.exists():
            return
        self.kill()
        for d in self.dirs():
            _rmdir_retry(d)

    def exists(self) -> bool:
        return any(d.is_dir() for d in self.dirs())

    def dirs(self) -> list[Path]:
        raise NotImplementedError

    def describe(self) -> str:
        return f"cgroup {self.version} {self.name}"

    @staticmethod
    def from_dirs(version: str, dirs: list[str]) -> Cgroup:
        """A cgroup known only by its directories (as recorded in state.json): kill and destroy work."""
        return _RecordedCgroup(version, dirs)


class CgroupV2(Cgroup):
    """cgroup v2: one directory under the unified tree (cgroup-v2.rst)."""

    version = "v2"

    def dirs(self) -> list[Path]:
        return [self.root / self.name]

    def create(self, limits: Limits) -> None:
        path = self.root / self.name
        self._enable_controllers(path.parent, limits.wanted())
        path.mkdir(parents=True, exist_ok=True)
        if limits.memory is not None:
            _write(path / "memory.max", limits.memory)
            if (path / "memory.swap.max").exists():
                _write(path / "memory.swap.max", 0)       # OOM, not swap, past the limit
        if limits.pids is not None:
            _write(path / "pids.max", limits.pids)
        if limits.cpu_quota is not None:
            _write(path / "cpu.max", f"{limits.cpu_quota} {limits.cpu_period}")

    def _enable_controllers(self, parent: Path, wanted: list[str]) -> None:
        """cgroup-v2.rst "Top-down constraint": each ancestor must enable a controller for its children."""
        if not wanted:
            return
        chain = [parent, *parent.parents]
        chain = [p for p in chain if p == self.root or self.root in p.parents][::-1]
        for d in chain:
            d.mkdir(exist_ok=True)
            available = _read(d / "cgroup.controllers").split()
            missing = [c for c in wanted if c not in available]
            if missing:
                raise ContainerError(f"cgroup v2 controller(s) {', '.join(missing)} not available "
                                     f"in {d} (not delegated?): cannot apply the limits")
            _write(d / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))

    def oom_kills(self) -> int:
        return _keyed(self.root / self.name / "memory.events", "oom_kill")

    def kill(self) -> None:
        kill_file = self.root / self.name / "cgroup.kill"
        if kill_file.exists():                      # Linux 5.14+: one write kills them all
            try:
                kill_file.write_text("1\n")
            except OSError:
                pass
        super().kill()


class CgroupV1(Cgroup):
    """cgroup v1: one directory per controller hierarchy (cgroup-v1/*.rst).

    `paths` maps each controller to the cgroup's path in that hierarchy
    (they can differ: each hierarchy has its own idea of "our own cgroup").
    """

    version = "v1"

    def __init__(self, paths: dict[str, str], root: Path = CGROUP_ROOT):
        super().__init__(paths.get("memory") or next(iter(paths.values()), ""), root)
        self.paths = {c: p.strip("/") for c, p in paths.items() if (self.root / c).is_dir()}

    def dirs(self) -> list[Path]:
        return [self.root / c / p for c, p in self.paths.items()]

    def dir(self, controller: str) -> Path:
        return self.root / controller / self.paths[controller]

    def create(self, limits: Limits) -> None:
        missing = [c for c in limits.wanted() if c not in self.paths]
        if missing:
            raise ContainerError(f"cgroup v1 controller(s) {', '.join(missing)} not mounted under {self.root}")
        for d in self.dirs():
            d.mkdir(parents=True, exist_ok=True)
        if limits.memory is not None:
            mem = self.dir("memory")
            _write(mem / "memory.limit_in_bytes", limits.memory)
            if (mem / "memory.memsw.limit_in_bytes").exists():   # memory+swap: no swapping past it
                _write(mem / "memory.memsw.limit_in_bytes", limits.memory)
        if limits.pids is not None:
            _write(self.dir("pids") / "pids.max", limits.pids)
        if limits.cpu_quota is not None:
            _write(self.dir("cpu") / "cpu.cfs_period_us", limits.cpu_period)
            _write(self.dir("cpu") / "cpu.cfs_quota_us", limits.cpu_quota)

    # kernel/cgroup/cgroup.c, cgroup_procs_write_start(): moving one thread that
    # is the caller itself "can skip the global lock".  Our caller is a freshly
    # forked, single-threaded process: its one thread is the whole process.
    JOIN_FILE = "tasks"

    def oom_kills(self) -> int:
        if "memory" not in self.paths:
            return 0
        return _keyed(self.dir("memory") / "memory.oom_control", "oom_kill")


class _RecordedCgroup(Cgroup):
    """A cgroup rebuilt from the directories state.json recorded (for `rm` / `oci delete`)."""

    def __init__(self, version: str, dirs: list[str]):
        super().__init__(dirs[0] if dirs else "", Path("/"))
        self.version = version
        self._dirs = [Path(d) for d in dirs]
        if version == "v1":
            self.JOIN_FILE = CgroupV1.JOIN_FILE     # `exec` joins through `tasks`, as init does

    def dirs(self) -> list[Path]:
        return self._dirs


def join(fds: list[int]) -> None:
    """Move the calling process into a cgroup through files its launcher opened (join_files)."""
    try:
        for fd in fds:
            os.write(fd, b"0\n")                  # "0": the writer itself
    finally:
        close_all(fds)


def close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def open_cgroup(container_id: str, path: str | None = None, root: Path = CGROUP_ROOT,
                version: str | None = None, proc_self_cgroup: str = "/proc/self/cgroup") -> Cgroup | None:
    """The cgroup for a container: at `path` (OCI cgroupsPath) or `<own cgroup>/pykvm/<id>`.

    Returns None when this machine has no usable cgroup filesystem.
    """
    version = version or detect(root)
    if version == "v2":
        return CgroupV2(path or _join(own_cgroup(None, proc_self_cgroup), "pykvm", container_id), root)
    if version == "v1":
        own = own_cgroups(proc_self_cgroup)
        return CgroupV1({c: path or _join(own.get(c, "/"), "pykvm", container_id)
                         for c in V1_CONTROLLERS}, root)
    return None


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def _write(path: Path, value) -> None:
    try:
        path.write_text(f"{value}\n")
    except OSError as e:
        raise ContainerError(f"cannot write {value} to {path}: {e.strerror}") from None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _keyed(path: Path, key: str) -> int:
    """The value of `key N` in a flat keyed file (memory.events, memory.oom_control)."""
    for line in _read(path).splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def _rmdir_retry(path: Path, tries: int = 1000) -> None:
    """rmdir a cgroup; EBUSY while its last tasks are still exiting, so retry briefly."""
    for _ in range(tries):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise ContainerError(f"cannot remove cgroup {path}: {e.strerror}") from None
            time.sleep(0.005)
    raise ContainerError(f"cannot remove cgroup {path}: still busy")
