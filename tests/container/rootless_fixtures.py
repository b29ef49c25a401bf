"""What the rootless tests share: an ordinary user (uid 65534, nobody) that can run pykvm.

A checkout and its venv are often out of that user's reach (under /root, in a 0750 home),
so the tests give it a copy of pykvm and its dependencies it can read, and a Python it may
run.  Imported explicitly (tests/container/test_rootless.py, test_engines.py).
"""
from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

__all__ = ["NOBODY", "rootless_problem", "public_copy", "nobody_pythonpath", "nobody_interpreter",
           "public_dir"]

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534


def rootless_problem() -> str | None:
    if not shutil.which("setpriv"):
        return "needs setpriv (util-linux)"
    if int(Path("/proc/sys/user/max_user_namespaces").read_text()) == 0:
        return "user namespaces are disabled (user.max_user_namespaces = 0)"
    return None


# What `python -m pykvm container` imports: pykvm itself (with its compiled cffi modules) and
# the distributions it depends on.
DEPENDENCIES = ("click", "cffi", "pycparser")


def public_copy(src: Path, dst: Path) -> None:
    """Copy a file or tree so that every user can read it (and run what was executable)."""
    if src.is_dir():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    for path in [dst, *dst.rglob("*")]:
        path.chmod(0o755 if path.is_dir() or path.stat().st_mode & 0o100 else 0o644)


@pytest.fixture(scope="session")
def nobody_pythonpath():
    """A copy of pykvm and its dependencies that uid 65534 can read, wherever the checkout is.

    A clone under /root, in a `mktemp -d` folder or in a 0750 home cannot be traversed by an
    ordinary user, so neither the source tree nor the venv inside it can be imported from.
    """
    lib = Path(tempfile.mkdtemp(prefix="pykvm-rootless-lib-", dir="/tmp"))
    public_copy(ROOT / "pykvm", lib / "pykvm")
    for name in DEPENDENCIES:
        for file in importlib.metadata.distribution(name).files:
            source = Path(file.locate())
            if source.is_file() and ".." not in file.parts:
                public_copy(source, lib / file)
    lib.chmod(0o755)
    yield lib
    shutil.rmtree(lib, ignore_errors=True)


def nobody_interpreter() -> Path | None:
    """This Python's interpreter, if uid 65534 may run it (a venv's may sit under /root).

    Every directory above it must let others through (mode o+x): the probe below alone is
    not enough, since an interpreter under a 0700 /root has passed it and still been refused
    from inside a user namespace, where rootless Podman runs its runtime."""
    for python in (Path(sys.executable).resolve(), Path(f"/usr/bin/python3.{sys.version_info.minor}")):
        if not all(directory.stat().st_mode & 0o001 for directory in python.parents):
            continue
        probe = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                                str(python), "-c", "import sys; print(sys.version_info[:2])"],
                               capture_output=True, text=True, cwd="/")
        if probe.returncode == 0 and probe.stdout.strip() == str(tuple(sys.version_info[:2])):
            return python
    return None


@pytest.fixture
def public_dir():
    """A directory nobody can reach (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="pykvm-rootless-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


