"""Fixtures for the container tests: a busybox rootfs, a private state directory, the CLI."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pykvm.container.runtime.rootfs import make_busybox_rootfs

BUSYBOX = Path("/bin/busybox")
RUNC = shutil.which("runc")


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory) -> Path:
    """A read-mostly busybox rootfs shared by the tests (tests that write use `fresh_rootfs`)."""
    if not BUSYBOX.exists():
        pytest.skip("needs /bin/busybox (Debian package busybox-static)")
    return make_busybox_rootfs(tmp_path_factory.mktemp("bb") / "rootfs")


@pytest.fixture
def fresh_rootfs(tmp_path) -> Path:
    if not BUSYBOX.exists():
        pytest.skip("needs /bin/busybox (Debian package busybox-static)")
    return make_busybox_rootfs(tmp_path / "rootfs")


@pytest.fixture
def rootfs_factory():
    """make_busybox_rootfs, for tests that need a rootfs in a place of their choosing."""
    if not BUSYBOX.exists():
        pytest.skip("needs /bin/busybox (Debian package busybox-static)")
    return make_busybox_rootfs


@pytest.fixture
def state_root(tmp_path, monkeypatch) -> Path:
    """A private state directory for this test (PYKVM_STATE_ROOT)."""
    root = tmp_path / "state"
    monkeypatch.setenv("PYKVM_STATE_ROOT", str(root))
    return root


@pytest.fixture
def pykvm(state_root):
    """Run `python -m pykvm ARGS...`; returns the CompletedProcess (text mode).  `view`
    wraps the command line (escape_tools.cgroup_view: run it on another cgroup layout)."""
    def run(*args, timeout=60, view=list, **kw):
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        return subprocess.run(view([sys.executable, "-m", "pykvm", *map(str, args)]), text=True,
                              timeout=timeout, env={**os.environ, "PYKVM_STATE_ROOT": str(state_root)},
                              **kw)
    return run


@pytest.fixture
def runc_bundle(tmp_path, busybox_rootfs) -> Path:
    """An OCI bundle: the config.json `runc spec` writes, and a copy of the busybox rootfs."""
    if not RUNC:
        pytest.skip("needs runc (Debian package runc) to write the reference config.json")
    d = tmp_path / "bundle"
    d.mkdir()
    subprocess.run([RUNC, "spec"], cwd=d, check=True)
    shutil.copytree(busybox_rootfs, d / "rootfs", symlinks=True)
    return d


@pytest.fixture
def kvm(in_ns, state_root):
    """`pykvm ARGS` inside the test's namespace (tests/conftest.py's netns), with a private
    state directory."""
    env = {**os.environ, "PYKVM_STATE_ROOT": str(state_root)}

    def run(*args, **kw):
        kw.setdefault("env", env)
        return in_ns(sys.executable, "-m", "pykvm", *args, **kw)
    run.env = env
    yield run
    for cid in run("container", "ps", "-q").stdout.split():
        run("container", "rm", "-f", cid)
