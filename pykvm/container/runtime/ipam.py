"""IPAM (IP address management): which container holds which address and host port.

One JSON file, `leases.json`, in the network's directory, read and written only
while holding an flock(2) on `lock` beside it, so two `pykvm container run` at
the same moment never hand out the same address or host port (Podman's
netavark keeps its IPAM the same way: a JSON database behind a lock file).

    {"last": "10.213.0.2",
     "leases": {"10.213.0.2": {"id": "4f0c...", "name": "web", "hostname": "4f0c...",
                               "hosts": "/run/pykvm/containers/4f0c.../hosts",
                               "ports": ["tcp/8080:80"], "launcher": 1234, "launcher_start": 987}}}

Addresses are handed out in turn, from the one after the last handed out, wrapping
around at the end of the subnet (libnetwork's IPAM does the same), skipping the
network's own address, the gateway (the bridge's address) and the broadcast address.
Not lowest-free: the other containers' ARP caches keep an address's MAC for a while
after its container is gone, and a new container given that address at once would be
unreachable from them until their entries expire.  A lease outlives a
crash of everything that knew of it; network.py's sweep gives it back when its
container is gone (network.stale).
"""
from __future__ import annotations

import errno
import fcntl
import ipaddress
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from pykvm.errors import ConfigError, ContainerError

__all__ = ["Leases", "locked", "LOCK_TIMEOUT"]

LOCK_TIMEOUT = 10.0          # seconds: another pykvm holds the lock for a few ms only
LOCK_POLL = 0.01             # seconds between tries


@contextmanager
def locked(directory: Path):
    """Hold an exclusive flock(2) on DIRECTORY/lock (bounded wait: LOCK_TIMEOUT)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN) or time.monotonic() > deadline:
                    raise ContainerError(f"the network state in {directory} stayed locked for "
                                         f"{LOCK_TIMEOUT:.0f} s: is another pykvm stuck?") from None
                time.sleep(LOCK_POLL)
        yield
    finally:
        os.close(fd)                          # closing the fd drops the lock


class Leases:
    """leases.json: address -> lease record.  Use only inside `locked(directory)`."""

    def __init__(self, directory: Path, subnet: str, gateway: str):
        self.path = directory / "leases.json"
        self.subnet = ipaddress.IPv4Network(subnet)
        self.gateway = ipaddress.IPv4Address(gateway)
        data = self._read()
        self.records: dict[str, dict] = data.get("leases", {})
        self.last = data.get("last", str(self.gateway))

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            raise ContainerError(f"{self.path} is not JSON: remove it with "
                                 f"`pykvm container network rm`") from None

    def save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"last": self.last, "leases": self.records}, indent=1))
        os.replace(tmp, self.path)

    def allocate(self, record: dict) -> str:
        """The next free address after the last one handed out; ContainerError when full."""
        first = int(self.subnet.network_address) + 1            # .0 names the network
        count = self.subnet.num_addresses - 2                    # ... and the last is broadcast
        start = int(ipaddress.IPv4Address(self.last)) - first + 1
        for step in range(count):
            address = str(ipaddress.IPv4Address(first + (start + step) % count))
            if address != str(self.gateway) and address not in self.records:
                self.records[address] = record
                self.last = address
                return address
        raise ContainerError(f"no free address left in {self.subnet}: remove stopped containers "
                             f"or run `pykvm container network prune`")

    def of(self, cid: str) -> str | None:
        """The address leased to container `cid`, or None."""
        return next((a for a, r in self.records.items() if r["id"] == cid), None)

    def release(self, address: str) -> dict:
        return self.records.pop(address)

    def check_ports_free(self, ports: list[str]) -> None:
        """A host port (`tcp/8080`) is published by one container at a time."""
        for port in ports:
            host = port.split(":")[0]
            for record in self.records.values():
                if any(p.split(":")[0] == host for p in record.get("ports", [])):
                    proto, number = host.split("/")
                    raise ConfigError(f"host port {number}/{proto} is already published by "
                                      f"container {record['name']} ({record['id']}): choose "
                                      f"another -p HOSTPORT or stop that container")
