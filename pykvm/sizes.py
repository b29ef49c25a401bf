"""Human sizes, as users type them: `--mem 256M`, `--memory 64M`.

parse_size("128M") == 128 * 2**20.  Suffixes are binary (K = KiB, as QEMU's
-m and Docker's --memory read them); a bare number is bytes unless the caller
gives another default unit (QEMU's -m 512 means MiB).
"""
from __future__ import annotations

import re

from pykvm.errors import ConfigError

__all__ = ["parse_size", "format_size", "host_memory"]

UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str, *, what: str = "size", default_unit: str = "") -> int:
    """Parse '64M', '1G', '1.5G', '4096' into bytes; ConfigError naming `what` if it is not a size."""
    match = SIZE_RE.match(str(text))
    if not match:
        raise ConfigError(f"{what} {text!r} is not a size (examples: 64M, 1G, 512K)")
    number, unit = match.groups()
    unit = (unit or default_unit).upper()
    return int(float(number) * UNITS[unit])


def format_size(n: int) -> str:
    """Binary units, exact where possible: 134217728 -> '128 MiB', 25276502016 -> '23.5 GiB'."""
    for suffix, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor:
            value = n / factor
            return f"{n // factor} {suffix}" if n % factor == 0 else f"{value:.1f} {suffix}"
    return f"{n} bytes"


def host_memory() -> int:
    """Total RAM of this host in bytes (MemTotal in /proc/meminfo)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise ConfigError("cannot read MemTotal from /proc/meminfo")
