"""`pykvm compare`: the seed's "VMs vs containers" table, measured on this machine.

The measuring lives in pykvm/comparison/; this module only reads the options
and prints the report in the form asked for.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

__all__ = ["compare"]


@click.command()
@click.option("--runs", "-n", default="5", show_default=True, metavar="N",
              help="How many times to run each side.")
@click.option("--guest", default="tiny", show_default=True, metavar="tiny|linux|image",
              help="The VM's guest: the tiny teaching kernel, a Linux guest, or the --image itself "
                   "run by Linux (`container run --isolation vm`); linux and image need hardware KVM.")
@click.option("--image", default="busybox", show_default=True, metavar="hello|busybox|IMAGE",
              help="The container's image (a bundled one is built if missing); with --guest image, the VM's too.")
@click.option("--mem", default="128M", show_default=True, metavar="SIZE", help="The VM's RAM, as for `pykvm boot --mem`.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
@click.option("--markdown", is_flag=True, help="Print the table as Markdown (for course material).")
@click.option("--plot", metavar="FILE.svg|.png", help="Also draw startup time and memory side by side (PNG through rsvg-convert).")
@click.option("--explain", is_flag=True, help="Also print how each number was measured.")
def compare(runs, guest, image, mem, as_json, markdown, plot, explain):
    """Run the same small workload as a VM and as a container, N times each, and compare them.

    Needs /dev/kvm (the VM) and root (the container).  docs/30-vm-vs-container.md explains
    every row.
    """
    import json

    from pykvm.comparison import table
    from pykvm.comparison.report import check_options, compare as measure
    from pykvm.errors import ConfigError

    if as_json and markdown:
        raise ConfigError("--json and --markdown: choose one")
    runs = _count(runs)
    check_options(runs, guest, plot)
    progress = sys.stderr.isatty()
    try:
        report = measure(runs, guest, image, mem, log=_progress if progress else None)
    finally:
        if progress:
            click.echo("\r\033[K", err=True, nl=False)     # ECMA-48 EL: erase the progress line
    if plot:
        from pykvm.comparison.plot import write_plot
        write_plot(report, plot)
        click.echo(f"pykvm compare: plot written to {Path(plot).resolve()}", err=True)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(table.markdown_table(report) if markdown else table.text_table(report))
    if explain:
        click.echo("")
        click.echo(table.explain(report))


def _count(text: str) -> int:
    from pykvm.errors import ConfigError
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--runs {text!r}: not a whole number") from None


def _progress(message: str) -> None:
    click.echo(f"\rpykvm compare: {message:<40}", err=True, nl=False)
    if message.startswith("building"):
        click.echo("", err=True)
