"""Published ports and the bridge's NAT, as nftables rules (the `nft` command, nft(8)).

One table per bridge, named after it (`ip pykvm0`), in the bridge's network namespace,
made with the bridge:

    table ip pykvm0 {
        map published {                       # (protocol, host port) -> (address, port)
            type inet_proto . inet_service : ipv4_addr . inet_service
        }
        chain prerouting {                     # packets arriving from outside or a container
            type nat hook prerouting priority dstnat; policy accept;
            fib daddr type local dnat ip to meta l4proto . th dport map @published
        }
        chain output {                         # packets from this host's own processes
            type nat hook output priority -100; policy accept;
            fib daddr type local dnat ip to meta l4proto . th dport map @published
        }
        chain postrouting {
            type nat hook postrouting priority srcnat; policy accept;
            ip saddr SUBNET ip daddr != SUBNET masquerade
            ct status dnat ip saddr { 127.0.0.0/8, SUBNET } ip daddr SUBNET masquerade
        }
    }

DNAT: a packet to any of the host's own addresses (`fib daddr type local`) whose
protocol and port are in the map gets its destination rewritten to the
container's address and port; conntrack rewrites the replies back.  The same
rule in `output` catches the host's own connections, which never pass prerouting.

The two masquerades:
  * outbound: a container's packet leaving the subnet leaves with the host's address;
  * hairpin and localhost: a connection that was DNATed to a container from a
    container on the same bridge would be answered directly (same subnet), past
    the conntrack entry that must undo the DNAT, so its source becomes the
    gateway.  A connection to 127.0.0.1:HOSTPORT from the host has a loopback
    source, which may not leave `lo` (a "martian") unless the bridge has
    route_localnet=1 (network.py sets it); it too leaves with the gateway's address.

A publication is one map element, added with `nft create element` (an error if
that host port is already in the map) and removed by its key: no rule handles
to remember.  Docker and Podman keep the same design in iptables or nftables;
iptables.py writes the same rules where the host has iptables and no nft (nat.py chooses).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass

from pykvm.errors import ConfigError, ContainerError

__all__ = ["Publish", "parse_publish", "ruleset", "has_table", "create_table",
           "delete_table", "add_port", "remove_port", "published", "nft_available", "available"]

MAP = "published"
PROTOCOLS = ("tcp", "udp")
PORT_MAX = 65535
PUBLISH_RE = re.compile(r"^(\d+):(\d+)(?:/(\w+))?$")
NFT_TIMEOUT = 10.0                     # seconds for one `nft` run


@dataclass(frozen=True)
class Publish:
    """-p HOSTPORT:CONTAINERPORT[/PROTO]: one published port."""

    host_port: int
    container_port: int
    protocol: str = "tcp"

    @property
    def key(self) -> str:
        """How a lease records it: `tcp/8080:80` (host side first)."""
        return f"{self.protocol}/{self.host_port}:{self.container_port}"

    @classmethod
    def from_key(cls, key: str) -> Publish:
        proto, _, ports = key.partition("/")
        host, _, inside = ports.partition(":")
        return cls(int(host), int(inside), proto)


def parse_publish(spec: str) -> Publish:
    """`8080:80`, `5353:53/udp` -> Publish; anything else is one ConfigError."""
    match = PUBLISH_RE.match(spec)
    if not match:
        raise ConfigError(f"bad -p {spec!r}: want HOSTPORT:CONTAINERPORT[/tcp|/udp], e.g. 8080:80")
    host, inside, proto = int(match[1]), int(match[2]), (match[3] or "tcp").lower()
    if proto not in PROTOCOLS:
        raise ConfigError(f"bad -p {spec!r}: protocol {proto!r} is not tcp or udp")
    for port in (host, inside):
        if not 1 <= port <= PORT_MAX:
            raise ConfigError(f"bad -p {spec!r}: port {port} is not in 1-{PORT_MAX}")
    return Publish(host, inside, proto)


def ruleset(table: str, subnet: str) -> str:
    """The table above, for the bridge's subnet (an `nft -f` script)."""
    return f"""table ip {table} {{
    map {MAP} {{
        type inet_proto . inet_service : ipv4_addr . inet_service
    }}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        fib daddr type local dnat ip to meta l4proto . th dport map @{MAP}
    }}
    chain output {{
        type nat hook output priority -100; policy accept;
        fib daddr type local dnat ip to meta l4proto . th dport map @{MAP}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {subnet} ip daddr != {subnet} masquerade
        ct status dnat ip saddr {{ 127.0.0.0/8, {subnet} }} ip daddr {subnet} masquerade
    }}
}}
"""


def nft_available() -> bool:
    return shutil.which("nft") is not None


available = nft_available              # the name nat.py's backends share


def has_table(table: str) -> bool:
    return _nft(["list", "table", "ip", table], check=False).returncode == 0


def create_table(table: str, subnet: str) -> None:
    _nft(["-f", "-"], stdin=ruleset(table, subnet))


def delete_table(table: str) -> None:
    if has_table(table):
        _nft(["delete", "table", "ip", table])


def add_port(table: str, publish: Publish, address: str) -> None:
    """Put one host port in the map: `nft create element` fails if it is already there."""
    element = f"{{ {publish.protocol} . {publish.host_port} : {address} . {publish.container_port} }}"
    r = _nft(["create", "element", "ip", table, MAP, element], check=False)
    if r.returncode != 0:
        if "File exists" in r.stderr:
            raise ConfigError(f"host port {publish.host_port}/{publish.protocol} is already "
                              f"published (nft map {table}/{MAP})")
        raise ContainerError(f"nft could not publish port {publish.host_port}: {r.stderr.strip()}")


def remove_port(table: str, publish: Publish) -> None:
    """Take one host port out of the map (no error if it is not there)."""
    _nft(["delete", "element", "ip", table, MAP, f"{{ {publish.protocol} . {publish.host_port} }}"],
         check=False)


# nft names a protocol from /etc/protocols, and prints its number where that file is missing
# (a minimal root file system): IANA's numbers for the two -p knows.
PROTOCOL_NAMES = {6: "tcp", 17: "udp"}


def published(table: str) -> list[tuple[str, int, str]]:
    """The map's elements as (protocol, host port, "address:port"): what `network ls` shows."""
    r = _nft(["-j", "list", "map", "ip", table, MAP], check=False)
    if r.returncode != 0:
        return []
    out = []
    for item in json.loads(r.stdout).get("nftables", []):
        for elem in item.get("map", {}).get("elem", []):
            key, value = elem
            proto, port = key["concat"]
            address, inside = value["concat"]
            out.append((PROTOCOL_NAMES.get(proto, proto), int(port), f"{address}:{inside}"))
    return out


def _nft(args: list[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    if not nft_available():
        raise ContainerError("the bridge network's NAT and -p need nft (Debian package nftables: "
                             "apt-get install nftables)")
    try:
        r = subprocess.run(["nft", *args], input=stdin, capture_output=True, text=True,
                           timeout=NFT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ContainerError(f"nft {' '.join(args)} did not finish in {NFT_TIMEOUT:.0f} s") from None
    if check and r.returncode != 0:
        raise ContainerError(f"nft {' '.join(args)} failed: {r.stderr.strip()}")
    return r
