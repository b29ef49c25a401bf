"""`pykvm container run --network bridge|none|host` and `-p`: real bridges, veths, nftables.

Every test makes its own network namespace and runs pykvm in it (`nsenter --net=`):
the bridge, the veths and the nft table live there and die with it.  Traffic goes only
to addresses inside that namespace, or its loopback; every wait is a bounded poll.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest
from clitools import containers_in, wait_for

pytestmark = [pytest.mark.root]


def installed(program: str) -> bool:
    return any(os.access(os.path.join(d, program), os.X_OK) for d in os.environ["PATH"].split(":"))


@pytest.fixture(autouse=True)
def _needs_nat_program(request):
    """Published ports are nftables rules (iptables rules in the tests that ask for those)."""
    program = "iptables" if "iptables" in request.node.name else "nft"
    if not installed(program):
        pytest.skip(f"needs {program} (Debian package {'nftables' if program == 'nft' else program})")

GATEWAY = "10.213.0.1"                  # network.DEFAULT_SUBNET's first address
SERVER = ("mkdir -p /tmp/www && echo hello-$(hostname) > /tmp/www/index.html && "
          "exec httpd -f -p 80 -h /tmp/www")
GET = 'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 3 {} {} | tail -n 1'
TIMEOUT = 60


def start_server(kvm, rootfs, name, *opts) -> str:
    """A detached httpd answering `hello-NAME`; returns its id once it answers."""
    r = kvm("container", "run", "-d", "--network", "bridge", "--name", name, "--hostname", name,
            *opts, "--rootfs", rootfs, "sh", "-c", SERVER)
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    wait_for(lambda: kvm("container", "exec", cid, "sh", "-c", GET.format("127.0.0.1", 80)).stdout
             == f"hello-{name}\n", timeout=20)
    return cid


def leases(state_root) -> dict:
    path = state_root.parent / "network" / "leases.json"
    return json.loads(path.read_text())["leases"] if path.exists() else {}


def test_container_to_container_by_address_and_by_name(kvm, fresh_rootfs, state_root):
    start_server(kvm, fresh_rootfs, "alpha")
    address = next(a for a, r in leases(state_root).items() if r["name"] == "alpha")
    script = "; ".join([GET.format(address, 80), GET.format("alpha", 80),
                        "ip -o -4 addr show eth0 | awk '{print $4}'", "ip route | grep ^default",
                        "grep -c alpha /etc/hosts"])
    r = kvm("container", "run", "--rm", "--network", "bridge", "--name", "beta",
            "--rootfs", fresh_rootfs, "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 5, r.stdout
    by_address, by_name, mine, route, hosts = r.stdout.splitlines()
    assert (by_address, by_name) == ("hello-alpha", "hello-alpha"), r.stdout
    assert mine.startswith("10.213.0.") and mine.endswith("/16") and mine != f"{address}/16", mine
    assert route.startswith(f"default via {GATEWAY} dev eth0"), route
    assert hosts == "1"
    assert [r["name"] for r in leases(state_root).values()] == ["alpha"], "beta's address went back"
    start_server(kvm, fresh_rootfs, "gamma")           # a running container learns new names
    r = kvm("container", "exec", "alpha", "sh", "-c", GET.format("gamma", 80))
    assert r.stdout == "hello-gamma\n", r.stdout + r.stderr


def test_host_reaches_a_published_port_by_its_address_and_by_localhost(kvm, in_ns, fresh_rootfs):
    start_server(kvm, fresh_rootfs, "web", "-p", "8080:80")
    for host in (GATEWAY, "127.0.0.1"):
        r = in_ns("/bin/busybox", "sh", "-c", GET.format(host, 8080))
        assert r.stdout == "hello-web\n", f"{host}:8080 -> {r.stdout!r} {r.stderr!r}"
    # hairpin: a container reaching the published port through the host's address
    r = kvm("container", "run", "--rm", "--network", "bridge", "--rootfs", fresh_rootfs,
            "sh", "-c", GET.format(GATEWAY, 8080))
    assert r.stdout == "hello-web\n", r.stderr
    r = kvm("container", "exec", "web", "sh", "-c", GET.format(GATEWAY, 8080))    # to itself
    assert r.stdout == "hello-web\n", r.stderr


def test_network_none_has_only_lo_and_host_sees_the_namespace(kvm, in_ns, fresh_rootfs):
    in_ns("ip", "link", "add", "probe0", "type", "veth", "peer", "name", "probe1").check_returncode()
    r = kvm("container", "run", "--rm", "--network", "none", "--rootfs", fresh_rootfs,
            "ls", "/sys/class/net")
    assert r.stdout.split() == ["lo"], r.stdout + r.stderr
    r = kvm("container", "run", "--rm", "--network", "host", "--rootfs", fresh_rootfs,
            "ls", "/sys/class/net")
    assert sorted(r.stdout.split()) == ["lo", "probe0", "probe1"], r.stdout + r.stderr


def test_bridge_is_root_s_default(kvm, fresh_rootfs):
    env = {k: v for k, v in kvm.env.items() if k != "PYKVM_NETWORK"}
    r = kvm("container", "run", "--rm", "--rootfs", fresh_rootfs, "ls", "/sys/class/net", env=env)
    assert r.stdout.split() == ["eth0", "lo"], r.stdout + r.stderr


def test_containers_started_at_once_get_addresses_of_their_own(kvm, netns, fresh_rootfs):
    argv = ["nsenter", f"--net=/run/netns/{netns}", "--", sys.executable, "-m", "pykvm", "container",
            "run", "--rm", "--network", "bridge", "--rootfs", str(fresh_rootfs), "sh", "-c",
            "ip -4 addr show eth0 | grep -o '10\\.213\\.[0-9.]*'"]
    procs = [subprocess.Popen(argv, env=kvm.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=TIMEOUT) for p in procs]
    addresses = [out.strip() for out, _ in outputs]
    assert all(addresses) and len(set(addresses)) == 4, outputs


def test_two_containers_publishing_one_host_port_is_one_clear_error(kvm, fresh_rootfs, state_root):
    first = start_server(kvm, fresh_rootfs, "first", "-p", "8080:80")
    r = kvm("container", "run", "--rm", "--network", "bridge", "-p", "8080:81",
            "--rootfs", fresh_rootfs, "true")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"pykvm: error: host port 8080/tcp is already published by "
                               f"container first ({first})"), r.stderr
    assert containers_in(state_root) == [first], "the second left no container"
    assert [r["name"] for r in leases(state_root).values()] == ["first"]


def test_bad_publish_is_one_line(kvm, fresh_rootfs):
    for spec, why in (("80", "want HOSTPORT:CONTAINERPORT"), ("70000:80", "not in 1-65535"),
                      ("80:80/sctp", "not tcp or udp")):
        r = kvm("container", "run", "--rm", "-p", spec, "--network", "bridge",
                "--rootfs", fresh_rootfs, "true")
        assert r.returncode == 2 and why in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = kvm("container", "run", "--rm", "-p", "80:80", "--network", "none", "--rootfs", fresh_rootfs, "true")
    assert r.returncode == 2 and "needs --network bridge" in r.stderr, r.stderr


def nothing_left(in_ns, state_root) -> bool:
    links = json.loads(in_ns("ip", "-j", "link", "show").stdout)
    elements = in_ns("nft", "-j", "list", "map", "ip", "pykvm0", "published").stdout
    return (not [link for link in links if link["ifname"].startswith("pkv")]
            and '"elem"' not in elements and not leases(state_root))


def test_kill_9_of_the_launcher_leaves_no_veth_rule_or_address(kvm, in_ns, netns, fresh_rootfs,
                                                               state_root):
    proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{netns}",
                             "--", sys.executable, "-m", "pykvm", "container", "run", "--rm",
                             "--network", "bridge", "-p", "8181:80", "--rootfs", str(fresh_rootfs),
                             "sleep", "60"], env=kvm.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: "pkv" in in_ns("ip", "link", "show").stdout and
                 "8181" in in_ns("nft", "list", "map", "ip", "pykvm0", "published").stdout, timeout=30)
        os.kill(proc.pid, signal.SIGKILL)          # nsenter exec'd python: this is the launcher
    finally:
        proc.kill()
        proc.wait(TIMEOUT)
    wait_for(lambda: nothing_left(in_ns, state_root), timeout=20)


def test_a_crash_of_every_process_is_found_and_pruned(kvm, in_ns, fresh_rootfs, state_root):
    r = kvm("container", "run", "-d", "--network", "bridge", "--name", "doomed", "-p", "8282:80",
            "--rootfs", fresh_rootfs, "sleep", "60")
    assert r.returncode == 0, r.stderr
    state = json.loads((state_root / r.stdout.strip() / "state.json").read_text())
    for pid in (state["monitor_pid"], state["pid"]):
        os.kill(pid, signal.SIGKILL)                # no monitor left to clean up after init
    wait_for(lambda: "stale" in kvm("container", "network", "ls").stdout, timeout=20)
    r = kvm("container", "network", "ls")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "doomed" in r.stdout and "dnat tcp/8282 -> 10.213.0." in r.stdout, r.stdout
    assert "8282" in in_ns("nft", "list", "map", "ip", "pykvm0", "published").stdout
    r = kvm("container", "network", "prune")
    assert r.returncode == 0 and re.fullmatch(
        r"released 10\.213\.0\.\d+ of doomed \([0-9a-f]{12}\) tcp/8282:80\n", r.stdout), r.stdout + r.stderr
    wait_for(lambda: nothing_left(in_ns, state_root), timeout=10)
    r = kvm("container", "run", "--rm", "--network", "bridge", "-p", "8282:80",
            "--rootfs", fresh_rootfs, "true")
    assert r.returncode == 0, "the port is free again: " + r.stderr


def test_a_detached_container_gives_its_address_back_when_it_ends(kvm, in_ns, fresh_rootfs,
                                                                 state_root):
    r = kvm("container", "run", "-d", "--network", "bridge", "-p", "8383:80", "--rootfs",
            fresh_rootfs, "sleep", "1")
    assert r.returncode == 0, r.stderr
    assert leases(state_root), "leased while it runs"
    wait_for(lambda: nothing_left(in_ns, state_root), timeout=20)      # the monitor's cleanup


def test_prune_removes_a_dnat_entry_and_a_veth_no_lease_accounts_for(kvm, in_ns, fresh_rootfs,
                                                                     state_root):
    """What a pykvm killed between two steps of connect or release would leave."""
    r = kvm("container", "run", "--rm", "--network", "bridge", "--rootfs", fresh_rootfs, "true")
    assert r.returncode == 0, r.stderr
    in_ns("nft", "add", "element", "ip", "pykvm0", "published",
          "{ tcp . 9999 : 10.213.0.77 . 80 }").check_returncode()
    in_ns("ip", "link", "add", "pkv0123456789ab", "type", "veth", "peer", "name", "stray1").check_returncode()
    in_ns("ip", "link", "set", "pkv0123456789ab", "master", "pykvm0").check_returncode()
    r = kvm("container", "network", "prune")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["removed dnat tcp/9999 -> 10.213.0.77:80",
                                     "removed veth pkv0123456789ab"], r.stdout
    assert nothing_left(in_ns, state_root)


def test_rm_of_a_crashed_container_gives_back_what_it_held(kvm, in_ns, fresh_rootfs, state_root):
    r = kvm("container", "run", "-d", "--network", "bridge", "-p", "8484:80", "--rootfs",
            fresh_rootfs, "sleep", "60")
    cid = r.stdout.strip()
    state = json.loads((state_root / cid / "state.json").read_text())
    for pid in (state["monitor_pid"], state["pid"]):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: kvm("container", "ps", "-q").stdout == "", timeout=20)
    r = kvm("container", "rm", cid)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: nothing_left(in_ns, state_root), timeout=10)


def test_a_bridge_pykvm_did_not_make_is_left_alone(kvm, in_ns, fresh_rootfs, state_root):
    in_ns("ip", "link", "add", "pykvm0", "type", "bridge").check_returncode()
    r = kvm("container", "run", "--rm", "--network", "bridge", "--rootfs", fresh_rootfs, "true")
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("pykvm: error: an interface pykvm0 exists, but "), r.stderr
    assert in_ns("ip", "link", "show", "pykvm0").returncode == 0, "not removed: it is not ours"
    env = {**kvm.env, "PYKVM_BRIDGE": "lab0", "PYKVM_SUBNET": "10.99.5.0/24"}
    r = kvm("container", "run", "--rm", "--network", "bridge", "--rootfs", fresh_rootfs,
            "sh", "-c", "ip -4 addr show eth0 | grep inet", env=env)
    assert r.returncode == 0 and "inet 10.99.5.2/24" in r.stdout, r.stdout + r.stderr
    assert in_ns("nft", "list", "table", "ip", "lab0").returncode == 0


def test_network_rm_removes_the_bridge_and_its_table(kvm, in_ns, fresh_rootfs, state_root):
    r = kvm("container", "run", "--rm", "--network", "bridge", "--rootfs", fresh_rootfs, "true")
    assert r.returncode == 0, r.stderr
    assert in_ns("ip", "link", "show", "pykvm0").returncode == 0, "made on first use, kept"
    r = kvm("container", "network", "rm")
    assert r.returncode == 0 and "removed pykvm0 (10.213.0.0/16)" in r.stdout, r.stdout + r.stderr
    assert in_ns("ip", "link", "show", "pykvm0").returncode != 0
    assert in_ns("nft", "list", "table", "ip", "pykvm0").returncode != 0
    assert not (state_root.parent / "network" / "network.json").exists()


def test_iptables_publishes_ports_where_nft_is_not_used(kvm, in_ns, fresh_rootfs, state_root):
    """PYKVM_NAT=iptables: the rules nat.py chooses on a host with iptables and no nft."""
    kvm.env["PYKVM_NAT"] = "iptables"
    cid = start_server(kvm, fresh_rootfs, "web", "-p", "8080:80")
    address = next(a for a, r in leases(state_root).items() if r["name"] == "web")
    chain = in_ns("iptables", "-t", "nat", "-S", "PYKVM-pykvm0").stdout
    assert f"--dport 8080 -j DNAT --to-destination {address}:80" in chain, chain
    if installed("nft"):
        assert in_ns("nft", "list", "table", "ip", "pykvm0").returncode != 0, "no nft table as well"
    for host in (GATEWAY, "127.0.0.1"):
        r = in_ns("/bin/busybox", "sh", "-c", GET.format(host, 8080))
        assert r.stdout == "hello-web\n", f"{host}:8080 -> {r.stdout!r} {r.stderr!r}"
    r = kvm("container", "run", "--rm", "--network", "bridge", "--rootfs", fresh_rootfs,
            "sh", "-c", GET.format(GATEWAY, 8080))                      # hairpin
    assert r.stdout == "hello-web\n", r.stderr
    assert f"dnat tcp/8080 -> {address}:80" in kvm("container", "network", "ls").stdout
    assert kvm("container", "rm", "-f", cid).returncode == 0
    wait_for(lambda: "8080" not in in_ns("iptables", "-t", "nat", "-S", "PYKVM-pykvm0").stdout,
             timeout=20)
    r = kvm("container", "network", "rm")
    assert r.returncode == 0, r.stderr
    assert "PYKVM" not in in_ns("iptables", "-t", "nat", "-S").stdout, "chains and jumps gone"


def test_published_ports_read_back_without_etc_protocols(in_ns):
    """nft prints a protocol's number where /etc/protocols is missing (a minimal root file
    system, as the hardware lane's L1 has): `network ls` and prune still read tcp and udp."""
    from pykvm.container.runtime import nftables
    table = "pykvmtproto"
    in_ns("nft", "-f", "-", input=nftables.ruleset(table, "10.99.0.0/16")).check_returncode()
    for publish, target in ((nftables.Publish(8080, 80, "tcp"), "10.99.0.2"),
                            (nftables.Publish(5353, 53, "udp"), "10.99.0.3")):
        element = f"{{ {publish.protocol} . {publish.host_port} : {target} . {publish.container_port} }}"
        in_ns("nft", "add", "element", "ip", table, nftables.MAP, element).check_returncode()
    read = ("from pykvm.container.runtime.nftables import published; "
            f"print(sorted(published({table!r})))")
    # unshare -m: a mount namespace of its own, where an empty file hides /etc/protocols
    r = in_ns("unshare", "-m", "sh", "-c",
              f'mount --bind /dev/null /etc/protocols && nft -j list map ip {table} {nftables.MAP} '
              f'&& exec {sys.executable} -c "{read}"')
    assert r.returncode == 0, r.stderr
    assert re.search(r'"concat": ?\[6, ?8080\]', r.stdout), r.stdout      # nft: a number, not "tcp"
    assert r.stdout.splitlines()[-1] == ("[('tcp', 8080, '10.99.0.2:80'), "
                                         "('udp', 5353, '10.99.0.3:53')]"), r.stdout
