"""The bundled guests `pykvm boot NAME` knows, and where their built files are.

Guests are built from guests/ by `make guests` (`make boot` does it too);
nothing here is downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pykvm.errors import ConfigError

__all__ = ["Guest", "GUESTS", "DEFAULT_GUEST", "find_guest", "GUESTS_DIR"]

GUESTS_DIR = Path(__file__).resolve().parent.parent / "guests"
LINUX_CACHE = GUESTS_DIR.parent / ".cache" / "linux"   # what `make linux-guest` produces


@dataclass(frozen=True)
class Guest:
    name: str
    kernel: Path
    description: str
    cmdline: str = ""
    initrd: Path | None = None
    build: str = "make guests"


GUESTS = {
    "hello": Guest("hello", GUESTS_DIR / "hello" / "hello.elf",
                   "the smallest PVH guest: prints a greeting and powers off"),
    "tiny": Guest("tiny", GUESTS_DIR / "tiny" / "tiny.elf",
                  "the teaching kernel: a shell on the serial console (docs/04-tiny-kernel.md)"),
    "linux": Guest("linux", LINUX_CACHE / "vmlinuz",
                   "Debian's cloud kernel (bzImage) with a busybox initramfs: a shell on the console",
                   initrd=LINUX_CACHE / "initramfs.cpio", build="make linux-guest"),
}
DEFAULT_GUEST = "tiny"


def find_guest(name: str) -> Guest:
    """The guest called `name`, built; ConfigError naming the choices or the build command."""
    guest = GUESTS.get(name)
    if guest is None:
        raise ConfigError(f"unknown guest {name!r} (known: {', '.join(sorted(GUESTS))}; "
                          "or use --kernel FILE)")
    missing = [p for p in (guest.kernel, guest.initrd) if p is not None and not p.exists()]
    if missing:
        raise ConfigError(f"guest {name!r} is not built ({missing[0]} is missing): run `{guest.build}`")
    return guest
