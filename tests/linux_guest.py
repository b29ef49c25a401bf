"""Locate (and if need be, prepare) the Linux guest that `make linux-guest` builds.

Shared by the bzImage unit tests, the PVM slow tests and the `linux` tier.
The recipe lives in guests/linux/Makefile; its outputs are cached in
.cache/linux/ (never committed).
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "linux"
RECIPE = ROOT / "guests" / "linux"

__all__ = ["CACHE", "guest_file"]


def guest_file(name: str, target: str) -> Path:
    """Path of .cache/linux/NAME, running `make -C guests/linux TARGET` first if it is missing.

    Skips (with the recipe's own error) only when the recipe cannot run here,
    e.g. on a machine without apt-get.
    """
    path = CACHE / name
    if not path.exists():
        proc = subprocess.run(["make", "-s", "-C", str(RECIPE), target],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not path.exists():
            pytest.skip(f"cannot prepare the Linux guest ({target}): "
                        f"{(proc.stderr or proc.stdout).strip()[-300:]}")
    return path
