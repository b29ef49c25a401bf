"""RunConfig: everything needed to start one container, checked before anything runs.

The runtime's own view of a container, whichever way it was asked for: `pykvm container
run` builds one from the command line and an image (config_from_image), an OCI bundle's
config.json is converted into one in one place (bundle.py, as runc's specconv), and
`finalized()` checks the whole of it before a single fork or mount (runc's configs/validate).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from pykvm.container.runtime import capabilities as caps
from pykvm.container.runtime import namespaces as ns
from pykvm.container.runtime import rootfs as fs
from pykvm.container.runtime.cgroups import Limits
from pykvm.container.runtime.hooks import Hook
from pykvm.container.runtime.validate import validate
from pykvm.errors import ConfigError, ContainerError

TYPE_CHECKING = False              # typing.TYPE_CHECKING, without importing typing (3 ms)
if TYPE_CHECKING:
    from pykvm.container.runtime.seccomp import Filter, Profile

__all__ = ["RunConfig", "DEFAULT_ENV", "DEFAULT_PATH", "DEFAULT_NAMESPACES", "process_defaults",
           "merge_env", "check_env", "default_caps"]

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_ENV = [DEFAULT_PATH]
DEFAULT_NAMESPACES = ("pid", "mount", "uts", "ipc", "network", "cgroup")
DEFAULT_UMASK = 0o022             # runc's (and Docker's) umask for the container's process


def default_caps(names: list[str] = caps.DEFAULT_CAPS) -> dict[str, list[str]]:
    """A process.capabilities value: `names` in the bounding, effective and permitted sets."""
    return {k: list(names) for k in ("bounding", "effective", "permitted")} | \
        {"inheritable": [], "ambient": []}


# A dataclass, although each `pykvm-runc create` pays for it (~9 ms to import dataclasses
# and inspect, ~4 ms to build the class): a hand-written class would repeat what @dataclass
# writes for these 48 settings (__init__ with fresh lists, __repr__, __eq__, replace).
@dataclass
class RunConfig:
    """Everything needed to start one container (the runtime's view of config.json)."""

    args: list[str]
    rootfs: str | None = None                   # a prepared directory, used as is (writable)
    lower_dirs: list[str] = field(default_factory=list)   # or image layers, top first (overlay)
    env: list[str] = field(default_factory=lambda: list(DEFAULT_ENV))
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    additional_gids: list[int] = field(default_factory=list)
    hostname: str | None = None
    domainname: str | None = None              # the UTS namespace's NIS domain name (setdomainname(2))
    personality: int | None = None             # linux.personality: PER_LINUX32 makes `uname -m` say i686
    io_priority: tuple[int, int] | None = None   # process.ioPriority: (IOPRIO_CLASS_*, level 0-7)
    console_size: tuple[int, int] | None = None  # process.consoleSize: the pty's first (rows, columns)
    device_nodes: list[fs.DeviceNode] = field(default_factory=list)   # linux.devices: made in /dev
    readonly: bool = False
    namespaces: dict[str, str | None] = field(     # OCI type -> path to join, or None for a new one
        default_factory=lambda: dict.fromkeys(DEFAULT_NAMESPACES))
    uid_mappings: list[ns.IdMap] = field(default_factory=list)
    gid_mappings: list[ns.IdMap] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)
    cgroups_path: str | None = None
    mounts: list[fs.Mount] = field(default_factory=lambda: list(fs.DEFAULT_MOUNTS))
    masked_paths: list[str] = field(default_factory=lambda: list(fs.MASKED_PATHS))
    readonly_paths: list[str] = field(default_factory=lambda: list(fs.READONLY_PATHS))
    capabilities: dict[str, list[str]] = field(default_factory=default_caps)
    no_new_privileges: bool = True
    rlimits: list[tuple[str, int, int]] = field(default_factory=lambda: [("RLIMIT_NOFILE", 1024, 1024)])
    tty: bool = False
    interactive: bool = False                  # keep stdin (else /dev/null)
    init: bool = False                         # PID 1 is the command (runc, Docker); True: our init (--init)
    id: str | None = None
    name: str | None = None
    remove: bool = False                       # --rm: forget the container once it exits
    bundle: str = ""
    annotations: dict = field(default_factory=dict)
    image: str = ""                            # the image ID (config_from_image), kept in state.json
    etc_files: bool = False                    # Docker's own /etc/hostname, hosts, resolv.conf (etcfiles.py)
    umask: int = DEFAULT_UMASK                 # process.user.umask (runc's default when absent)
    sysctl: dict[str, str] = field(default_factory=dict)   # linux.sysctl: namespaced kernel parameters
    oom_score_adj: int | None = None           # process.oomScoreAdj; None: 0, like any new process
    new_keyring: bool = True                   # a session keyring of its own (runc; --no-new-keyring)
    hooks: dict[str, list[Hook]] = field(default_factory=dict)   # config.json hooks (hooks.py)
    network: str = ""                          # "bridge": a veth on pykvm's bridge (network.py)
    publish: list = field(default_factory=list)   # nftables.Publish: -p HOSTPORT:CONTAINERPORT
    seccomp: Profile | None = None             # linux.seccomp, or Docker's default (seccomp.py)
    seccomp_filter: Filter | None = None       # that profile compiled (launcher.py; exec: from state.json)
    preserve_fds: int = 0                      # runc's --preserve-fds N: the caller's fds 3 .. 3+N-1 passed on
    no_pivot: bool = False                     # runc's --no-pivot: MS_MOVE the root onto "/" and chroot

    @property
    def rootless(self) -> bool:
        return os.geteuid() != 0

    def finalized(self) -> RunConfig:
        """Check the config and fill in what follows from it (rootless user namespace)."""
        if not self.args:
            raise ConfigError("no command to run: give one after the rootfs/image")
        if not self.lower_dirs:
            if not self.rootfs:
                raise ConfigError("no root filesystem: give --rootfs DIR or an IMAGE")
            if not os.path.isdir(self.rootfs):
                raise ContainerError(f"rootfs {self.rootfs} does not exist or is not a directory")
        for d in self.lower_dirs:
            if not os.path.isdir(d):
                raise ContainerError(f"image layer {d} does not exist")
        for entry in self.env:
            check_env(entry)
        if self.hostname is not None:
            ns.check_hostname(self.hostname, rfc1123=False)      # runc's rule: the kernel's length
        validate(self)
        if "mount" not in self.namespaces:
            raise ConfigError("a mount namespace is required (linux.namespaces must include 'mount')")
        ns.flags_for(self.namespaces)                       # unknown types -> ConfigError
        self._check_network()
        cfg = replace(self, namespaces=dict(self.namespaces))
        if cfg.rootless and "user" not in cfg.namespaces:
            cfg.namespaces["user"] = None
        if "user" in cfg.namespaces and cfg.namespaces["user"] is None and not cfg.uid_mappings:
            # Rootless default: root inside is the caller outside, nothing else is mapped.
            cfg.uid_mappings = [ns.IdMap(0, os.geteuid())]
            cfg.gid_mappings = [ns.IdMap(0, os.getegid())]
        if cfg.rootless and (cfg.uid, cfg.gid) != (0, 0) and not _mapped(cfg):
            raise ConfigError(f"rootless: only uid/gid 0 exists inside (mapped to you); "
                              f"cannot run as {cfg.uid}:{cfg.gid}")
        return cfg

    def _check_network(self) -> None:
        """A bridge needs a network namespace of our making, and root; -p needs the bridge."""
        if self.publish and self.network != "bridge":
            raise ConfigError("-p publishes a port through the bridge: it needs --network bridge")
        if self.network != "bridge":
            return
        if self.rootless:
            raise ConfigError("--network bridge needs root (a veth into the host's network "
                              "namespace); rootless containers use --network none or host")
        if "network" not in self.namespaces or self.namespaces["network"]:
            raise ConfigError("--network bridge needs a new network namespace of its own")
        from pykvm.container.runtime.nat import backend
        if self.publish and backend() is None:
            raise ConfigError("-p needs nft or iptables to publish a port (Debian package "
                              "nftables: apt-get install nftables)")

    def hostname_for(self, cid: str) -> str | None:
        if "uts" not in self.namespaces:
            return None
        return self.hostname or cid[:12]


def process_defaults(cfg: RunConfig) -> dict:
    """What `exec` starts from (state.json "process"), as runc exec copies config.json's
    process: environment, working directory, user, capabilities, no_new_privs, rlimits, and
    the seccomp filter (runc exec loads the container's)."""
    return {"env": list(cfg.env), "cwd": cfg.cwd, "uid": cfg.uid, "gid": cfg.gid,
            "personality": cfg.personality, "io_priority": cfg.io_priority,
            "additional_gids": list(cfg.additional_gids), "capabilities": dict(cfg.capabilities),
            "no_new_privileges": cfg.no_new_privileges, "rlimits": [list(r) for r in cfg.rlimits],
            "umask": cfg.umask, "new_keyring": cfg.new_keyring,
            "seccomp": cfg.seccomp_filter.to_json() if cfg.seccomp_filter else None}


def merge_env(base: list[str], extra: list[str]) -> list[str]:
    """`base` with `extra`'s NAME=VALUE entries put in: a later one replaces an earlier
    of the same name, keeping its place (Docker's rule for image Env, -e ...)."""
    env = dict(e.split("=", 1) if "=" in e else (e, "") for e in base)
    env.update(e.split("=", 1) for e in extra)
    return [f"{k}={v}" for k, v in env.items()]


def check_env(entry: str) -> None:
    """execve(2)'s environment: NAME=VALUE strings, NAME not empty, no NUL anywhere."""
    name, equals, _ = entry.partition("=")
    if not name or not equals or "\0" in entry:
        raise ConfigError(f"bad environment variable {entry!r}: want NAME=VALUE with a non-empty "
                          f"NAME and no NUL byte (-e, image Env, config.json process.env)")


def _mapped(cfg: RunConfig) -> bool:
    def inside(maps, n):
        return any(m.inside <= n < m.inside + m.count for m in maps)
    return inside(cfg.uid_mappings, cfg.uid) and inside(cfg.gid_mappings, cfg.gid)
