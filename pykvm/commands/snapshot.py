"""`pykvm snapshot show DIR`: what a snapshot holds, part by part."""
from __future__ import annotations

from pathlib import Path

import click

__all__ = ["snapshot"]


@click.group()
def snapshot():
    """Look inside snapshots written by `pykvm boot --snapshot-dir`."""


@snapshot.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
def show(directory):
    """Describe every part of the snapshot in DIRECTORY (each checked against its sha256)."""
    from pykvm.vm.snapshot import Snapshot
    from pykvm.vm.snapshot.show import describe

    for line in describe(Snapshot.open(directory)):
        click.echo(line)
