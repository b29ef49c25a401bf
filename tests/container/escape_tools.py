"""Helpers of the escape suites (test_escapes_*.py, test_seccomp.py): edit a bundle's config.json,
check a refusal, run runc on another cgroup layout, build a static probe from C."""
from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from pykvm.container.runtime import cgroups


def edit(bundle: Path, **changes) -> Path:
    """Set config.json fields, `__` separating the levels (process__user__umask=0o027);
    the terminal goes off, as a test has none."""
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


def refused(r: subprocess.CompletedProcess, message: str = "", code: int = 2) -> str:
    """The CLI refused with exit `code` and one line `pykvm: error: ...` holding `message`."""
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("pykvm: error: ") and message in r.stderr, r.stderr
    return r.stderr


def runc_run(bundle: Path, state: Path, cid: str | None = None, view=list) -> subprocess.CompletedProcess:
    """The oracle: `runc run` of the same bundle, its state kept under `state` (`view`:
    cgroup_view's wrapper, to run it on another cgroup layout).  A name of its own by
    default: without a cgroupsPath runc's cgroup is /<id>, which one fixed name would share
    with every other test running runc on this machine at the same time."""
    cid = cid or f"oracle-{uuid.uuid4().hex[:12]}"
    return subprocess.run(view(["runc", "--root", str(state), "run", "--bundle", str(bundle), cid]),
                          capture_output=True, text=True, timeout=60)


def build_static(source: str, directory: Path, name: str) -> Path:
    """A static program from C `source` (it runs in any rootfs), or a skip without gcc."""
    gcc = shutil.which("gcc")
    if not gcc:
        pytest.skip(f"needs gcc (Debian package gcc) to build the static {name}")
    (directory / f"{name}.c").write_text(source)
    subprocess.run([gcc, "-static", "-O", "-o", directory / name, directory / f"{name}.c"], check=True)
    return directory / name


def cgroup2_root() -> Path:
    """A real cgroup2 hierarchy: /sys/fs/cgroup on a pure-v2 host (most users'), the empty
    one at /sys/fs/cgroup/unified on a hybrid host (this project's machines)."""
    for root in (Path(cgroups.CGROUP_ROOT), Path(cgroups.CGROUP_ROOT) / "unified"):
        if cgroups.detect(root) == "v2":
            return root
    pytest.skip("no cgroup2 hierarchy mounted at /sys/fs/cgroup or /sys/fs/cgroup/unified")


# In a mount namespace of its own, the cgroup2 hierarchy ($0) bound over /sys/fs/cgroup:
# there the runtimes (pykvm, runc) see a pure cgroup v2 host.
V2_VIEW = 'mount --bind "$0" /sys/fs/cgroup && exec "$@"'


def cgroup_view(version: str):
    """A function argv -> argv that runs a command where /sys/fs/cgroup is cgroup `version`.

    The host's own layout as it is; v2 on a hybrid host through its cgroup2 hierarchy
    (no controllers there: they are bound to v1, but the devices program, cgroup.procs and
    the cgroup namespace are real); v1 on a pure-v2 host cannot be made, so it skips.
    """
    if cgroups.detect() == version:
        return list
    if version == "v2":
        root = cgroup2_root()
        return lambda argv: ["unshare", "--mount", "--propagation", "private", "sh", "-c", V2_VIEW,
                             str(root), *argv]
    pytest.skip(f"needs a cgroup {version} host (this one is {cgroups.detect()})")
