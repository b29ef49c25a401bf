"""A tap device: the host's end of a guest's network cable.

Kernel documentation: Documentation/networking/tuntap.rst.  Opening
/dev/net/tun and asking TUNSETIFF for IFF_TAP makes a network interface
(`ip link` shows it) whose other side is this file descriptor: every
Ethernet frame the host's network stack sends out of the interface is one
read(2) here, and every write(2) of a frame here arrives at the host as if
it came in on a cable.  IFF_NO_PI: the frames come bare, without the 4-byte
packet-information prefix.

    host network stack  <-->  tap interface (e.g. pkt1a2b3c)  <-->  fd  <-->  virtio-net
    (bridge, ip, ping)          (ip link, tcpdump -i)                 (pykvm)    (the guest)

A tap made here is not persistent (no TUNSETPERSIST): it lives as long as
its file descriptor, so when pykvm exits, even by kill -9, the kernel deletes
the interface.  A tap made beforehand with `ip tuntap add NAME mode tap` is
persistent: TUNSETIFF attaches to it, and it stays after pykvm (QEMU's
`-netdev tap,ifname=NAME,script=no`).
"""
from __future__ import annotations

import errno
import fcntl
import os
import struct

from pykvm.errors import ConfigError

__all__ = ["Tap", "valid_ifname", "TUNSETIFF", "IFF_TAP", "IFF_NO_PI", "MAX_FRAME"]

TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA                 # <linux/if_tun.h>: _IOW('T', 202, int)
IFF_TAP = 0x0002                       # an Ethernet (layer 2) device, not IFF_TUN (layer 3)
IFF_NO_PI = 0x1000                     # frames without struct tun_pi in front
IFNAMSIZ = 16                          # <linux/if.h>: 15 characters and a NUL
IFREQ = struct.Struct(f"{IFNAMSIZ}sH22x")   # struct ifreq: ifr_name, ifr_flags, the union's rest
MAX_FRAME = 65550                      # bytes of one frame, at most: 14 + a 64 KiB packet, rounded up


def valid_ifname(name: str) -> bool:
    """The kernel's dev_valid_name(): 1-15 bytes, not . or .., no / : or white space."""
    return (0 < len(name.encode()) < IFNAMSIZ and name not in (".", "..")
            and not any(c in "/:" or c.isspace() for c in name))


class Tap:
    """An open tap device: read() and write() move whole Ethernet frames.

    Built from any file descriptor that keeps frame boundaries (a tap's, or
    in tests one end of a socketpair(SOCK_DGRAM)); `Tap.open(name)` makes or
    attaches to the tap interface `name`.
    """

    def __init__(self, fd: int, name: str):
        self.fd, self.name = fd, name
        os.set_blocking(fd, False)

    @classmethod
    def open(cls, name: str) -> Tap:
        """TUNSETIFF(IFF_TAP | IFF_NO_PI): the tap `name`, made now or already there."""
        if not valid_ifname(name):
            raise ConfigError(f"tap {name!r}: an interface name is 1-15 characters, without / : "
                              f"or spaces")
        try:
            fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ConfigError(f"{TUN_DEVICE} does not exist: load the tun module "
                              f"(`modprobe tun`)") from None
        except PermissionError:
            raise ConfigError(f"{TUN_DEVICE}: permission denied (a tap needs root, or "
                              f"CAP_NET_ADMIN)") from None
        try:
            fcntl.ioctl(fd, TUNSETIFF, IFREQ.pack(name.encode(), IFF_TAP | IFF_NO_PI))
        except OSError as e:
            os.close(fd)
            raise ConfigError(f"tap {name}: {_why(e)}") from None
        return cls(fd, name)

    def fileno(self) -> int:
        return self.fd

    def read(self) -> bytes | None:
        """The next frame the host sent, or None if none is waiting."""
        try:
            return os.read(self.fd, MAX_FRAME)
        except BlockingIOError:
            return None

    def write(self, frame: bytes) -> None:
        """Send one frame to the host (OSError if the host does not take it)."""
        os.write(self.fd, frame)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _why(e: OSError) -> str:
    """TUNSETIFF's errors, in words (drivers/net/tun.c, tun_set_iff)."""
    if e.errno == errno.EBUSY:
        return "in use by another process (a tap has one reader, unless multi-queue)"
    if e.errno == errno.EPERM:
        return "permission denied (making or attaching a tap needs CAP_NET_ADMIN or its owner)"
    if e.errno == errno.EINVAL:
        return "an interface of that name exists and is not a tap"
    return e.strerror or str(e)
