"""Linux namespaces: what a container's processes can see.

namespaces(7): each namespace wraps one global resource so that the
processes inside have their own copy of it.

    OCI type   clone flag         what is private inside
    pid        CLONE_NEWPID       process IDs: the first child is PID 1
    mount      CLONE_NEWNS        the mount table (so pivot_root moves only us)
    uts        CLONE_NEWUTS       hostname and NIS domain name
    ipc        CLONE_NEWIPC       System V IPC, POSIX message queues
    network    CLONE_NEWNET       interfaces, routes, ports: a new one has only `lo`, down
    cgroup     CLONE_NEWCGROUP    the view of /proc/self/cgroup: our cgroup becomes "/"
    user       CLONE_NEWUSER      UIDs/GIDs and capabilities: root inside, nobody special outside

unshare(2) moves the caller into new namespaces (for pid: its *next child*);
setns(2) joins an existing one through a /proc/PID/ns/* file.  The OCI runtime
spec names them in config.json's linux.namespaces (runtime-spec config-linux.md
"Namespaces").
"""
from __future__ import annotations

import os
import re
from collections import namedtuple

from pykvm.container.runtime.syscalls import check, ffi, lib
from pykvm.errors import ConfigError

__all__ = ["CLONE_FLAGS", "ORDER", "PROC_NAMES", "IdMap", "flags_for", "unshare", "setns", "open_other",
           "write_id_maps", "loopback_up", "check_hostname", "HOST_NAME_MAX", "namespace_id",
           "in_user_namespace",
           "setgroups_denied"]

# OCI namespace type -> clone(2) flag (runtime-spec config-linux.md "Namespaces").
CLONE_FLAGS = {
    "pid": lib.CLONE_NEWPID,
    "network": lib.CLONE_NEWNET,
    "mount": lib.CLONE_NEWNS,
    "ipc": lib.CLONE_NEWIPC,
    "uts": lib.CLONE_NEWUTS,
    "user": lib.CLONE_NEWUSER,
    "cgroup": lib.CLONE_NEWCGROUP,
}

# The order namespaces must be entered in: user first, since it owns the
# others (creating them needs CAP_SYS_ADMIN *in* the owning user namespace).
ORDER = ("user", "pid", "network", "ipc", "uts", "cgroup", "mount")

# OCI namespace type -> its file in /proc/PID/ns/ (namespaces(7) "The /proc/[pid]/ns/ directory").
PROC_NAMES = {"pid": "pid", "network": "net", "mount": "mnt", "ipc": "ipc", "uts": "uts",
              "user": "user", "cgroup": "cgroup"}

HOST_NAME_MAX = 64                # limits.h, sethostname(2): a longer name is EINVAL
LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")   # RFC 1123 2.1: one label


class IdMap(namedtuple("IdMap", "inside outside count", defaults=(1,))):
    """One line of /proc/PID/uid_map: `inside outside count` (user_namespaces(7)).

    A named tuple, not a dataclass: `pykvm-runc delete` imports this module, and
    dataclasses' import of inspect would cost each call ~8 ms."""

    __slots__ = ()

    def line(self) -> str:
        return f"{self.inside} {self.outside} {self.count}\n"


def check_hostname(name: str, rfc1123: bool = True) -> str:
    """A hostname sethostname(2) takes: at most HOST_NAME_MAX bytes; with `rfc1123`, also
    dot-separated labels of letters, digits and inner hyphens, 1-63 each (RFC 1123 2.1).

    The kernel checks only the length; `pykvm container run --hostname` checks the
    labels too, while config.json (whose runc takes any bytes) gets the length check.
    """
    size = len(name.encode())
    if size > HOST_NAME_MAX:
        raise ConfigError(f"hostname {name[:20]!r}... is {size} bytes: at most {HOST_NAME_MAX} (HOST_NAME_MAX)")
    if rfc1123 and not all(LABEL_RE.match(label) for label in name.split(".")):
        raise ConfigError(f"bad hostname {name!r}: use labels of letters, digits and hyphens "
                          f"(not at either end), separated by dots (RFC 1123)")
    return name


def flags_for(kinds) -> int:
    """The clone(2) flags for a list of OCI namespace types; an unknown type is a ConfigError."""
    flags = 0
    for kind in kinds:
        if kind not in CLONE_FLAGS:
            raise ConfigError(f"unknown namespace type {kind!r} (known: {', '.join(CLONE_FLAGS)})")
        flags |= CLONE_FLAGS[kind]
    return flags


def unshare(flags: int) -> None:
    """Wraps unshare(2): move this process into new namespaces."""
    if flags:
        check(lib.unshare(flags), "unshare", f"flags {flags:#x}")


def setns(target: str | int, kind: str) -> None:
    """Wraps setns(2): join the namespace behind a /proc/PID/ns/* file (a path or an open fd)."""
    if isinstance(target, int):
        check(lib.setns(target, CLONE_FLAGS[kind]), "setns", f"{kind} namespace")
        return
    fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    try:
        check(lib.setns(fd, CLONE_FLAGS[kind]), "setns", target)
    finally:
        os.close(fd)


def open_other(pid: int) -> list[tuple[str, int]]:
    """(type, fd) for each namespace of process `pid` that is not also ours, in ORDER.

    All are opened before any is joined: after setns(mount) the host's /proc
    is out of sight.  Ours are skipped, as nsenter(1) does: a `--network host`
    container shares our network namespace, and setns(2) into our own user
    namespace is EINVAL.  Two ns files are the same namespace when their
    device and inode numbers are (namespaces(7)).
    """
    found = []
    try:
        for kind in ORDER:
            fd = os.open(f"/proc/{pid}/ns/{PROC_NAMES[kind]}", os.O_RDONLY | os.O_CLOEXEC)
            theirs, ours = os.fstat(fd), os.stat(f"/proc/self/ns/{PROC_NAMES[kind]}")
            if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
                os.close(fd)
            else:
                found.append((kind, fd))
    except BaseException:
        for _, fd in found:
            os.close(fd)
        raise
    return found


def namespace_id(pid: int, kind: str = "pid") -> tuple[int, int] | None:
    """(device, inode) of a process's namespace, which names it (namespaces(7)); None if
    the process is gone or its /proc/PID/ns is closed to us."""
    try:
        st = os.stat(f"/proc/{pid}/ns/{PROC_NAMES[kind]}")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def in_user_namespace() -> bool:
    """Is this process in a user namespace other than the host's?  The initial one maps
    all 2^32 ids onto themselves (user_namespaces(7) "The initial user namespace"), the
    test runc's userns.RunningInUserNS makes.  Rootless Podman runs its runtime so: euid
    0, with capabilities over its own namespaces but none over the host's cgroups."""
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() != ["0", "0", "4294967295"]
    except FileNotFoundError:                   # a kernel without user namespaces
        return False


def setgroups_denied() -> bool | None:
    """Does this process's user namespace deny setgroups(2)?  It does when its gid_map was
    written without privilege (/proc/self/setgroups says "deny", user_namespaces(7)).  None
    where /proc/self cannot tell: in a mount namespace whose /proc is another PID
    namespace's, where a process that only joined the container's namespaces is not."""
    try:
        with open("/proc/self/setgroups") as f:
            return f.read().strip() == "deny"
    except OSError:
        return None


def write_id_maps(pid: int | str, uid_maps: list[IdMap], gid_maps: list[IdMap]) -> None:
    """Write uid_map and gid_map of a process in a new user namespace.

    user_namespaces(7): an unprivileged writer may map only its own IDs, and
    must first write "deny" to setgroups (else it could drop supplementary
    groups that were denying it access: CVE-2014-8989).
    """
    proc = f"/proc/{pid}"
    if os.geteuid() != 0:
        _write(f"{proc}/setgroups", "deny")
    _write(f"{proc}/uid_map", "".join(m.line() for m in uid_maps))
    _write(f"{proc}/gid_map", "".join(m.line() for m in gid_maps))


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def loopback_up() -> None:
    """Bring `lo` up in this (new) network namespace: SIOCSIFFLAGS with IFF_UP (netdevice(7))."""
    sock = check(lib.socket(lib.AF_INET, lib.SOCK_DGRAM | lib.SOCK_CLOEXEC, 0), "socket")
    try:
        ifr = ffi.new("struct ifreq *")
        ifr.ifr_name = b"lo"
        check(lib.ioctl_ptr(sock, lib.SIOCGIFFLAGS, ifr), "ioctl", "SIOCGIFFLAGS lo")
        lib.ifreq_set_flags(ifr, lib.ifreq_get_flags(ifr) | lib.IFF_UP | lib.IFF_RUNNING)
        check(lib.ioctl_ptr(sock, lib.SIOCSIFFLAGS, ifr), "ioctl", "SIOCSIFFLAGS lo")
    finally:
        os.close(sock)

