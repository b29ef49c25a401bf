"""Published ports and the bridge's NAT, as iptables rules (iptables(8), iptables-extensions(8)):
the same rules as nftables.py, for a host that has `iptables` and no `nft`.

Two chains per bridge in the `nat` table, named after it, jumped to from the built-in
chains (Docker keeps the same shape: DOCKER and POSTROUTING rules per bridge):

    -N PYKVM-pykvm0                       # the published ports: one DNAT rule each
    -N PYKVM-pykvm0-POST                  # the masquerades
    -A PREROUTING  -m addrtype --dst-type LOCAL -j PYKVM-pykvm0    # from outside or a container
    -A OUTPUT      -m addrtype --dst-type LOCAL -j PYKVM-pykvm0    # from this host's processes
    -A POSTROUTING -j PYKVM-pykvm0-POST
    -A PYKVM-pykvm0 -p tcp --dport 8080 -j DNAT --to-destination 10.213.0.2:80
    -A PYKVM-pykvm0-POST -s SUBNET ! -d SUBNET -j MASQUERADE
    -A PYKVM-pykvm0-POST -s 127.0.0.0/8 -d SUBNET -m conntrack --ctstate DNAT -j MASQUERADE
    -A PYKVM-pykvm0-POST -s SUBNET -d SUBNET -m conntrack --ctstate DNAT -j MASQUERADE

`-m addrtype --dst-type LOCAL` is nft's `fib daddr type local`; the DNAT rule per port is
one element of nft's map; the masquerades are the same three cases (outbound, localhost
with route_localnet=1 on the bridge, hairpin), explained in nftables.py.

A publication is one rule, found again by its protocol and host port in `iptables -S`
(the rules as the command lines that make them): `-D` with that line removes it.
Debian's `iptables` is iptables-nft, which writes these rules into nftables tables of
its own (`ip nat`); iptables-legacy writes them to the kernel's older x_tables: both work.
"""
from __future__ import annotations

import re
import shutil
import subprocess

from pykvm.container.runtime.nftables import Publish
from pykvm.errors import ConfigError, ContainerError

__all__ = ["available", "has_table", "create_table", "delete_table", "add_port", "remove_port",
           "published", "rules"]

IPTABLES_TIMEOUT = 10.0                # seconds for one `iptables` run
LOCAL = ["-m", "addrtype", "--dst-type", "LOCAL"]
HOOKS = ("PREROUTING", "OUTPUT")       # built-in chains that jump to the DNAT chain
DNAT_RE = re.compile(r"^-A \S+ -p (\w+) -m \w+ --dport (\d+) -j DNAT --to-destination (\S+)$")


def dnat_chain(table: str) -> str:
    return f"PYKVM-{table}"            # bridge names are <= 15 characters, chains <= 28


def post_chain(table: str) -> str:
    return f"PYKVM-{table}-POST"


def rules(table: str, subnet: str) -> list[list[str]]:
    """The iptables argument lists that make the chains above (after `-N` of both)."""
    dnat, post = dnat_chain(table), post_chain(table)
    return [*(["-A", hook, *LOCAL, "-j", dnat] for hook in HOOKS),
            ["-A", "POSTROUTING", "-j", post],
            ["-A", post, "-s", subnet, "!", "-d", subnet, "-j", "MASQUERADE"],
            *(["-A", post, "-s", source, "-d", subnet, "-m", "conntrack", "--ctstate", "DNAT",
               "-j", "MASQUERADE"] for source in ("127.0.0.0/8", subnet))]


def available() -> bool:
    return shutil.which("iptables") is not None


def has_table(table: str) -> bool:
    return _iptables(["-S", dnat_chain(table)], check=False).returncode == 0


def create_table(table: str, subnet: str) -> None:
    for chain in (dnat_chain(table), post_chain(table)):
        _iptables(["-N", chain])
    for args in rules(table, subnet):
        _iptables(args)


def delete_table(table: str) -> None:
    """Remove the jumps to our chains, then the chains (what is there of them)."""
    dnat, post = dnat_chain(table), post_chain(table)
    for hook, args in [*((h, [*LOCAL, "-j", dnat]) for h in HOOKS), ("POSTROUTING", ["-j", post])]:
        while _iptables(["-D", hook, *args], check=False).returncode == 0:
            pass                       # each -D removes one copy; it fails once none is left
    for chain in (dnat, post):
        if _iptables(["-F", chain], check=False).returncode == 0:
            _iptables(["-X", chain])


def add_port(table: str, publish: Publish, address: str) -> None:
    """One DNAT rule for the host port; an error if that port already has one."""
    if any((proto, port) == (publish.protocol, publish.host_port)
           for proto, port, _ in published(table)):
        raise ConfigError(f"host port {publish.host_port}/{publish.protocol} is already "
                          f"published (iptables chain {dnat_chain(table)})")
    r = _iptables(["-A", dnat_chain(table), "-p", publish.protocol, "--dport", str(publish.host_port),
                   "-j", "DNAT", "--to-destination", f"{address}:{publish.container_port}"],
                  check=False)
    if r.returncode != 0:
        raise ContainerError(f"iptables could not publish port {publish.host_port}: {r.stderr.strip()}")


def remove_port(table: str, publish: Publish) -> None:
    """Delete the host port's DNAT rule (no error if it is not there)."""
    for line in _dnat_lines(table):
        match = DNAT_RE.match(line)
        if match and (match[1], int(match[2])) == (publish.protocol, publish.host_port):
            _iptables(["-D", *line.split()[1:]], check=False)


def published(table: str) -> list[tuple[str, int, str]]:
    """The DNAT rules as (protocol, host port, "address:port"): what `network ls` shows."""
    out = []
    for line in _dnat_lines(table):
        match = DNAT_RE.match(line)
        if match:
            out.append((match[1], int(match[2]), match[3]))
    return out


def _dnat_lines(table: str) -> list[str]:
    r = _iptables(["-S", dnat_chain(table)], check=False)
    return r.stdout.splitlines() if r.returncode == 0 else []


def _iptables(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    if not available():
        raise ContainerError("the bridge network's NAT and -p need nft or iptables (Debian "
                             "package nftables or iptables)")
    argv = ["iptables", "-w", "-t", "nat", *args]       # -w: wait for the xtables lock
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=IPTABLES_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ContainerError(f"{' '.join(argv)} did not finish in {IPTABLES_TIMEOUT:.0f} s") from None
    if check and r.returncode != 0:
        raise ContainerError(f"{' '.join(argv)} failed: {r.stderr.strip()}")
    return r
