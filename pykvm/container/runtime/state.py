"""Where containers are remembered between commands: one directory per container.

    /run/pykvm/containers/<id>/          (root; a tmpfs: gone after a reboot, like runc's /run/runc)
    $XDG_RUNTIME_DIR/pykvm/containers/   (other users; else /tmp/pykvm-<uid>/containers, mode 0700)
        state.json     written by the launcher: id, name, bundle, pid, command, created ...
        exit.json      written by the monitor when the container's init has exited
        exec.fifo      only between `oci create` and `oci start` (runc's trick)
        container.log  stdout+stderr of a detached container (`pykvm container logs`)
        upper/ work/ rootfs/   the overlay's writable layer and mount point (image runs)
    <root>/.cache/seccomp/               compiled seccomp filters (seccomp_cache.py); a name
                                         that starts with "." is never a container's id

The OCI runtime spec's state (runtime.md "State") is computed from these:
status is "created" while exec.fifo exists, "stopped" once exit.json exists
or the init process is gone, else "running".

Every `pykvm-runc` call (an engine makes three per container: create, start, delete)
reads this module, so it imports neither dataclasses (which imports inspect: ~8 ms) nor
pathlib (~4 ms): ContainerState is a plain class and paths are strings (os.path).  Nor does
it import `json` or `re` (~9 ms together, with the `enum` that `re` imports): state.json is
read by jsonload.py, and json is imported only to write it.
"""
from __future__ import annotations

import os
import time

from pykvm.container.runtime.jsonload import loads as json_loads
from pykvm.errors import ConfigError, ContainerError

__all__ = ["ContainerState", "StateStore", "state_root", "new_id", "OCI_VERSION", "STATE_ROOT_ENV",
           "oci_state_json", "valid_id",
           "stat_fields",
           "stat_field", "process_start_time", "pid_alive", "in_pid_namespace", "owned_by"]

STATE_ROOT_ENV = "PYKVM_STATE_ROOT"         # overrides state_root() (tests keep to themselves)
OCI_VERSION = "1.0.2"                       # runtime-spec version whose state JSON we emit
ID_FIRST_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
ID_CHARS = ID_FIRST_CHARS | frozenset("_.-")
ID_MAX = 128


def valid_id(text: str) -> bool:
    """A container id or name as runc accepts one: ^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$,
    checked without the `re` module (see the module's docstring)."""
    return 0 < len(text) <= ID_MAX and text[0] in ID_FIRST_CHARS and ID_CHARS.issuperset(text)


def state_root() -> str:
    """/run/pykvm/containers for root; a private per-user directory for everyone else.

    $PYKVM_STATE_ROOT overrides both (tests use it to keep to themselves).
    """
    if os.environ.get(STATE_ROOT_ENV):
        return os.environ[STATE_ROOT_ENV]
    if os.geteuid() == 0:
        return "/run/pykvm/containers"
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir and os.access(runtime_dir, os.W_OK):
        return os.path.join(runtime_dir, "pykvm", "containers")
    return f"/tmp/pykvm-{os.getuid()}/containers"


def new_id() -> str:
    """A fresh 12-hex-digit container id, like Docker's short ids."""
    return os.urandom(6).hex()          # not `secrets`: its hashlib import costs ~20 ms of CLI startup


class ContainerState:
    """What the launcher records about a container (state.json): one attribute per key."""

    def __init__(self, id: str, name: str,
                 bundle: str = "",
                 rootfs: str = "",
                 pid: int = 0,                  # host PID of the container's init (PID 1 inside)
                 pid_start: int = 0,            # its start time (/proc/PID/stat field 22): guards against PID reuse
                 monitor_pid: int = 0,
                 launcher_pid: int = 0,         # the process that launched it, and its start time: while it lives
                 launcher_start: int = 0,       # and init's PID is not yet known, the container is being created
                 command: list[str] | None = None,
                 created: float = 0.0,
                 cgroup: dict | None = None,    # {"version": "v1", "dirs": [...], "named": bool} or {}
                 pid_namespace: list[int] | None = None,  # [dev, inode] of init's: what is "ours" to kill
                 auto_remove: bool = False,
                 detached: bool = False,
                 annotations: dict | None = None,
                 image: str = "",               # the image ID it was made from (`rmi` refuses to remove it)
                 layers: list[str] | None = None,   # its overlay's lower dirs (`gc` keeps them)
                 process: dict | None = None,   # env, cwd, user, capabilities ... (`exec` starts from them)
                 hooks: dict | None = None,     # config.json's hooks (`oci start` and `delete` run some)
                 network: str = "",             # "bridge": it holds an address and ports until removed (network.py)
                 isolation: str = "container"): # "vm": `run -d --isolation vm`; pid is the pykvm process running the VM
        self.id, self.name, self.bundle, self.rootfs = id, name, bundle, rootfs
        self.pid, self.pid_start, self.monitor_pid = pid, pid_start, monitor_pid
        self.launcher_pid, self.launcher_start = launcher_pid, launcher_start
        self.command = command or []
        self.created = created
        self.cgroup = cgroup or {}
        self.pid_namespace = pid_namespace or []
        self.auto_remove, self.detached = auto_remove, detached
        self.annotations = annotations or {}
        self.image = image
        self.layers = layers or []
        self.process = process or {}
        self.hooks = hooks or {}
        self.network = network
        self.isolation = isolation

    def to_json(self) -> dict:
        """state.json's object: every attribute (ContainerState(**data) reads it back)."""
        return dict(vars(self))

    def __repr__(self) -> str:
        return f"ContainerState(id={self.id!r}, name={self.name!r}, pid={self.pid})"


def oci_state_json(state: ContainerState, status: str, pid: int | None) -> dict:
    """runtime.md "State": what `state` prints and what hooks read on stdin (pid None: none,
    as a poststop hook gets it)."""
    out = {"ociVersion": OCI_VERSION, "id": state.id, "status": status, "pid": pid,
           "bundle": state.bundle, "annotations": state.annotations}
    if pid is None:
        del out["pid"]
    return out


class StateStore:
    """The directory of container state directories."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = os.fspath(root) if root else state_root()

    def ensure(self) -> str:
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
        except OSError as e:
            raise ContainerError(f"cannot create the state directory {self.root}: {e.strerror} "
                                 f"(choose another with PYKVM_STATE_ROOT)") from None
        return self.root

    def dir(self, cid: str) -> str:
        return os.path.join(self.root, cid)

    def cache_dir(self, kind: str) -> str:
        """<root>/.cache/<kind>: what the runtime keeps between containers (not a container)."""
        return os.path.join(self.root, ".cache", kind)

    def has(self, cid: str) -> bool:
        """Is there a container with exactly this id (its state.json)?"""
        return os.path.isfile(os.path.join(self.dir(cid), "state.json"))

    def create(self, state: ContainerState) -> str:
        """Make the state directory; an id or name already in use is a ConfigError."""
        if not valid_id(state.id):
            raise ConfigError(f"bad container id {state.id!r}: use letters, digits, _ . - (max 128)")
        if not valid_id(state.name):
            raise ConfigError(f"bad container name {state.name!r}: use letters, digits, _ . - (max 128)")
        self.ensure()
        for other in self.list():
            if state.name in (other.id, other.name):
                raise ConfigError(f"container name or id {state.name!r} is already in use "
                                  f"(by {other.id}); remove it with `pykvm container rm {other.id}`")
        try:
            os.mkdir(self.dir(state.id), 0o711)
        except FileExistsError:
            raise ConfigError(f"container {state.id!r} already exists") from None
        self.save(state)
        return self.dir(state.id)

    def save(self, state: ContainerState) -> None:
        _write_json(os.path.join(self.dir(state.id), "state.json"), state.to_json())

    def load(self, cid: str) -> ContainerState:
        try:
            data = _read_json(os.path.join(self.dir(cid), "state.json"))
        except FileNotFoundError:
            raise ContainerError(f"no such container: {cid}") from None
        except ValueError as e:
            raise ContainerError(f"container {cid}: its state.json is damaged ({e})") from None
        if not isinstance(data, dict):
            raise ContainerError(f"container {cid}: its state.json is damaged (not an object)")
        try:
            return ContainerState(**data)
        except TypeError:
            raise ContainerError(f"container {cid}: its state.json has keys this pykvm does not know "
                                 f"(written by another version?)") from None

    def list(self) -> list[ContainerState]:
        if not os.path.isdir(self.root):
            return []
        out = []
        for d in sorted(os.scandir(self.root), key=lambda entry: entry.name):
            if not d.is_dir() or d.name.startswith("."):   # an engine's pid file, the .cache
                continue
            try:
                out.append(self.load(d.name))
            except (ContainerError, ValueError, TypeError):
                continue
        return sorted(out, key=lambda s: s.created)

    def resolve(self, ref: str) -> ContainerState:
        """A container by id, name, or unique id prefix (never the empty one: it would
        match every container)."""
        if not ref:
            raise ContainerError("no such container: '' (give an id, a name or an id prefix)")
        if valid_id(ref) and self.has(ref):
            return self.load(ref)           # an exact id: no need to read every container's state
        states = self.list()
        for s in states:
            if ref in (s.id, s.name):
                return s
        matches = [s for s in states if s.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise ConfigError(f"container reference {ref!r} is ambiguous")
        raise ContainerError(f"no such container: {ref}")

    def exit_info(self, cid: str) -> dict | None:
        """exit.json, written by the monitor: {"exit_code", "oom_killed", "finished"} or None."""
        try:
            return _read_json(os.path.join(self.dir(cid), "exit.json"))
        except (FileNotFoundError, ValueError):
            return None

    def record_exit(self, cid: str, exit_code: int, oom_killed: bool) -> None:
        _write_json(os.path.join(self.dir(cid), "exit.json"),
                    {"exit_code": exit_code, "oom_killed": oom_killed, "finished": time.time()})

    def status(self, state: ContainerState) -> str:
        """OCI status: created, running or stopped (runtime.md "State")."""
        if self.exit_info(state.id) is not None or not pid_alive(state.pid, state.pid_start):
            return "stopped"
        if os.path.exists(os.path.join(self.dir(state.id), "exec.fifo")):
            return "created"
        return "running"

    def oci_state(self, state: ContainerState) -> dict:
        """The state JSON of runtime.md "State", as `runc state` prints it."""
        status = self.status(state)
        return oci_state_json(state, status, state.pid if status != "stopped" else 0)

    def remove(self, cid: str) -> None:
        """Delete a container's state directory (its mounts died with its mount namespace)."""
        path = self.dir(cid)
        try:
            entries = list(os.scandir(path))
        except OSError:
            return
        if any(e.is_dir(follow_symlinks=False) for e in entries):
            # An image run's upper/ layer, written by the container: rmtree's
            # symlink-safe walk.  Imported only here: shutil imports bz2 and lzma
            # (~2 ms of CLI startup that a bundle run does not need).
            import shutil
            shutil.rmtree(path, ignore_errors=True)
            return
        for entry in entries:           # only files: state.json, exit.json, container.log ...
            _unlink_quietly(entry.path)
        try:
            os.rmdir(path)
        except OSError:
            pass


def stat_field(fields: list[str], number: int) -> str:
    """Field `number` of /proc/PID/stat as proc(5) numbers them, from stat_fields()."""
    return fields[number - 3]


def stat_fields(pid: int | str = "self") -> list[str]:
    """/proc/PID/stat from field 3 (state) on: what follows the command name, which is in
    parentheses and may itself hold spaces or ")", hence the split at the last ")".
    OSError if there is no such process."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()


def process_start_time(pid: int) -> int:
    """Field 22 of /proc/PID/stat (starttime, in clock ticks since boot); 0 if no such process."""
    try:
        return int(stat_field(stat_fields(pid), 22))
    except OSError:
        return 0


def pid_alive(pid: int, start_time: int = 0) -> bool:
    """Is this PID still the process we started (not a zombie, not a reused PID)?"""
    if pid <= 0:
        return False
    try:
        fields = stat_fields(pid)
    except OSError:
        return False
    if stat_field(fields, 3) == "Z":
        return False
    return not start_time or int(stat_field(fields, 22)) == start_time


def in_pid_namespace(pid: int, ident: tuple[int, int]) -> bool:
    """Is process `pid` in the PID namespace `ident`, or about to put its children there
    (`pid_for_children`: an `exec` that has joined it with setns(2))?"""
    for name in ("pid", "pid_for_children"):
        try:
            st = os.stat(f"/proc/{pid}/ns/{name}")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == tuple(ident):
            return True
    return False


def owned_by(pid_namespace, named: bool):
    """Which processes in a container's cgroup are the container's: those in its PID
    namespace.  When that is unknown (rootless: init's /proc/PID/ns is closed to us),
    everything in a cgroup pykvm made for this container alone, nothing in one a
    config named (cgroupsPath), where others may be."""
    if not pid_namespace:
        return lambda pid: not named
    return lambda pid: in_pid_namespace(pid, tuple(pid_namespace))


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _read_json(path: str):
    with open(path) as f:
        return json_loads(f.read())


def _write_json(path: str, data: dict) -> None:
    """Write atomically: readers see the old file or the new one, never half of it."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    import json                     # only writers pay for it (see the module's docstring)
    with open(tmp, "w") as f:
        f.write(json.dumps(data, indent=1))
    os.replace(tmp, path)
