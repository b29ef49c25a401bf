"""Check a whole container config before acting on any of it.

runc's libcontainer/configs/validate checks every field of the converted
config before a single mount or fork: a path from a config file that is
not checked is how a runtime gets an escape.  `validate(cfg)` does the same for
a RunConfig, whether it came from the command line or from config.json
(bundle.py checks the JSON types first), and raises one ConfigError naming
the first field that is wrong:

    ids          uid, gid, additional gids, id mappings: 0-2147483647 (runc's range;
                 (uid_t)-1 means "unchanged" to setresuid(2): it must never get there)
    strings      args, cwd, mounts, masked and read-only paths: no NUL byte (the
                 kernel would cut them short); those paths absolute
    rlimits      0 <= soft <= hard <= RLIM_INFINITY (setrlimit(2))
    namespaces   a path to join exists; a hostname needs a UTS namespace of its own
    cgroups      cgroupsPath stays inside the hierarchy (cgroups.check_path);
                 with pykvm-init as PID 1, a pids limit leaves room for the command
    process      umask 0-0777, oomScoreAdj -1000..1000 (proc(5))
    sysctl       only namespaced keys, and only for namespaces the container owns
"""
from __future__ import annotations

import os
import re

from pykvm.container.runtime.cgroups import check_path
from pykvm.errors import ConfigError

TYPE_CHECKING = False              # typing.TYPE_CHECKING, without importing typing (3 ms)
if TYPE_CHECKING:
    from pykvm.container.runtime.config import RunConfig

__all__ = ["validate", "check_id", "check_sysctl", "MAX_ID", "RLIM_INFINITY"]

MAX_ID = 2**31 - 1                 # runc: "uids and gids must be in range 0-2147483647"
RLIM_INFINITY = 2**64 - 1          # <sys/resource.h> on 64-bit Linux: the largest rlimit
OOM_SCORE_ADJ_MIN, OOM_SCORE_ADJ_MAX = -1000, 1000      # proc(5) /proc/PID/oom_score_adj
MAX_UMASK = 0o777

# Kernel parameters that belong to a namespace, and which one (runc's
# libcontainer/configs/validate sysctl rules, from namespaces(7)): only these
# may be set, and only when the container has that namespace to itself.
SYSCTL_IPC = frozenset({"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
                        "kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced"})
SYSCTL_UTS = frozenset({"kernel.domainname", "kernel.hostname"})
SYSCTL_KEY = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_*:.-]+)+$")


def validate(cfg: RunConfig) -> None:
    """Every check, in the order of config.json's fields; the first failure is raised."""
    _check_strings(cfg)
    check_id(cfg.uid, "process.user.uid")
    check_id(cfg.gid, "process.user.gid")
    for gid in cfg.additional_gids:
        check_id(gid, "process.user.additionalGids")
    _check_umask(cfg.umask)
    _check_rlimits(cfg.rlimits)
    _check_oom_score_adj(cfg.oom_score_adj)
    _check_namespaces(cfg)
    for field, maps in (("linux.uidMappings", cfg.uid_mappings), ("linux.gidMappings", cfg.gid_mappings)):
        for m in maps:
            check_id(m.inside, f"{field} containerID")
            check_id(m.outside, f"{field} hostID")
            check_id(m.inside + m.count - 1, f"{field} containerID + size - 1")
            check_id(m.outside + m.count - 1, f"{field} hostID + size - 1")
    if cfg.cgroups_path is not None:
        check_path(cfg.cgroups_path)
    if cfg.init and cfg.limits.pids is not None and cfg.limits.pids < 2:
        raise ConfigError(f"pids limit {cfg.limits.pids} leaves no room for the command: pykvm-init "
                          f"(PID 1) takes one; give at least 2")
    for key, value in cfg.sysctl.items():
        check_sysctl(key, value, cfg.namespaces)


def check_id(value: int, field: str) -> int:
    """A uid or gid in runc's range 0-2147483647."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise ConfigError(f"{field} {value!r} is out of range: uids and gids must be in range 0-{MAX_ID}")
    return value


def _check_strings(cfg: RunConfig) -> None:
    for i, arg in enumerate(cfg.args):
        if "\0" in arg:
            raise ConfigError(f"process.args[{i}] contains a NUL byte")
    if "\0" in cfg.cwd:
        raise ConfigError("process.cwd contains a NUL byte")
    if not os.path.isabs(cfg.cwd):
        raise ConfigError(f"working directory {cfg.cwd!r} must be absolute")
    for i, m in enumerate(cfg.mounts):
        if any("\0" in text for text in (m.destination, m.source, m.type, *m.options)):
            raise ConfigError(f"mounts[{i}] ({m.destination!r}) contains a NUL byte")
    for field, paths in (("linux.maskedPaths", cfg.masked_paths), ("linux.readonlyPaths", cfg.readonly_paths)):
        for path in paths:
            if "\0" in path or not os.path.isabs(path):
                raise ConfigError(f"{field}: {path!r} must be an absolute path without a NUL byte")


def _check_umask(umask: int) -> None:
    if not 0 <= umask <= MAX_UMASK:
        raise ConfigError(f"process.user.umask {umask:#o} is out of range 0-0777")


def _check_rlimits(rlimits) -> None:
    for name, soft, hard in rlimits:
        for which, value in (("soft", soft), ("hard", hard)):
            if not 0 <= value <= RLIM_INFINITY:
                raise ConfigError(f"rlimit {name} {which} {value} is out of range 0-{RLIM_INFINITY}")
        if soft > hard:
            raise ConfigError(f"rlimit {name}: soft limit {soft} is above the hard limit {hard}")


def _check_oom_score_adj(value: int | None) -> None:
    if value is not None and not OOM_SCORE_ADJ_MIN <= value <= OOM_SCORE_ADJ_MAX:
        raise ConfigError(f"process.oomScoreAdj {value} is out of range "
                          f"{OOM_SCORE_ADJ_MIN}..{OOM_SCORE_ADJ_MAX}")


def _check_namespaces(cfg: RunConfig) -> None:
    for kind, path in cfg.namespaces.items():
        if path and not os.path.exists(path):
            raise ConfigError(f"linux.namespaces: the {kind} namespace to join, {path}, does not exist")
    if cfg.hostname and not _owns(cfg.namespaces, "uts"):
        raise ConfigError("hostname: unable to set the hostname without a private UTS namespace "
                          "(add {\"type\": \"uts\"} to linux.namespaces)")
    if cfg.domainname is not None and not _owns(cfg.namespaces, "uts"):
        raise ConfigError("domainname: unable to set the domain name without a private UTS namespace "
                          "(add {\"type\": \"uts\"} to linux.namespaces)")


def _owns(namespaces: dict, kind: str) -> bool:
    """A new namespace of this kind (not the host's, not one joined by path)."""
    return kind in namespaces and not namespaces[kind]


def check_sysctl(key: str, value, namespaces: dict) -> None:
    """One linux.sysctl entry: a namespaced key for a namespace the container owns."""
    where = f"linux.sysctl {key!r}"
    if not isinstance(value, str) or "\0" in value or not SYSCTL_KEY.match(key) or ".." in key:
        raise ConfigError(f"{where}: want a dotted kernel parameter name and a string value")
    if key in SYSCTL_IPC or key.startswith("fs.mqueue."):
        kind = "ipc"
    elif key in SYSCTL_UTS:
        kind = "uts"
    elif key.startswith("net."):
        kind = "network"
    else:
        raise ConfigError(f"{where} is not namespaced: setting it in a container would change the "
                          f"host's (only kernel.msg*/sem/shm*, fs.mqueue.*, net.* and the UTS names are)")
    if not _owns(namespaces, kind):
        raise ConfigError(f"{where} needs a {kind} namespace of the container's own: "
                          f"without one it is the host's setting")
