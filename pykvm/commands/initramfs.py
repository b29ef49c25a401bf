"""`pykvm initramfs DIR -o FILE`: pack a directory into an initramfs (newc cpio)."""
from __future__ import annotations

import click

__all__ = ["initramfs"]


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, writable=True),
              help="Archive to write (an uncompressed newc cpio; Linux unpacks it before /init).")
@click.option("--no-console", is_flag=True,
              help="Do not add dev/console (c 5 1) when DIRECTORY lacks it.")
def initramfs(directory: str, output: str, no_console: bool) -> None:
    """Pack DIRECTORY into an initramfs for `pykvm boot --initrd`.

    Members are owned by root and keep their permission bits; the kernel runs
    /init from it (make it executable).
    """
    import os

    from pykvm.vm.boot.cpio import archive_tree
    from pykvm.errors import ConfigError

    data = archive_tree(directory, console=not no_console)
    # A regular file (or a new one) is written beside OUTPUT and renamed over it, so a failed
    # write leaves an old archive whole; anything else (-o /dev/stdout, a symlink) is written
    # through, as before.
    in_place = os.path.lexists(output) and (os.path.islink(output) or not os.path.isfile(output))
    tmp = output if in_place else f"{output}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        if not in_place:
            os.replace(tmp, output)
    except OSError as e:
        if not in_place and os.path.exists(tmp):
            os.unlink(tmp)
        raise ConfigError(f"-o {output}: {e.strerror or e}") from None
    click.echo(f"{output}: {len(data)} bytes", err=True)
