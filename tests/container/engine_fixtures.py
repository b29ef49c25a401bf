"""What the engine tests and the Podman benchmark share: a Podman configuration that keeps
to one temporary directory.

Imported explicitly (tests/container/test_engines.py, tests/bench/bench_podman_runtime.py).
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

__all__ = ["podman_config"]


def podman_config(tmp: Path) -> dict:
    """containers.conf and storage.conf in `tmp`; returns the environment that points Podman
    at them.  vfs storage (no overlay mounts to leave behind), cgroupfs (no systemd), no
    network, no events log, file locks: nothing shared with another Podman on the machine.
    Rootless Podman takes its storage from rootless_storage_path (graphroot is root's) and
    its run root from $XDG_RUNTIME_DIR."""
    (tmp / "storage.conf").write_text(textwrap.dedent(f"""\
        [storage]
        driver = "vfs"
        graphroot = "{tmp}/graph"
        runroot = "{tmp}/run"
        rootless_storage_path = "{tmp}/graph"
        """))
    (tmp / "containers.conf").write_text(textwrap.dedent(f"""\
        [containers]
        netns = "none"
        [engine]
        cgroup_manager = "cgroupfs"
        events_logger = "none"
        tmp_dir = "{tmp}/tmp"
        lock_type = "file"
        """))
    return {**os.environ, "CONTAINERS_CONF": str(tmp / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(tmp / "storage.conf")}
