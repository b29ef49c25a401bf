"""/etc/hostname, /etc/hosts and /etc/resolv.conf: the three files Docker gives each container.

An image's own copies cannot know the container's hostname or the host's DNS
servers, so Docker writes one file of each per container (in the container's
directory, outside the rootfs) and bind-mounts them over the image's
(moby daemon/container_operations_unix.go, libnetwork/etchosts and
libnetwork/resolvconf).  `pykvm container run` does the same:

    file              format          --network none                  --network host
    /etc/hostname     hostname(5)     the container's hostname        the same
    /etc/hosts        hosts(5)        localhost entries only          a copy of the host's
    /etc/resolv.conf  resolv.conf(5)  the host's, without loopback    a copy of the host's
                                      nameservers (127.0.0.0/8, ::1:
                                      unreachable from another
                                      network namespace)

With --network bridge, /etc/hosts starts as for none and network.py then adds a
line for every container on the bridge (rewriting the file in place as they come
and go); resolv.conf is as for none.

The binds are read-write, as Docker's, and stay so under --read-only (only the
root mount is made read-only).  OCI bundles get none of this: runc leaves /etc
alone, and so do we.
"""
from __future__ import annotations

import os

from pykvm.container.runtime.rootfs import Mount, secure_join

__all__ = ["LOCALHOST_HOSTS", "write_etc_files", "hosts_file", "resolv_conf"]

# What Docker writes for a container with no network but loopback (libnetwork/etchosts).
LOCALHOST_HOSTS = ("127.0.0.1\tlocalhost\n"
                   "::1\tlocalhost ip6-localhost ip6-loopback\n"
                   "fe00::0\tip6-localnet\n"
                   "ff00::0\tip6-mcastprefix\n"
                   "ff02::1\tip6-allnodes\n"
                   "ff02::2\tip6-allrouters\n")
HOST_HOSTS = "/etc/hosts"
HOST_RESOLV_CONF = "/etc/resolv.conf"


def hosts_file(host_network: bool, host_hosts: str = HOST_HOSTS) -> str:
    """hosts(5) for the container: the host's with its network, else localhost entries only."""
    return _read(host_hosts) if host_network else LOCALHOST_HOSTS


def resolv_conf(host_network: bool, host_resolv: str = HOST_RESOLV_CONF) -> str:
    """resolv.conf(5): the host's; in a network namespace of its own, without loopback servers."""
    text = _read(host_resolv)
    if host_network:
        return text
    return "".join(line for line in text.splitlines(keepends=True) if not _loopback_nameserver(line))


def write_etc_files(directory: str, hostname: str | None, host_network: bool,
                    rootfs: str | None = None) -> list[Mount]:
    """Write the three files into `directory`; returns the bind mounts that put them in /etc.

    `rootfs`: a prepared directory (None for an overlay, whose upper layer takes new files);
    a file whose mount point is missing there and cannot be made by us (rootless, a rootfs
    we do not own) is left out, as the image's own file then stays.
    """
    contents = {"hosts": hosts_file(host_network), "resolv.conf": resolv_conf(host_network)}
    if hostname is not None:
        contents["hostname"] = hostname + "\n"
    mounts = []
    for name, text in contents.items():
        if rootfs is not None and not _can_mount_on(rootfs, f"/etc/{name}"):
            continue
        path = os.path.join(directory, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o644)
        mounts.append(Mount(f"/etc/{name}", "bind", path, ["rbind", "rprivate"]))
    return mounts


def _can_mount_on(rootfs: str, dest: str) -> bool:
    """The mount point exists, or the nearest existing directory above it is writable."""
    path = secure_join(rootfs, dest)
    if os.path.lexists(path):
        return True
    parent = os.path.dirname(path)
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    return os.access(parent, os.W_OK)


def _loopback_nameserver(line: str) -> bool:
    """`nameserver 127.0.0.53` (systemd-resolved), `nameserver ::1`: the host's own loopback."""
    fields = line.split()
    return len(fields) >= 2 and fields[0] == "nameserver" and \
        (fields[1].startswith("127.") or fields[1].split("%")[0] in ("::1", "0:0:0:0:0:0:0:1"))


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""
