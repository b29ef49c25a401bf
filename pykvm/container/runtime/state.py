"""Where containers are remembered between commands: one directory per container.

    /run/pykvm/containers/<id>/          (root; a tmpfs: gone after a reboot, like runc's /run/runc)
    $XDG_RUNTIME_DIR/pykvm/containers/   (other users; else /tmp/pykvm-<uid>/containers, mode 0700)
        state.json     written by the launcher: id, name, bundle, pid, command, created ...
        exit.json      written by the monitor when the container's init has exited
        exec.fifo      only between `oci create` and `oci start` (runc's trick)
        container.log  stdout+stderr of a detached container (`pykvm container logs`)
        upper/ work/ rootfs/   the overlay's writable layer and mount point (image runs)

The OCI runtime spec's state (runtime.md "State") is computed from these:
status is "created" while exec.fifo exists, "stopped" once exit.json exists
or the init process is gone, else "running".
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pykvm.errors import ConfigError, ContainerError

__all__ = ["ContainerState", "StateStore", "state_root", "new_id", "OCI_VERSION", "STATE_ROOT_ENV",
           "oci_state_json",
           "stat_fields",
           "stat_field", "process_start_time", "pid_alive"]

STATE_ROOT_ENV = "PYKVM_STATE_ROOT"         # overrides state_root() (tests keep to themselves)
OCI_VERSION = "1.0.2"                       # runtime-spec version whose state JSON we emit
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def state_root() -> Path:
    """/run/pykvm/containers for root; a private per-user directory for everyone else.

    $PYKVM_STATE_ROOT overrides both (tests use it to keep to themselves).
    """
    if os.environ.get(STATE_ROOT_ENV):
        return Path(os.environ[STATE_ROOT_ENV])
    if os.geteuid() == 0:
        return Path("/run/pykvm/containers")
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir and os.access(runtime_dir, os.W_OK):
        return Path(runtime_dir) / "pykvm" / "containers"
    return Path(f"/tmp/pykvm-{os.getuid()}") / "containers"


def new_id() -> str:
    """A fresh 12-hex-digit container id, like Docker's short ids."""
    return os.urandom(6).hex()          # not `secrets`: its hashlib import costs ~20 ms of CLI startup


@dataclass
class ContainerState:
    """What the launcher records about a container (state.json)."""

    id: str
    name: str
    bundle: str = ""
    rootfs: str = ""
    pid: int = 0                   # host PID of the container's init (PID 1 inside)
    pid_start: int = 0             # its start time (/proc/PID/stat field 22): guards against PID reuse
    monitor_pid: int = 0
    launcher_pid: int = 0          # the process that launched it, and its start time: while it lives
    launcher_start: int = 0        # and init's PID is not yet known, the container is being created
    command: list[str] = field(default_factory=list)
    created: float = 0.0
    cgroup: dict = field(default_factory=dict)      # {"version": "v1", "paths": {...}} or {}
    pid_namespace: list[int] = field(default_factory=list)   # [dev, inode] of init's: what is "ours" to kill
    auto_remove: bool = False
    detached: bool = False
    annotations: dict = field(default_factory=dict)
    image: str = ""                # the image ID it was made from (`rmi` refuses to remove it)
    layers: list[str] = field(default_factory=list)   # its overlay's lower dirs (`gc` keeps them)
    process: dict = field(default_factory=dict)   # env, cwd, user, capabilities ... (`exec` starts from them)
    hooks: dict = field(default_factory=dict)     # config.json's hooks (`oci start` and `delete` run some)
    network: str = ""              # "bridge": it holds an address and ports until removed (network.py)
    isolation: str = "container"   # "vm": `run -d --isolation vm`; pid is the pykvm process running the VM


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

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else state_root()

    def ensure(self) -> Path:
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise ContainerError(f"cannot create the state directory {self.root}: {e.strerror} "
                                 f"(choose another with PYKVM_STATE_ROOT)") from None
        return self.root

    def dir(self, cid: str) -> Path:
        return self.root / cid

    def create(self, state: ContainerState) -> Path:
        """Make the state directory; an id or name already in use is a ConfigError."""
        if not ID_RE.match(state.id):
            raise ConfigError(f"bad container id {state.id!r}: use letters, digits, _ . - (max 128)")
        if not ID_RE.match(state.name):
            raise ConfigError(f"bad container name {state.name!r}: use letters, digits, _ . - (max 128)")
        self.ensure()
        for other in self.list():
            if state.name in (other.id, other.name):
                raise ConfigError(f"container name or id {state.name!r} is already in use "
                                  f"(by {other.id}); remove it with `pykvm container rm {other.id}`")
        try:
            self.dir(state.id).mkdir(mode=0o711)
        except FileExistsError:
            raise ConfigError(f"container {state.id!r} already exists") from None
        self.save(state)
        return self.dir(state.id)

    def save(self, state: ContainerState) -> None:
        _write_json(self.dir(state.id) / "state.json", asdict(state))

    def load(self, cid: str) -> ContainerState:
        try:
            data = json.loads((self.dir(cid) / "state.json").read_text())
        except FileNotFoundError:
            raise ContainerError(f"no such container: {cid}") from None
        return ContainerState(**data)

    def list(self) -> list[ContainerState]:
        if not self.root.is_dir():
            return []
        out = []
        for d in sorted(self.root.iterdir()):
            if not d.is_dir():                  # not a container's: an engine's pid file, say
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
        if ID_RE.match(ref) and (self.dir(ref) / "state.json").is_file():
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
            return json.loads((self.dir(cid) / "exit.json").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def record_exit(self, cid: str, exit_code: int, oom_killed: bool) -> None:
        _write_json(self.dir(cid) / "exit.json",
                    {"exit_code": exit_code, "oom_killed": oom_killed, "finished": time.time()})

    def status(self, state: ContainerState) -> str:
        """OCI status: created, running or stopped (runtime.md "State")."""
        if self.exit_info(state.id) is not None or not pid_alive(state.pid, state.pid_start):
            return "stopped"
        if (self.dir(state.id) / "exec.fifo").exists():
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
            path.rmdir()
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


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _write_json(path: Path, data: dict) -> None:
    """Write atomically: readers see the old file or the new one, never half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
