"""Control groups: how much CPU, memory and how many processes a container gets.

One interface, two backends, chosen at run time (Documentation/admin-guide/cgroup-v2.rst
and cgroup-v1/*.rst in the kernel tree):

    cgroup v2 (unified)  one tree at /sys/fs/cgroup; a cgroup is one directory;
                         controllers are switched on for children through the
                         parent's cgroup.subtree_control.
                           memory.max, memory.swap.max, pids.max, cpu.max "QUOTA PERIOD",
                           cpu.weight, cpuset.cpus, cpuset.mems,
                           memory.events "oom_kill N"
    cgroup v1            one tree per controller: /sys/fs/cgroup/memory, /pids, /cpu ...;
                         a cgroup is one directory in each.
                           memory.limit_in_bytes, memory.memsw.limit_in_bytes,
                           pids.max, cpu.cfs_quota_us + cpu.cfs_period_us,
                           cpu.shares, cpuset.cpus, cpuset.mems,
                           memory.oom_control "oom_kill N"

`detect()` says which one this machine runs: v2 when /sys/fs/cgroup itself is a
cgroup2 mount (cgroup.controllers exists there); v1 otherwise, which includes
the "hybrid" layout (v1 controllers plus an empty cgroup2 at
/sys/fs/cgroup/unified) that this project's machines have.

A container's cgroup is created *inside the launcher's own cgroup* (path
`<own cgroup>/pykvm/<id>`), so a container never escapes limits that were put
on whoever started it.  On v1 it has a directory in every hierarchy (memory,
pids, cpu, devices, freezer, ... and name=systemd), as runc's does, so that its
cgroup namespace shows only its own cgroups.

What a container may touch (runc's libcontainer/configs/validate and cgroups/fs):
    - an OCI cgroupsPath stays inside each hierarchy: no `..`, not the hierarchy's
      root, not the launcher's own cgroup or one above it (`check_path`);
    - kill and destroy touch only the container's own processes (a `mine`
      predicate, its PID namespace), so two containers may share one cgroupsPath:
      the first to go leaves the cgroup to the other, as runc 1.1 does;
    - a cgroupsPath that holds processes of no pykvm container (a host service's
      cgroup) is refused before any of its files is written (launcher.py;
      runc 1.1 would rewrite its limits and device rules);
    - the devices controller (cgroup-v1/devices.rst; on v2 an eBPF program,
      bpf_devices.py) denies every device but runc's default list and the
      bundle's linux.resources.devices rules.
"""
from __future__ import annotations

import errno
import os
import time
from collections import namedtuple
from os.path import join as path_join

from pykvm.errors import ConfigError, ContainerError

__all__ = ["CGROUP_ROOT", "Limits", "DeviceRule", "DEFAULT_DEVICES", "Cgroup", "CgroupV1", "CgroupV2",
           "detect", "open_cgroup", "check_path", "v1_hierarchies", "join", "close_all", "parse_size",
           "parse_cpus", "own_cgroup", "own_cgroups", "cpu_weight", "MAX_LIMIT"]

CGROUP_ROOT = "/sys/fs/cgroup"
CPU_PERIOD_US = 100_000          # CFS period: 100 ms, the kernel's and Docker's default
V2_CONTROLLERS = ("memory", "pids", "cpu")
V1_KNOWN = frozenset({"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "blkio",
                      "perf_event", "net_prio", "hugetlb", "pids", "rdma", "misc"})   # cgroup-v1/*.rst
V1_NAMED = "systemd"             # the name=systemd hierarchy: no controller, only grouping
MAX_LIMIT = (1 << 63) - 1        # the kernel parses limits as s64 (page_counter, pids): no larger value
KILL_ROUNDS = 100                # kill(): rounds of SIGKILL while a fork races with us
KILL_PAUSE = 0.002               # seconds between rounds
FREEZE_TIMEOUT = 5.0             # seconds a freeze (or thaw) may take before it is an error


# Plain classes and named tuples here, not dataclasses, and paths as strings (os.path), not
# pathlib: `pykvm-runc create` and `delete` import this module, and each import is paid at
# every call: dataclasses' (it imports inspect) ~8 ms, pathlib's (with urllib.parse) ~4 ms.

class DeviceRule(namedtuple("DeviceRule", "allow type major minor access", defaults=("a", None, None, "rwm"))):
    """One device cgroup rule: config-linux.md "Allowed Device Cgroup", cgroup-v1/devices.rst.

    allow: bool; type "a" (all), "c" or "b"; major/minor None for "*"; access a subset of "rwm".
    """

    __slots__ = ()

    def line(self) -> str:
        """What devices.allow / devices.deny take: "c 1:3 rwm", or "a" for every device."""
        if self.type == "a":
            return "a"
        major, minor = ("*" if n is None else str(n) for n in (self.major, self.minor))
        return f"{self.type} {major}:{minor} {self.access}"


# runc's default rules (libcontainer/specconv AllowedDevices), after a first "deny all":
# make any node (mknod), use only these: the default /dev nodes, ptys and /dev/net/tun.
DENY_ALL = DeviceRule(False)
DEFAULT_DEVICES = [
    DeviceRule(True, "c", None, None, "m"), DeviceRule(True, "b", None, None, "m"),
    DeviceRule(True, "c", 1, 3), DeviceRule(True, "c", 1, 8), DeviceRule(True, "c", 1, 7),   # null random full
    DeviceRule(True, "c", 5, 0), DeviceRule(True, "c", 1, 5), DeviceRule(True, "c", 1, 9),   # tty zero urandom
    DeviceRule(True, "c", 136, None), DeviceRule(True, "c", 5, 2),                          # pts/*, ptmx
    DeviceRule(True, "c", 10, 200),                                                          # net/tun
]


class Limits:
    """Resource limits of one container; None = no limit."""

    def __init__(self, memory: int | None = None,          # bytes
                 pids: int | None = None,                  # max number of tasks
                 cpu_quota: int | None = None,             # microseconds of CPU per period
                 cpu_period: int = CPU_PERIOD_US,
                 cpu_shares: int | None = None,            # relative weight, 2..262144 (v2: cpu.weight, converted)
                 cpu_cpus: str | None = None,              # cpuset lists: "0-3,5"
                 cpu_mems: str | None = None,
                 memory_swap: int | None = None,           # memory + swap, bytes, or -1 (no swap limit); None: no swap
                 devices: list[DeviceRule] | None = None):  # config.json's, between deny-all and defaults
        self.memory, self.pids = memory, pids
        self.cpu_quota, self.cpu_period, self.cpu_shares = cpu_quota, cpu_period, cpu_shares
        self.cpu_cpus, self.cpu_mems = cpu_cpus, cpu_mems
        self.memory_swap = memory_swap
        self.devices = list(devices or [])

    def __eq__(self, other) -> bool:
        return isinstance(other, Limits) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return "Limits(" + ", ".join(f"{k}={v!r}" for k, v in vars(self).items()) + ")"

    def device_rules(self) -> list[DeviceRule]:
        """The rules in the order they are written: deny all, the config's, runc's defaults."""
        return [DENY_ALL, *self.devices, *DEFAULT_DEVICES]

    def wanted(self) -> list[str]:
        """The controllers these limits need, for messages about what is missing."""
        wanted = [name for name, value in (("memory", self.memory), ("pids", self.pids),
                                           ("cpu", self.cpu_quota), ("cpu", self.cpu_shares),
                                           ("cpuset", self.cpu_cpus), ("cpuset", self.cpu_mems))
                  if value is not None]
        return list(dict.fromkeys(wanted))


def parse_size(text: str) -> int:
    """Docker's sizes: `64M`, `1g`, `512k`, `100` (bytes); powers of 1024 (pykvm.sizes)."""
    from pykvm.sizes import parse_size as parse

    value = parse(text, what="--memory")
    if not 0 < value <= MAX_LIMIT:
        raise ConfigError(f"bad size {text!r}: must be more than 0 bytes and below 8 EiB")
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


def detect(root: str = CGROUP_ROOT) -> str | None:
    """'v2' (unified), 'v1' (per controller, including hybrid) or None (no cgroupfs)."""
    if os.path.exists(path_join(root, "cgroup.controllers")):
        return "v2"
    if os.path.isdir(path_join(root, "memory")) or os.path.isdir(path_join(root, "pids")):
        return "v1"
    return None


def own_cgroup(controller: str | None, proc_self_cgroup: str = "/proc/self/cgroup") -> str:
    """This process's cgroup path for a v1 controller (or v2 when controller is None)."""
    return own_cgroups(proc_self_cgroup).get(controller or "", "/")


def own_cgroups(proc_self_cgroup: str = "/proc/self/cgroup") -> dict[str, str]:
    """Every line of /proc/self/cgroup at once: v1 controller -> path, "" -> the v2 path."""
    found: dict[str, str] = {}
    with open(proc_self_cgroup) as f:
        lines = f.read().splitlines()
    for line in lines:
        _, names, path = line.split(":", 2)
        for name in names.split(","):               # "cpu,cpuacct"; "" for cgroup v2
            found.setdefault(name, path)
    return found


class Cgroup:
    """One container's cgroup: create with limits, add processes, read OOM kills, kill, destroy."""

    version = "?"

    def __init__(self, name: str, root: str = CGROUP_ROOT):
        self.name = name.strip("/")
        self.root = os.fspath(root)

    def create(self, limits: Limits) -> None:
        raise NotImplementedError

    def add(self, pid: int) -> None:
        """Move a process (0 = the caller) into this cgroup."""
        for d in self.dirs():
            with open(path_join(d, "cgroup.procs"), "w") as f:
                f.write(f"{pid}\n")

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
        return [os.open(path_join(d, self.JOIN_FILE), os.O_WRONLY | os.O_CLOEXEC) for d in self.dirs()]

    def pids(self) -> list[int]:
        """The processes in this cgroup: none in a directory that is gone.  A cgroup removed
        between our open and our read (its last process exited and the container's own
        launcher removed it meanwhile) answers the read with ENODEV: gone as well."""
        found = set()
        for d in self.dirs():
            try:
                with open(path_join(d, "cgroup.procs")) as f:
                    found |= {int(p) for p in f.read().split()}
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENODEV):
                    raise ContainerError(f"cannot list the processes of cgroup {d}: {e.strerror}") from None
        return sorted(found)

    def oom_kills(self) -> int:
        raise NotImplementedError

    def kill(self, mine=lambda pid: True) -> None:
        """SIGKILL every process in the cgroup for which `mine(pid)` holds, looping while a
        fork races with us.  Another container sharing the cgroup is not `mine`."""
        for _ in range(KILL_ROUNDS):
            pids = [pid for pid in self.pids() if mine(pid)]
            if not pids:
                return
            import signal               # its enum costs each delete ~4 ms: only when there are some
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(KILL_PAUSE)

    def destroy(self, mine=lambda pid: True) -> None:
        """Kill what is left of ours and remove the directories; a directory still holding
        someone else's processes (or cgroups) stays, as runc leaves a shared cgroup."""
        if not self.exists():
            return
        self.kill(mine)
        for d in self.dirs():
            _rmdir_retry(d, mine)

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self.dirs())

    # --- pause and resume: the freezer (cgroup-v1/freezer-subsystem.rst; cgroup-v2.rst
    # "cgroup.freeze").  v1 passes through FREEZING while tasks are caught, v2 says
    # "frozen 1" in cgroup.events once all are: both are polled until done.
    def freeze(self, frozen: bool) -> None:
        """Stop (or let go on) every process in the cgroup; waits until the kernel is done."""
        target = self._freezer_file()
        if target is None:
            raise ContainerError(f"{self.describe()} has no freezer: cannot pause or resume it")
        _write(target, ("FROZEN" if frozen else "THAWED") if self.version == "v1" else int(frozen))
        deadline = time.monotonic() + FREEZE_TIMEOUT
        while self.frozen() != frozen:
            if time.monotonic() > deadline:
                raise ContainerError(f"{self.describe()} did not {'freeze' if frozen else 'thaw'} "
                                     f"within {FREEZE_TIMEOUT} s")
            time.sleep(KILL_PAUSE)

    def frozen(self) -> bool:
        """Is the cgroup frozen (a container's "paused" status)?"""
        target = self._freezer_file()
        if target is None:
            return False
        if self.version == "v1":
            return _read(target).strip() == "FROZEN"
        return _keyed(path_join(os.path.dirname(target), "cgroup.events"), "frozen") == 1

    def _freezer_file(self) -> str | None:
        name = "freezer.state" if self.version == "v1" else "cgroup.freeze"
        for d in self.dirs():
            if os.path.isfile(path_join(d, name)):
                return path_join(d, name)
        return None

    def dirs(self) -> list[str]:
        raise NotImplementedError

    def describe(self) -> str:
        return f"cgroup {self.version} {self.name}"

    @staticmethod
    def from_dirs(version: str, dirs: list[str]) -> Cgroup:
        """A cgroup known only by its directories (as recorded in state.json): kill and destroy work."""
        return _RecordedCgroup(version, dirs)

    @staticmethod
    def reopen(version: str, dirs: list[str], root: str = CGROUP_ROOT) -> Cgroup:
        """The cgroup as the launcher made it, from the directories state.json recorded (under
        `root`): its limits can be set again (`update`)."""
        parts = [os.path.relpath(d, root).split("/") for d in dirs]
        if version == "v2":
            return CgroupV2("/".join(parts[0]), root)
        return CgroupV1({p[0]: "/".join(p[1:]) for p in parts}, root)


class CgroupV2(Cgroup):
    """cgroup v2: one directory under the unified tree (cgroup-v2.rst)."""

    version = "v2"

    def dirs(self) -> list[str]:
        return [path_join(self.root, self.name)]

    def create(self, limits: Limits) -> None:
        path = path_join(self.root, self.name)
        self._enable_controllers(os.path.dirname(path), limits.wanted())
        os.makedirs(path, exist_ok=True)
        # Rootless: no bpf(2) for us, and no device the user cannot open anyway.  A tree that
        # is not cgroupfs (the unit tests' stand-in) has nothing to attach a program to.
        if os.geteuid() == 0 and _filesystem(path) == "cgroup2":
            from pykvm.container.runtime import bpf_devices       # v2 has no devices file: an eBPF program
            bpf_devices.attach(path, limits.device_rules())
        self.set_limits(limits)

    def set_limits(self, limits: Limits) -> None:
        """Memory, pids and CPU (at create, and for `update`); a None limit is left as it is."""
        path = path_join(self.root, self.name)
        if limits.memory is not None:
            _write(path_join(path, "memory.max"), limits.memory)
            if os.path.exists(path_join(path, "memory.swap.max")) or limits.memory_swap is not None:
                _write(path_join(path, "memory.swap.max"), _v2_swap(limits))
        if limits.pids is not None:
            _write(path_join(path, "pids.max"), limits.pids)
        if limits.cpu_quota is not None:
            _write(path_join(path, "cpu.max"), f"{limits.cpu_quota} {limits.cpu_period}")
        if limits.cpu_shares is not None:
            _write(path_join(path, "cpu.weight"), cpu_weight(limits.cpu_shares))
        for name, value in (("cpuset.cpus", limits.cpu_cpus), ("cpuset.mems", limits.cpu_mems)):
            if value is not None:
                _write(path_join(path, name), value)

    def _enable_controllers(self, parent: str, wanted: list[str]) -> None:
        """cgroup-v2.rst "Top-down constraint": each ancestor must enable a controller for its children."""
        if not wanted:
            return
        chain = [self.root]                   # the root, then each directory below it down to `parent`
        below = os.path.relpath(parent, self.root)
        if below != ".":
            for part in below.split("/"):
                chain.append(path_join(chain[-1], part))
        for d in chain:
            os.makedirs(d, exist_ok=True)
            available = _read(path_join(d, "cgroup.controllers")).split()
            missing = [c for c in wanted if c not in available]
            if missing:
                raise ContainerError(f"cgroup v2 controller(s) {', '.join(missing)} not available "
                                     f"in {d} (not delegated?): cannot apply the limits")
            _write(path_join(d, "cgroup.subtree_control"), " ".join(f"+{c}" for c in wanted))

    def oom_kills(self) -> int:
        return _keyed(path_join(self.root, self.name, "memory.events"), "oom_kill")

    # No cgroup.kill here: it would kill a container sharing the cgroup too.  A container
    # with its own PID namespace dies whole with its PID 1 (pid_namespaces(7)).


class CgroupV1(Cgroup):
    """cgroup v1: one directory per controller hierarchy (cgroup-v1/*.rst).

    `paths` maps each controller to the cgroup's path in that hierarchy
    (they can differ: each hierarchy has its own idea of "our own cgroup").
    """

    version = "v1"

    def __init__(self, paths: dict[str, str], root: str = CGROUP_ROOT):
        super().__init__(paths.get("memory") or next(iter(paths.values()), ""), root)
        self.paths = {c: p.strip("/") for c, p in paths.items() if os.path.isdir(path_join(self.root, c))}

    def dirs(self) -> list[str]:
        return [path_join(self.root, c, p) for c, p in self.paths.items()]

    def dir(self, controller: str) -> str:
        """The cgroup's directory in the hierarchy holding `controller` ("cpu" in "cpu,cpuacct")."""
        hierarchy = next(h for h in self.paths if controller in h.split(","))
        return path_join(self.root, hierarchy, self.paths[hierarchy])

    def has(self, controller: str) -> bool:
        return any(controller in h.split(",") for h in self.paths)

    def create(self, limits: Limits) -> None:
        missing = [c for c in limits.wanted() if not self.has(c)]
        if missing:
            raise ContainerError(f"cgroup v1 controller(s) {', '.join(missing)} not mounted under {self.root}")
        for hierarchy, d in zip(self.paths, self.dirs()):
            if "cpuset" in hierarchy.split(","):
                _make_cpuset(path_join(self.root, hierarchy), self.paths[hierarchy])
            os.makedirs(d, exist_ok=True)
        if self.has("devices"):
            for rule in limits.device_rules():
                _write(path_join(self.dir("devices"), "devices.allow" if rule.allow else "devices.deny"), rule.line())
        self.set_limits(limits)

    def set_limits(self, limits: Limits) -> None:
        """Memory, pids and CPU (at create, and for `update`); a None limit is left as it is."""
        if limits.memory is not None:
            self._set_memory(limits.memory, limits.memory_swap)
        if limits.pids is not None:
            _write(path_join(self.dir("pids"), "pids.max"), limits.pids)
        if limits.cpu_quota is not None:
            _write(path_join(self.dir("cpu"), "cpu.cfs_period_us"), limits.cpu_period)
            _write(path_join(self.dir("cpu"), "cpu.cfs_quota_us"), limits.cpu_quota)
        if limits.cpu_shares is not None:
            _write(path_join(self.dir("cpu"), "cpu.shares"), limits.cpu_shares)
        for name, value in (("cpuset.cpus", limits.cpu_cpus), ("cpuset.mems", limits.cpu_mems)):
            if value is not None:
                _write(path_join(self.dir("cpuset"), name), value)

    def _set_memory(self, limit: int, swap: int | None) -> None:
        """memory.limit_in_bytes, and memory+swap: the config's, else the memory limit (no
        swapping past it).  The kernel keeps memsw >= limit at every step (cgroup-v1/
        memory.rst 2.4): a limit above the present memsw goes after memsw, others before."""
        mem = self.dir("memory")
        memsw = path_join(mem, "memory.memsw.limit_in_bytes")
        files = [(path_join(mem, "memory.limit_in_bytes"), limit)]
        if os.path.exists(memsw) or swap is not None:
            files.append((memsw, swap or limit))
            if limit > int(_read(memsw) or 0):
                files.reverse()
        for path, value in files:
            _write(path, value)

    # kernel/cgroup/cgroup.c, cgroup_procs_write_start(): moving one thread that
    # is the caller itself "can skip the global lock".  Our caller is a freshly
    # forked, single-threaded process: its one thread is the whole process.
    JOIN_FILE = "tasks"

    def oom_kills(self) -> int:
        if not self.has("memory"):
            return 0
        return _keyed(path_join(self.dir("memory"), "memory.oom_control"), "oom_kill")


def cpu_weight(shares: int) -> int:
    """cgroup v1 cpu.shares (2..262144) -> v2 cpu.weight (1..10000), runc's formula
    (libcontainer/cgroups ConvertCPUSharesToCgroupV2Value)."""
    return 1 + ((shares - 2) * 9999) // 262142


def _v2_swap(limits: Limits) -> int | str:
    """memory.swap.max counts swap alone; the OCI value counts memory + swap."""
    if limits.memory_swap is None:
        return 0                                   # OOM, not swap, past the limit
    if limits.memory_swap == -1:
        return "max"
    return limits.memory_swap - limits.memory


def _make_cpuset(hierarchy: str, path: str) -> None:
    """Make each missing cpuset directory down to `path`, copying its parent's cpus and mems:
    a new cpuset starts with none, and no task may join it then (cgroup-v1/cpusets.rst)."""
    here = hierarchy
    for part in path.strip("/").split("/"):
        parent, here = here, path_join(here, part)
        if os.path.isdir(here):
            continue
        os.mkdir(here)
        for name in ("cpuset.cpus", "cpuset.mems"):
            if os.path.exists(path_join(parent, name)) and not _read(path_join(here, name)).strip():
                _write(path_join(here, name), _read(path_join(parent, name)).strip())


class _RecordedCgroup(Cgroup):
    """A cgroup rebuilt from the directories state.json recorded (for `rm` / `oci delete`)."""

    def __init__(self, version: str, dirs: list[str]):
        super().__init__(dirs[0] if dirs else "", "/")
        self.version = version
        self._dirs = [os.fspath(d) for d in dirs]
        if version == "v1":
            self.JOIN_FILE = CgroupV1.JOIN_FILE     # `exec` joins through `tasks`, as init does

    def dirs(self) -> list[str]:
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


def open_cgroup(container_id: str, path: str | None = None, root: str = CGROUP_ROOT,
                version: str | None = None, proc_self_cgroup: str = "/proc/self/cgroup") -> Cgroup | None:
    """The cgroup for a container: at `path` (OCI cgroupsPath) or `<own cgroup>/pykvm/<id>`.

    config-linux.md "Cgroups Path": an absolute path is taken from the root of each
    hierarchy, a relative one from our own cgroup (runc's cgroupfs driver).  Nothing is
    created here.  Returns None when this machine has no usable cgroup filesystem.
    """
    version = version or detect(root)
    own = own_cgroups(proc_self_cgroup)
    if version == "v2":
        return CgroupV2(_place(container_id, path, own.get("", "/")), root)
    if version == "v1":
        return CgroupV1({h: _place(container_id, path, _own_in(own, h)) for h in v1_hierarchies(root)}, root)
    return None


def _place(container_id: str, path: str | None, own: str) -> str:
    if path is None:
        return _join(own, "pykvm", container_id)
    check_path(path)
    placed = _join(path) if path.startswith("/") else _join(own, path)
    if (own.strip("/") + "/").startswith(placed + "/"):
        raise ConfigError(f"cgroupsPath {path!r} is /{placed}, pykvm's own cgroup or one above it: "
                          f"limits and device rules there would confine the host's processes; "
                          f"give the container a cgroup of its own")
    return placed


def check_path(path: str) -> str:
    """An OCI cgroupsPath that stays inside each hierarchy, or a ConfigError naming the rule.

    runc's cgroupfs driver cleans `..` away lexically; we refuse it, so that what a
    config says is where the cgroup is.  The hierarchy's root is refused too: killing
    and limiting "the container's cgroup" there would reach every process on the host.
    """
    if "\0" in path:
        raise ConfigError("cgroupsPath must not contain a NUL byte")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ConfigError(f"cgroupsPath {path!r} contains '..': it must stay inside the cgroup hierarchy")
    if not parts:
        raise ConfigError(f"cgroupsPath {path!r} is the root of the cgroup hierarchy, where every "
                          f"process on the host lives: give the container a cgroup of its own")
    return path


def v1_hierarchies(root: str = CGROUP_ROOT) -> list[str]:
    """The directories under `root` that are v1 hierarchies ("memory", "cpu,cpuacct",
    "systemd" ...); links such as cpu -> cpu,cpuacct are left out, as is cgroup2's "unified"."""
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    return [n for n in names if os.path.isdir(path_join(root, n)) and not os.path.islink(path_join(root, n))
            and (n == V1_NAMED or set(n.split(",")) <= V1_KNOWN)]


def _own_in(own: dict[str, str], hierarchy: str) -> str:
    """Our cgroup in one v1 hierarchy, from own_cgroups()."""
    if hierarchy == V1_NAMED:
        return own.get(f"name={V1_NAMED}", "/")
    return own.get(hierarchy.split(",")[0], "/")


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def _filesystem(path: str) -> str:
    """The type of the filesystem `path` is on: its deepest mount point in /proc/self/mountinfo."""
    best, kind = "", ""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4]
            if (str(path) + "/").startswith(point.rstrip("/") + "/") and len(point) >= len(best):
                best, kind = point, fields[fields.index("-") + 1]
    return kind


def _write(path: str, value) -> None:
    try:
        with open(path, "w") as f:
            f.write(f"{value}\n")
    except OSError as e:
        raise ContainerError(f"cannot write {value} to {path}: {e.strerror}") from None


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _keyed(path: str, key: str) -> int:
    """The value of `key N` in a flat keyed file (memory.events, memory.oom_control)."""
    for line in _read(path).splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def _rmdir_retry(path: str, mine=lambda pid: True, tries: int = 1000) -> None:
    """rmdir a cgroup; EBUSY while its last tasks are still exiting, so retry briefly.

    EBUSY with a live process or a child cgroup in it means the cgroup is shared (another
    container's cgroupsPath, or its children): it stays for them, as runc leaves it.
    """
    for _ in range(tries):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise ContainerError(f"cannot remove cgroup {path}: {e.strerror}") from None
            if _in_use(path, mine):
                return
            time.sleep(0.005)
    raise ContainerError(f"cannot remove cgroup {path}: still busy")


def _in_use(path: str, mine) -> bool:
    """A live (not zombie) process not `mine`, or a child cgroup, in the cgroup at `path`."""
    try:
        if any(entry.is_dir() for entry in os.scandir(path)):
            return True
    except FileNotFoundError:                       # removed meanwhile: nobody in it
        return False
    for pid in _read(path_join(path, "cgroup.procs")).split():
        if mine(int(pid)):
            continue                                # ours, still exiting: wait for it
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if stat.rpartition(")")[2].split()[0] != "Z":
            return True
    return False
