"""The `pykvm` command line.

Every subcommand imports its machinery lazily, inside the function: Python's
own startup costs ~0.1 s here, and `pykvm --help` should not pay for cffi,
KVM or the container code on top of that.

Errors: any PyKvmError becomes one line on stderr and its exit code; only a bug
in pykvm ever shows a traceback.
"""
from __future__ import annotations

import sys

import click

from pykvm.commands.fast_exit import error_line, exit_now
from pykvm.commands.lazy import LazyGroup

__all__ = ["main", "cli"]

# Subcommands that live in their own modules, loaded only when invoked.
LAZY_COMMANDS = {
    "boot": "pykvm.commands.boot:boot",
    "check": "pykvm.commands.check:check",
    "container": "pykvm.commands.container.group:container",
    "compare": "pykvm.commands.compare:compare",
    "initramfs": "pykvm.commands.initramfs:initramfs",
    "restore": "pykvm.commands.restore:restore",
    "snapshot": "pykvm.commands.snapshot:snapshot",
}


@click.group(cls=LazyGroup, lazy=LAZY_COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pykvm-teaching", prog_name="pykvm")
def cli():
    """pykvm: boot a VM on KVM, run a container, and compare the two."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning PyKvmError into one line and an exit status.

    As the program (`pykvm`, `python -m pykvm`: argv is None) it ends through
    exit_now (fast_exit.py); called with an argv, from Python, it raises SystemExit as usual.
    """
    try:
        _run(argv)
    except SystemExit as e:
        if argv is not None:
            raise
        exit_now(e.code)
    if argv is None:
        exit_now(0)


def _run(argv: list[str] | None) -> None:
    """Run the CLI once: click parses, the command runs, errors become one line."""
    try:
        # standalone_mode=False lets us format errors ourselves; click then returns the
        # code of a ctx.exit(code) instead of exiting, so we exit with it.
        code = cli.main(args=argv, prog_name="pykvm", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except click.exceptions.Abort:
        click.echo("pykvm: aborted", err=True)
        sys.exit(130)
    except click.UsageError as e:
        # One line, like every other error; the command's --help has the rest.
        where = e.ctx.command_path if e.ctx else "pykvm"
        click.echo(f"pykvm: error: {e.format_message()} (see `{where} --help`)", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        click.echo(f"pykvm: error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except (Exception, KeyboardInterrupt) as e:
        # PyKvmError, Ctrl-C, a closed pipe, a full disk: one line; anything else is a bug
        # and its traceback shows where.
        ending = error_line(e)
        if ending is None:
            raise
        line, code = ending
        if line:
            click.echo(line, err=True)
        sys.exit(code)


if __name__ == "__main__":
    main()
