"""The bridge network's pure parts: -p parsing, address leases, hosts files, settings.

No root, no namespaces (tests/container/test_network.py runs the real thing).
"""
from __future__ import annotations

import pytest

from pykvm.container.runtime import network
from pykvm.container.runtime.ipam import Leases, locked
from pykvm.container.runtime.nftables import Publish, parse_publish, ruleset
from pykvm.errors import ConfigError, ContainerError


@pytest.mark.parametrize("spec, want", [
    ("8080:80", Publish(8080, 80, "tcp")), ("5353:53/udp", Publish(5353, 53, "udp")),
    ("1:65535/TCP", Publish(1, 65535, "tcp"))])
def test_parse_publish(spec, want):
    assert parse_publish(spec) == want
    assert Publish.from_key(want.key) == want


@pytest.mark.parametrize("spec, why", [
    ("80", "want HOSTPORT:CONTAINERPORT"), ("0:80", "not in 1-65535"), ("80:65536", "not in 1-65535"),
    ("80:80/sctp", "not tcp or udp"), ("127.0.0.1:80:80", "want HOSTPORT"), ("a:b", "want HOSTPORT")])
def test_parse_publish_rejects(spec, why):
    with pytest.raises(ConfigError, match=why):
        parse_publish(spec)


def lease(cid, name="", ports=()):
    return {"id": cid, "name": name or cid, "hostname": cid, "hosts": "", "ports": list(ports)}


def test_addresses_in_turn_skipping_the_gateway_and_wrapping_around(tmp_path):
    leases = Leases(tmp_path, "10.9.0.0/29", "10.9.0.1")      # hosts .1-.6, .1 is the gateway
    got = [leases.allocate(lease(f"c{i}")) for i in range(5)]
    assert got == [f"10.9.0.{i}" for i in range(2, 7)]
    with pytest.raises(ContainerError, match="no free address left in 10.9.0.0/29"):
        leases.allocate(lease("c5"))
    leases.release("10.9.0.3")
    leases.release("10.9.0.5")
    assert leases.allocate(lease("c6")) == "10.9.0.3", "from the top again, past the gateway"
    assert leases.allocate(lease("c7")) == "10.9.0.5"
    assert leases.of("c6") == "10.9.0.3" and leases.of("nobody") is None


def test_a_released_address_is_not_handed_out_again_at_once(tmp_path):
    leases = Leases(tmp_path, "10.9.0.0/24", "10.9.0.1")
    leases.allocate(lease("a"))
    leases.release(leases.allocate(lease("b")))
    assert leases.allocate(lease("c")) == "10.9.0.4", "not .3, which b's neighbours may still cache"


def test_leases_survive_a_save_and_reload(tmp_path):
    with locked(tmp_path):
        leases = Leases(tmp_path, "10.9.0.0/24", "10.9.0.1")
        leases.allocate(lease("a", ports=["tcp/80:80"]))
        leases.save()
    again = Leases(tmp_path, "10.9.0.0/24", "10.9.0.1")
    assert again.records["10.9.0.2"]["ports"] == ["tcp/80:80"] and again.last == "10.9.0.2"


def test_a_host_port_is_published_once_per_protocol(tmp_path):
    leases = Leases(tmp_path, "10.9.0.0/24", "10.9.0.1")
    leases.allocate(lease("a1b2", "web", ["tcp/8080:80"]))
    leases.check_ports_free(["udp/8080:80", "tcp/8081:80"])
    with pytest.raises(ConfigError, match=r"host port 8080/tcp is already published by container web \(a1b2\)"):
        leases.check_ports_free(["tcp/8080:9000"])


def test_hosts_file_names_every_container_after_localhost():
    text = network.hosts_text({"10.9.0.10": lease("bbb", "web"), "10.9.0.2": lease("aaa")})
    assert text.startswith("127.0.0.1\tlocalhost\n")
    assert text.endswith("10.9.0.2\taaa\n10.9.0.10\tweb bbb\n"), "numeric order, name then hostname"


def test_settings_from_the_environment(monkeypatch):
    monkeypatch.delenv("PYKVM_SUBNET", raising=False)
    monkeypatch.delenv("PYKVM_BRIDGE", raising=False)
    net = network.Network.from_env()
    assert (net.bridge, net.subnet, net.gateway, net.prefix) == ("pykvm0", "10.213.0.0/16", "10.213.0.1", 16)
    monkeypatch.setenv("PYKVM_SUBNET", "192.168.77.0/24")
    monkeypatch.setenv("PYKVM_BRIDGE", "lab0")
    assert network.Network.from_env() == network.Network("lab0", "192.168.77.0/24", "192.168.77.1")


@pytest.mark.parametrize("var, value, why", [
    ("PYKVM_SUBNET", "10.1.2.3/16", "host bits set"), ("PYKVM_SUBNET", "10.0.0.0/31", "too small"),
    ("PYKVM_BRIDGE", "a-name-longer-than-15", "1-15"), ("PYKVM_BRIDGE", "br 0", "1-15")])
def test_bad_settings_are_config_errors(monkeypatch, var, value, why):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=why):
        network.Network.from_env()


def test_default_mode(monkeypatch):
    monkeypatch.setenv("PYKVM_NETWORK", "host")
    assert network.default_mode() == "host"
    monkeypatch.setenv("PYKVM_NETWORK", "slirp")
    with pytest.raises(ConfigError, match="want one of bridge, none, host"):
        network.default_mode()


def test_veth_names_fit_ifnamsiz():
    assert network.veth_name("0123456789abcdef") == "pkv0123456789ab"
    assert len(network.veth_name("0123456789abcdef")) == 15


def test_ruleset_masquerades_the_subnet_and_dnats_local_addresses():
    text = ruleset("lab0", "10.9.0.0/24")
    assert text.startswith("table ip lab0 {"), "one table per bridge, named after it"
    assert "ip saddr 10.9.0.0/24 ip daddr != 10.9.0.0/24 masquerade" in text
    assert text.count("fib daddr type local dnat ip to meta l4proto . th dport map @published") == 2


def test_a_bridge_needs_a_new_network_namespace_and_publish_needs_the_bridge(tmp_path, monkeypatch):
    from pykvm.container.runtime.config import RunConfig
    monkeypatch.setattr("os.geteuid", lambda: 0)        # rootless is refused first (tested as root)
    cfg = RunConfig(args=["true"], rootfs=str(tmp_path), network="bridge",
                    namespaces={"pid": None, "mount": None})
    with pytest.raises(ConfigError, match="needs a new network namespace"):
        cfg.finalized()
    with pytest.raises(ConfigError, match="needs --network bridge"):
        RunConfig(args=["true"], rootfs=str(tmp_path), publish=[Publish(80, 80)]).finalized()


def test_publish_without_nft_is_refused_before_anything_runs(tmp_path, monkeypatch):
    from pykvm.container.runtime.config import RunConfig
    monkeypatch.setenv("PATH", str(tmp_path))            # no nft on this PATH
    monkeypatch.setattr("os.geteuid", lambda: 0)        # the check that comes first: root
    cfg = RunConfig(args=["true"], rootfs=str(tmp_path), network="bridge", publish=[Publish(80, 80)])
    with pytest.raises(ConfigError, match="-p needs nft .* apt-get install nftables"):
        cfg.finalized()


def test_tap_names_fit_ifnamsiz_and_are_not_veth_names():
    assert network.tap_name("ab" * 32) == "pkt" + "ab" * 6 and len(network.tap_name("ab" * 32)) == 15
    assert network.tap_name("x") != network.veth_name("x")


def test_a_vm_lease_is_stale_once_its_vmm_process_is_gone(tmp_path):
    """A VM has no container state: its lease is judged by the VMM's pid and start time."""
    import os
    import subprocess

    from pykvm.container.runtime.state import StateStore, process_start_time

    ended = subprocess.Popen(["true"])
    ended.wait()
    me = os.getpid()

    def vm(pid, start):
        return {**lease(f"vm{pid}{start}"), "kind": "vm", "tap": "pktx", "launcher": pid,
                "launcher_start": start}
    leases = Leases(tmp_path, "10.9.0.0/24", "10.9.0.1")
    leases.records = {"10.9.0.2": vm(me, process_start_time(me)),        # running: kept
                      "10.9.0.3": vm(ended.pid, 1),                       # exited
                      "10.9.0.4": vm(me, process_start_time(me) + 1)}    # pid reused since
    assert network.stale_leases(leases, StateStore(tmp_path / "state")) == ["10.9.0.3", "10.9.0.4"]


def test_iptables_is_chosen_where_the_host_has_no_nft(tmp_path, monkeypatch):
    import shutil

    from pykvm.container.runtime import iptables, nat
    found = shutil.which("iptables")
    if found is None:
        pytest.skip("needs iptables (Debian package iptables)")
    (tmp_path / "iptables").symlink_to(found)
    monkeypatch.setenv("PATH", str(tmp_path))            # iptables, and no nft
    monkeypatch.delenv("PYKVM_NAT", raising=False)
    assert nat.backend() is iptables
    monkeypatch.setenv("PYKVM_NAT", "nft")              # asked for, and not there
    assert nat.backend() is None
    monkeypatch.setenv("PYKVM_NAT", "ipfw")
    with pytest.raises(ConfigError, match="PYKVM_NAT='ipfw': want nft or iptables"):
        nat.backend()


def test_iptables_rules_match_the_nft_table():
    from pykvm.container.runtime.iptables import rules
    lines = [" ".join(args) for args in rules("lab0", "10.9.0.0/24")]
    assert "-A PREROUTING -m addrtype --dst-type LOCAL -j PYKVM-lab0" in lines
    assert "-A OUTPUT -m addrtype --dst-type LOCAL -j PYKVM-lab0" in lines
    assert "-A PYKVM-lab0-POST -s 10.9.0.0/24 ! -d 10.9.0.0/24 -j MASQUERADE" in lines
    assert ("-A PYKVM-lab0-POST -s 127.0.0.0/8 -d 10.9.0.0/24 -m conntrack --ctstate DNAT "
            "-j MASQUERADE") in lines
