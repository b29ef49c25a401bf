"""The bridge network: a Linux bridge, a veth pair per container, addresses and routes.

    host (the namespace pykvm runs in)              container (its own network namespace)
    ----------------------------------              -------------------------------------
    pykvm0  bridge, 10.213.0.1/16 (the gateway)
      |-- pkv<id>  veth  ====== a cable ======>     eth0  10.213.0.2/16, default via 10.213.0.1
      |-- pkv<id>  veth  ======================>    eth0  10.213.0.3/16 ...
      `-- (a VM's tap joins the same way)
    nft table ip pykvm0 (named after the bridge): NAT out, DNAT in (nftables.py;
    iptables.py where the host has iptables and no nft; nat.py chooses)

A veth pair is two network devices joined back to back (veth(4)): what one sends,
the other receives.  One end stays on the host and becomes a port of the bridge (a
software switch, bridge(8)); the other is created straight inside the container's
namespace and named eth0.  The port is in hairpin mode (bridge(8) `hairpin`): a
container reaching its own published port has its packet DNATed back to itself, and
where br_netfilter is loaded that happens on the bridge, which must then send the
frame out of the port it came in by (Docker and Podman set it too).  When the container's namespace dies (its last process
exits) the kernel destroys eth0 and with it the host end: a crash leaves no veth.
What a crash does leave, an address lease and a published port, `sweep` gives back.

A VM joins the same bridge with a tap device in place of the veth: `reserve_vm()` leases
its address as for a container, the VMM makes the tap (pykvm.vm.devices.virtio.tap),
`plug_tap()` makes it a port of the bridge, and the guest sets the leased address on its
side itself (`ip=` on the kernel command line).  A VM's lease is judged by the VMM's
process (its pid and start time, recorded in the lease): the tap lives as long as that
process holds it open, so a killed VM leaves only its lease, which the next sweep gives
back.  The sweep also removes any port of our bridge no lease accounts for, veth or tap,
and a running VM's tap is in its lease: a container run never removes it.

Every change goes through iproute2's `ip` (ip-link(8), ip-address(8), ip-route(8)),
in batches (`ip -batch -`, one process for several lines), rather than rtnetlink
messages packed by hand: the commands are the ones a student types to do the same by
hand, and tcpdump/`ip` show the result in the same words.

Defaults in Podman's style (Podman: bridge `podman0`, 10.88.0.0/16; Docker: `docker0`,
172.17.0.0/16); another range is chosen with PYKVM_SUBNET, another bridge name with
PYKVM_BRIDGE, both read when the network is made and recorded in network.json.  The
bridge lives in the network namespace pykvm runs in: run pykvm under
`nsenter --net=/run/netns/NAME` to keep it in a namespace of its own (the tests do).

    /run/pykvm/network/            (beside the containers' state: state.state_root())
        network.json   bridge, subnet, gateway
        leases.json    address -> container, host ports (ipam.py)
        lock           flock(2)ed around every change
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from pykvm.container.runtime import ipam, nat
from pykvm.container.runtime import nftables as nft
from pykvm.container.runtime.etcfiles import LOCALHOST_HOSTS
from pykvm.container.runtime.state import StateStore, pid_alive, process_start_time, state_root
from pykvm.errors import ConfigError, ContainerError

__all__ = ["Network", "Lease", "DEFAULT_BRIDGE", "DEFAULT_SUBNET", "MODES", "default_mode",
           "network_dir", "veth_name", "tap_name", "reserve", "connect", "release", "sweep",
           "stale_leases", "reserve_vm", "plug_tap",
           "remove_network", "load_network", "recorded", "hosts_text", "link_exists"]

DEFAULT_BRIDGE = "pykvm0"
DEFAULT_SUBNET = "10.213.0.0/16"    # away from Docker's 172.17/16 and Podman's 10.88/16, 10.89.x/24
CONTAINER_IFNAME = "eth0"           # the container's end of its veth pair
VETH_PREFIX = "pkv"                 # the host's end: pkv + 12 hex digits of the id
TAP_PREFIX = "pkt"                  # a VM's tap: pkt + 12 hex digits of the VM's id
VM_KIND = "vm"                      # a lease record's "kind" for a VM (a container's has none)
IFNAMSIZ = 16                       # <linux/if.h>: 15 characters and a NUL
IP_TIMEOUT = 10.0                   # seconds for one `ip` or `nsenter` run
MODES = ("bridge", "none", "host")
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


def default_mode() -> str:
    """--network's default: $PYKVM_NETWORK, else `bridge` for root and `none` rootless.

    Rootless has no bridge: creating one, and a veth into the host's namespace, needs
    CAP_NET_ADMIN in the host's network namespace (Podman rootless uses a user-space
    stack, slirp4netns or pasta, instead).
    """
    mode = os.environ.get("PYKVM_NETWORK") or ("bridge" if os.geteuid() == 0 else "none")
    if mode not in MODES:
        raise ConfigError(f"PYKVM_NETWORK={mode!r}: want one of {', '.join(MODES)}")
    return mode


def network_dir() -> Path:
    """Beside the containers' directory: /run/pykvm/network for root (or under PYKVM_STATE_ROOT)."""
    return Path(state_root()).parent / "network"


def veth_name(cid: str) -> str:
    return f"{VETH_PREFIX}{cid[:IFNAMSIZ - 1 - len(VETH_PREFIX)]}"


def tap_name(vm_id: str) -> str:
    return f"{TAP_PREFIX}{vm_id[:IFNAMSIZ - 1 - len(TAP_PREFIX)]}"


@dataclass
class Network:
    """The bridge network's settings (network.json)."""

    bridge: str = DEFAULT_BRIDGE
    subnet: str = DEFAULT_SUBNET
    gateway: str = ""

    @classmethod
    def from_env(cls) -> Network:
        """PYKVM_BRIDGE and PYKVM_SUBNET, checked; the gateway is the subnet's first address."""
        bridge = os.environ.get("PYKVM_BRIDGE") or DEFAULT_BRIDGE
        if not IFNAME_RE.match(bridge):
            raise ConfigError(f"PYKVM_BRIDGE={bridge!r}: an interface name is 1-15 letters, "
                              f"digits, _ . -")
        text = os.environ.get("PYKVM_SUBNET") or DEFAULT_SUBNET
        try:
            subnet = ipaddress.IPv4Network(text)
        except ValueError as e:
            raise ConfigError(f"PYKVM_SUBNET={text!r}: {e} (want e.g. {DEFAULT_SUBNET})") from None
        if subnet.num_addresses < 4:
            raise ConfigError(f"PYKVM_SUBNET={text!r} is too small: want a /30 or larger")
        return cls(bridge, str(subnet), str(next(subnet.hosts())))

    @property
    def prefix(self) -> int:
        return ipaddress.IPv4Network(self.subnet).prefixlen

    def leases(self, directory: Path) -> ipam.Leases:
        return ipam.Leases(directory, self.subnet, self.gateway)


@dataclass
class Lease:
    """What a container holds on the network: an address, host ports, its veth's name."""

    id: str
    address: str
    network: Network
    ports: list[nft.Publish]

    @property
    def veth(self) -> str:
        return veth_name(self.id)

    @property
    def tap(self) -> str:
        return tap_name(self.id)

    @property
    def netmask(self) -> str:
        return str(ipaddress.IPv4Network(self.network.subnet).netmask)


# --- the launcher's three calls: reserve, connect, release ------------------------

def reserve(cid: str, name: str, hostname: str, ports: list[nft.Publish], hosts: str) -> Lease:
    """Before the container exists: make the bridge if needed, lease an address and the
    host ports (a port another container publishes is a ConfigError), write /etc/hosts."""
    directory = network_dir()
    with ipam.locked(directory):
        net = _ensure_network(directory)
        leases = net.leases(directory)
        _sweep(leases, net.bridge)
        keys = [p.key for p in ports]
        leases.check_ports_free(keys)
        record = {"id": cid, "name": name, "hostname": hostname, "hosts": hosts, "ports": keys,
                  "launcher": os.getpid(), "launcher_start": process_start_time(os.getpid())}
        address = leases.allocate(record)
        leases.save()
        _write_hosts_files(leases)
    return Lease(cid, address, net, list(ports))


def reserve_vm(vm_id: str, name: str) -> Lease:
    """A VM's address on the bridge (made if needed), leased while this process lives; its
    tap's name is tap_name(vm_id), recorded so that no sweep takes the tap away."""
    directory = network_dir()
    with ipam.locked(directory):
        net = _ensure_network(directory)
        leases = net.leases(directory)
        _sweep(leases, net.bridge)
        record = {"id": vm_id, "name": name, "hostname": name, "kind": VM_KIND,
                  "tap": tap_name(vm_id), "ports": [], "launcher": os.getpid(),
                  "launcher_start": process_start_time(os.getpid())}
        address = leases.allocate(record)
        leases.save()
        _write_hosts_files(leases)
    return Lease(vm_id, address, net, [])


def plug_tap(lease: Lease, tap: str) -> None:
    """The VM's tap (made by the VMM) becomes a port of the bridge, and up."""
    _ip([f"link set {tap} master {lease.network.bridge}", f"link set {tap} up"])


def connect(lease: Lease, pid: int) -> None:
    """Once process `pid` (the container's init) has its network namespace: the veth
    pair, its address and default route inside, its host ports in the DNAT map."""
    net = lease.network
    _ip([f"link add {lease.veth} type veth peer name {CONTAINER_IFNAME} netns {pid}",
         f"link set {lease.veth} master {net.bridge}",
         f"link set {lease.veth} type bridge_slave hairpin on",
         f"link set {lease.veth} up"])
    _ip([f"addr add {lease.address}/{net.prefix} dev {CONTAINER_IFNAME}",
         f"link set {CONTAINER_IFNAME} up",
         f"route add default via {net.gateway}"], netns_of=pid)
    for publish in lease.ports:
        nat.backend().add_port(net.bridge, publish, lease.address)


@contextmanager
def recorded():
    """The network and its leases, locked: (None, None) before the first bridge run."""
    directory = network_dir()
    if not (directory / "network.json").exists():
        yield None, None
        return
    with ipam.locked(directory):
        net = load_network(directory)
        yield net, net.leases(directory)


def release(cid: str) -> bool:
    """Give back container (or VM) `cid`'s address and host ports, and delete its veth (tap)
    if still there; the other containers' /etc/hosts lose its name.  False if it held nothing."""
    with recorded() as (net, leases):
        address = leases.of(cid) if leases else None
        if address is None:
            return False
        _release(leases, address, net.bridge)
        leases.save()
        _write_hosts_files(leases)
    return True


def _release(leases: ipam.Leases, address: str, table: str) -> dict:
    record = leases.release(address)
    for key in record.get("ports", []):
        nat.backend().remove_port(table, nft.Publish.from_key(key))
    _delete_link(record.get("tap") or veth_name(record["id"]))
    return record


# --- leftovers: after a crash of pykvm -------------------------------------------

def stale_leases(leases: ipam.Leases, store: StateStore | None = None) -> list[str]:
    """Addresses whose container is gone: no state, or stopped, or never started and its
    launcher dead (a kill -9 of every pykvm process leaves these); a VM's is stale when its
    VMM process is gone."""
    store = store or StateStore()
    stale = []
    for address, record in leases.records.items():
        if record.get("kind") == VM_KIND:
            if not pid_alive(record.get("launcher", 0), record.get("launcher_start", 0)):
                stale.append(address)
            continue
        try:
            state = store.load(record["id"])
        except ContainerError:
            stale.append(address)
            continue
        if state.pid:
            if store.status(state) == "stopped":
                stale.append(address)
        elif not pid_alive(record.get("launcher", 0), record.get("launcher_start", 0)):
            stale.append(address)
    return stale


def _sweep(leases: ipam.Leases, bridge: str, dry_run: bool = False) -> list[str]:
    """Release stale leases, then anything no lease accounts for: a DNAT map element, or
    a veth or tap on our bridge left by a pykvm killed between two steps.  Says what it did
    (with `dry_run`, what it would do, and does nothing)."""
    done = []
    verb = (lambda now, later: later) if dry_run else (lambda now, later: now)
    for address in stale_leases(leases):
        record = leases.records[address] if dry_run else _release(leases, address, bridge)
        done.append(f"{verb('released', 'stale lease')} {address} of {record['name']} ({record['id']}) "
                    f"{' '.join(record.get('ports', []))}".rstrip())
    if not dry_run:
        leases.save()
    held = {p.split(":")[0] for r in leases.records.values() for p in r.get("ports", [])}
    rules = nat.backend()
    if rules:
        for proto, port, target in rules.published(bridge):
            if f"{proto}/{port}" not in held:
                if not dry_run:
                    rules.remove_port(bridge, nft.Publish(port, port, proto))   # keyed by the host side
                done.append(f"{verb('removed', 'stray')} dnat {proto}/{port} -> {target}")
    ours = {r.get("tap") or veth_name(r["id"]) for r in leases.records.values()}
    for link in links(bridge):
        if link not in ours:
            if not dry_run:
                _delete_link(link)
            done.append(f"{verb('removed', 'stray')} {'tap' if link.startswith(TAP_PREFIX) else 'veth'} {link}")
    return done


def sweep(dry_run: bool = False) -> list[str]:
    """`network prune`: give back what containers that are gone still hold; says what
    (`dry_run`: only says what it would give back: `system check` without --repair)."""
    with recorded() as (net, leases):
        if net is None:
            return []
        released = _sweep(leases, net.bridge, dry_run)
        if not dry_run:
            _write_hosts_files(leases)
    return released


def remove_network(force: bool = False) -> Network | None:
    """`network rm`: delete the bridge, its NAT rules and the network's state.

    Refused while a running container is on it (unless `force`: their veths go too).
    """
    with recorded() as (net, leases):
        if net is None:
            return None
        _sweep(leases, net.bridge)
        if leases.records and not force:
            names = ", ".join(r["name"] for r in leases.records.values())
            raise ContainerError(f"containers or VMs still on the network: {names}: stop them first, "
                                 f"or `network rm --force`")
        for address in list(leases.records):
            _release(leases, address, net.bridge)
        _delete_link(net.bridge)
        if rules := nat.backend():
            rules.delete_table(net.bridge)
        for name in ("leases.json", "network.json"):
            (network_dir() / name).unlink(missing_ok=True)
    return net


def load_network(directory: Path | None = None) -> Network:
    directory = directory or network_dir()
    try:
        return Network(**json.loads((directory / "network.json").read_text()))
    except FileNotFoundError:
        raise ContainerError("no pykvm network yet: it is made by the first "
                             "`pykvm container run --network bridge`") from None
    except (ValueError, TypeError):
        raise ContainerError(f"{directory}/network.json is damaged: `pykvm container network rm`") from None


# --- the bridge ----------------------------------------------------------------

def _ensure_network(directory: Path) -> Network:
    """The recorded network, its bridge up and its NAT rules there (made on first use)."""
    path = directory / "network.json"
    net = load_network(directory) if path.exists() else _new_network()
    if not link_exists(net.bridge):
        _ip([f"link add {net.bridge} type bridge",
             f"addr add {net.gateway}/{net.prefix} dev {net.bridge}",
             f"link set {net.bridge} up"])
    _enable_routing(net.bridge)
    rules = nat.backend()
    if rules and not rules.has_table(net.bridge):
        rules.create_table(net.bridge, net.subnet)
    if not path.exists():
        path.write_text(json.dumps(asdict(net), indent=1))
    return net


def _new_network() -> Network:
    """Settings for a network not made yet; its bridge must not exist (else it is not ours:
    another state directory's, PYKVM_STATE_ROOT, or a bridge of the host's own)."""
    net = Network.from_env()
    if link_exists(net.bridge):
        raise ContainerError(f"an interface {net.bridge} exists, but {network_dir()} has no record of "
                             f"making it: choose another bridge with PYKVM_BRIDGE, or remove it "
                             f"(`ip link delete {net.bridge}`) if it is a pykvm leftover")
    if rules := nat.backend():
        rules.delete_table(net.bridge)            # a leftover of a `network rm` cut short
    return net


def _enable_routing(bridge: str) -> None:
    """ip-sysctl.rst: ip_forward lets packets cross from the bridge to other interfaces
    (and back, for a hairpin DNAT); route_localnet lets a DNATed 127.0.0.1 connection
    leave through the bridge (see nftables.py).  Both are per network namespace."""
    for path in ("/proc/sys/net/ipv4/ip_forward", f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet"):
        with open(path, "w") as f:
            f.write("1\n")


def link_exists(name: str) -> bool:
    return _run(["ip", "link", "show", "dev", name], check=False).returncode == 0


def links(bridge: str) -> list[str]:
    """Our veths and taps on `bridge`: the ports of the bridge named pkv... or pkt...
    (`ip -j link show master`)."""
    r = _run(["ip", "-j", "link", "show", "master", bridge], check=False)
    if r.returncode != 0:
        return []
    return [link["ifname"] for link in json.loads(r.stdout or "[]")
            if link["ifname"].startswith((VETH_PREFIX, TAP_PREFIX))]


def _delete_link(name: str) -> None:
    if link_exists(name):
        _run(["ip", "link", "delete", "dev", name], check=False)


def _ip(lines: list[str], netns_of: int | None = None) -> None:
    """`ip -batch -` with these lines; inside the network namespace of process `netns_of`."""
    argv = ["ip", "-batch", "-"]
    if netns_of is not None:
        argv = ["nsenter", f"--net=/proc/{netns_of}/ns/net", "--"] + argv
    _run(argv, stdin="\n".join(lines) + "\n")


def _run(argv: list[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=IP_TIMEOUT)
    except FileNotFoundError:
        raise ContainerError(f"{argv[0]} not found: the bridge network needs iproute2 "
                             f"(apt-get install iproute2)") from None
    except subprocess.TimeoutExpired:
        raise ContainerError(f"{' '.join(argv)} did not finish in {IP_TIMEOUT:.0f} s") from None
    if check and r.returncode != 0:
        raise ContainerError(f"{' '.join(argv)} failed: {r.stderr.strip()}"
                             + (f" (input: {stdin.strip()!r})" if stdin else ""))
    return r


# --- names: /etc/hosts ----------------------------------------------------------

def hosts_text(records: dict[str, dict]) -> str:
    """hosts(5) for a container on the bridge: localhost, then every container by address,
    name and hostname (pykvm resolves names with hosts files, not a DNS server)."""
    lines = []
    for address, record in sorted(records.items(), key=lambda kv: ipaddress.IPv4Address(kv[0])):
        names = dict.fromkeys([record["name"], record["hostname"]])      # dedupe, keep order
        lines.append(f"{address}\t{' '.join(n for n in names if n)}\n")
    return LOCALHOST_HOSTS + "".join(lines)


def _write_hosts_files(leases: ipam.Leases) -> None:
    """Rewrite every member's hosts file in place: it is bind-mounted at the container's
    /etc/hosts, and a bind mount holds the inode (a rename would not be seen)."""
    text = hosts_text(leases.records)
    for record in leases.records.values():
        path = record.get("hosts")
        if path and os.path.isfile(path):
            with open(path, "w") as f:
                f.write(text)
