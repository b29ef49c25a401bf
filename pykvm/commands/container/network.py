"""`pykvm container network ls | rm | prune`: the bridge network and what a crash left.

The network is made by the first `pykvm container run --network bridge`
(pykvm.container.runtime.network); these commands show it, remove it, and give back
what containers that are gone still hold.
"""
from __future__ import annotations

import click

__all__ = ["network_cmd"]


@click.group("network")
def network_cmd():
    """The bridge network containers get addresses on (ls, rm, prune)."""


@network_cmd.command("ls")
def ls_cmd():
    """Show the bridge, its subnet, each container's address and published ports."""
    from pykvm.container.runtime import network
    from pykvm.container.runtime.nat import backend
    with network.recorded() as (net, leases):
        if net is None:
            click.echo("no network yet (the first `pykvm container run --network bridge` makes it)")
            return
        stale = set(network.stale_leases(leases))
    up = "up" if network.link_exists(net.bridge) else "MISSING"
    click.echo(f"bridge {net.bridge} ({up})  subnet {net.subnet}  gateway {net.gateway}")
    click.echo(f"{'ADDRESS':<16}{'CONTAINER':<14}{'NAME':<20}{'PORTS':<24}STATUS")
    for address, r in leases.records.items():
        ports = ",".join(r.get("ports", [])) or "-"
        status = "stale (prune)" if address in stale else "in use"
        click.echo(f"{address:<16}{r['id']:<14}{r['name'][:19]:<20}{ports:<24}{status}")
    if rules := backend():
        for proto, port, target in rules.published(net.bridge):
            click.echo(f"dnat {proto}/{port} -> {target}")


@network_cmd.command("prune")
def prune_cmd():
    """Give back the addresses, ports and veths of containers that are gone."""
    from pykvm.container.runtime.network import sweep
    for line in sweep():
        click.echo(line)


@network_cmd.command("rm")
@click.option("-f", "--force", is_flag=True, help="Even with running containers on it (they lose it).")
def rm_cmd(force):
    """Delete the bridge, its NAT rules (nft or iptables) and the leases."""
    from pykvm.container.runtime.network import remove_network
    net = remove_network(force)
    click.echo(f"removed {net.bridge} ({net.subnet})" if net else "no network to remove")
