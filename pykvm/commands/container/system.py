"""`pykvm container system check [--repair]`: find (and mend) what a killed pykvm leaves.

What `podman system check` and containerd's garbage collector do: the image store's
blobs, tags, layers and tmp/ (pykvm.container.image.check), then the containers' state,
cgroups and mounts and the bridge network (pykvm.container.runtime.check).  One line per
problem; the status is 0 when nothing is wrong (or everything found was repaired), 1 if not.
"""
from __future__ import annotations

import sys

import click

__all__ = ["system_cmd"]


@click.group("system")
def system_cmd():
    """Manage pykvm's own state (check)."""


@system_cmd.command("check")
@click.option("--repair", is_flag=True, help="Mend what is found: delete corrupt blobs and "
              "leftovers, untag incomplete images, tidy containers whose monitor was killed.")
def check_cmd(repair):
    """Check the image store, the containers' state, cgroups, mounts and the network."""
    from pykvm.container.image.check import check_store
    from pykvm.container.image.store import ImageStore
    from pykvm.container.runtime import check
    from pykvm.container.runtime.state import StateStore
    images, states = ImageStore(), StateStore()
    findings = check_store(images, repair)
    findings += check.check_containers(states, repair)
    findings += check.check_cgroups(states, repair)
    findings += check.check_mounts([states.root, images.root], repair)
    findings += check.check_network(repair)
    for finding in findings:
        click.echo(finding.line())
    left = [f for f in findings if not f.repaired]
    if not findings:
        click.echo("no problems found")
    elif left:
        click.echo(f"{len(findings)} problem(s) found" + ("" if repair else "; `--repair` mends them"))
    else:
        click.echo(f"{len(findings)} problem(s) found and repaired")
    sys.exit(1 if left else 0)
