"""Fixtures for the container tests: a busybox rootfs, a private state directory, the CLI."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BUSYBOX = Path("/bin/busybox")


def make_busybox_rootfs(root: Path) -> Path:
    """A minimal userland: busybox-static plus its applet links (`busybox --install -s`)."""
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True,
                                 check=True).stdout.split():
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    for d in ("proc", "sys", "dev", "etc", "tmp"):
        (root / d).mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\nuser:x:1000:\n")
    return root


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
def state_root(tmp_path, monkeypatch) -> Path:
    """A private state directory for this test (PYKVM_STATE_ROOT)."""
    root = tmp_path / "state"
    monkeypatch.setenv("PYKVM_STATE_ROOT", str(root))
    return root


@pytest.fixture
def pykvm(state_root):
    """Run `python -m pykvm ARGS...`; returns the CompletedProcess (text mode)."""
    def run(*args, timeout=60, **kw):
        kw.setdefault("capture_output", True)
        return subprocess.run([sys.executable, "-m", "pykvm", *map(str, args)], text=True,
                              timeout=timeout, env={**os.environ, "PYKVM_STATE_ROOT": str(state_root)},
                              **kw)
    return run
