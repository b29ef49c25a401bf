"""The README's set-up line: `make boot` needs gcc, binutils and a Python venv, nothing else.

`make -n -B` prints every command a target would run on a fresh checkout (recursive makes
included) without running them; a prerequisite nobody can build (`BUSYBOX` pointing nowhere)
stops it with "No rule to make target".
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOWHERE = "/nonexistent/busybox"

pytestmark = pytest.mark.skipif(not shutil.which("make"), reason="needs make")


def dry_run(target: str) -> subprocess.CompletedProcess:
    """Every command `make TARGET` would run from scratch, with no busybox on the host."""
    return subprocess.run(["make", "-n", "-B", "--no-print-directory", target, f"BUSYBOX={NOWHERE}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_make_boot_builds_without_busybox():
    run = dry_run("boot")
    assert run.returncode == 0, run.stderr
    assert "busybox" not in run.stdout + run.stderr, run.stdout
    assert "tiny.elf" in run.stdout and "pykvm boot" in run.stdout, run.stdout


def test_make_guests_still_builds_the_busybox_image():
    """The check above can fail: the container images do need busybox-static."""
    run = dry_run("guests")
    assert run.returncode != 0
    assert f"No rule to make target '{NOWHERE}'" in run.stderr, run.stderr
