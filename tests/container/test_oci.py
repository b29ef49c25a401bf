"""OCI runtime bundles: the lifecycle (runtime.md "Lifecycle") and a cross-check with runc.

The bundle comes from `runc spec` itself, with a busybox rootfs, so both
runtimes read exactly the same config.json.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from clitools import containers_in, wait_for

pytestmark = pytest.mark.root

RUNC = shutil.which("runc")
PROBE = ('hostname; id -u; echo $$; pwd; echo "$FOO"; env | sort; cut -d" " -f5 /proc/self/mountinfo | sort; '
         'ls /dev; grep -E "^(Cap|NoNewPrivs)" /proc/self/status; ulimit -n; exit 7')


@pytest.fixture
def bundle(runc_bundle):
    """`runc spec` + a busybox rootfs; terminal off (test_terminal.py covers terminal: true)."""
    d = runc_bundle
    spec = json.loads((d / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["env"].append("FOO=bar")
    spec["process"]["cwd"] = "/tmp"
    spec["process"]["args"] = ["sh", "-c", PROBE]
    (d / "config.json").write_text(json.dumps(spec))
    return d


def set_args(bundle, args):
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["args"] = args
    (bundle / "config.json").write_text(json.dumps(spec))


def test_same_bundle_same_results_as_runc(pykvm, bundle, tmp_path):
    ours = pykvm("container", "oci", "run", "--bundle", bundle, "xcheck-pykvm")
    theirs = subprocess.run([RUNC, "--root", str(tmp_path / "runc-state"), "run", "--bundle",
                             str(bundle), "xcheck-runc"], capture_output=True, text=True, timeout=60)
    assert theirs.returncode == ours.returncode == 7
    assert ours.stdout == theirs.stdout, f"pykvm:\n{ours.stdout}\nrunc:\n{theirs.stdout}"
    first = ours.stdout.splitlines()[:5]
    assert first == ["runc", "0", "1", "/tmp", "bar"]          # hostname, uid, pid 1, cwd, env
    env = ours.stdout.splitlines()[5:9]
    assert env[:2] == ["FOO=bar", "HOME=/root"], env           # runc adds HOME, nothing else


def test_lifecycle_create_start_state_kill_delete(pykvm, bundle, tmp_path, state_root):
    set_args(bundle, ["sh", "-c", "echo started; trap 'echo term; exit 3' TERM; "
                                  "while :; do sleep 1; done"])
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    # Like runc's, our create passes its stdio through to the container: files, not pipes
    # (a pipe would stay open, held by the container, and the caller would wait for it).
    with open(out, "w") as f, open(err, "w") as e:
        r = pykvm("container", "oci", "create", "--bundle", bundle, "life", stdout=f, stderr=e)
    assert r.returncode == 0, err.read_text()

    def state():
        s = pykvm("container", "oci", "state", "life")
        assert s.returncode == 0, s.stderr
        return json.loads(s.stdout)

    created = state()
    assert created["status"] == "created" and created["pid"] > 0
    assert created["id"] == "life" and created["bundle"] == str(bundle)
    assert created["ociVersion"]
    assert out.read_text() == "", "the process does not run before start"
    assert pykvm("container", "oci", "start", "life").returncode == 0
    assert state()["status"] == "running"
    wait_for(lambda: out.read_text() == "started\n")
    r = pykvm("container", "oci", "start", "life")
    assert r.returncode == 1 and "not created" in r.stderr
    r = pykvm("container", "oci", "delete", "life")
    assert r.returncode == 1 and "running" in r.stderr
    assert pykvm("container", "oci", "kill", "life", "TERM").returncode == 0
    wait_for(lambda: state()["status"] == "stopped")
    assert out.read_text() == "started\nterm\n"
    assert pykvm("container", "oci", "delete", "life").returncode == 0
    assert pykvm("container", "oci", "state", "life").returncode == 1
    assert containers_in(state_root) == []


def test_delete_force_a_created_container(pykvm, bundle, state_root):
    assert pykvm("container", "oci", "create", "--bundle", bundle, "doomed",
                 stdout=subprocess.DEVNULL).returncode == 0
    pid = json.loads(pykvm("container", "oci", "state", "doomed").stdout)["pid"]
    assert pykvm("container", "oci", "delete", "--force", "doomed").returncode == 0
    wait_for(lambda: not _alive(pid))
    assert containers_in(state_root) == []


def test_duplicate_id_refused(pykvm, bundle):
    assert pykvm("container", "oci", "create", "--bundle", bundle, "twice",
                 stdout=subprocess.DEVNULL).returncode == 0
    try:
        r = pykvm("container", "oci", "create", "--bundle", bundle, "twice")
        assert r.returncode == 2 and "already in use" in r.stderr
    finally:
        pykvm("container", "oci", "delete", "--force", "twice")


def test_bad_env_in_config_json_is_a_usage_error(pykvm, bundle, state_root):
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["env"].append("=x")
    (bundle / "config.json").write_text(json.dumps(spec))
    r = pykvm("container", "oci", "run", "--bundle", bundle, "badenv")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "bad environment variable '=x'" in r.stderr, r.stderr
    assert containers_in(state_root) == [], "no container was created"


def test_unlimited_resources_run_as_under_runc(pykvm, bundle, tmp_path):
    spec = json.loads((bundle / "config.json").read_text())
    spec["linux"]["resources"] = {"memory": {"limit": -1}, "pids": {"limit": -1}}
    spec["process"]["args"] = ["sh", "-c", "echo ok; exit 3"]
    (bundle / "config.json").write_text(json.dumps(spec))
    ours = pykvm("container", "oci", "run", "--bundle", bundle, "unlimited")
    theirs = subprocess.run([RUNC, "--root", str(tmp_path / "runc-state"), "run", "--bundle",
                             str(bundle), "unlimited-runc"], capture_output=True, text=True, timeout=60)
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout) == (3, "ok\n"), ours.stderr


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_user_namespace_mappings_same_as_runc(pykvm, bundle, tmp_path):
    """config.json uidMappings/gidMappings: container root is host uid 100000, as under runc."""
    import os
    import tempfile
    public = Path(tempfile.mkdtemp(prefix="pykvm-userns-", dir="/tmp"))   # uid 100000 must reach it
    public.chmod(0o755)
    bundle = Path(shutil.copytree(bundle, public / "bundle", symlinks=True))
    spec = json.loads((bundle / "config.json").read_text())
    spec["linux"]["namespaces"].append({"type": "user"})
    for key in ("uidMappings", "gidMappings"):
        spec["linux"][key] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    spec["root"]["readonly"] = False
    spec["process"]["args"] = ["sh", "-c", "id -u; cat /proc/self/uid_map; touch /tmp/w && ls -ln /tmp/w"]
    (bundle / "config.json").write_text(json.dumps(spec))
    for dirpath, dirnames, filenames in os.walk(bundle / "rootfs"):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.lchown(name, 100000, 100000)
    ours = pykvm("container", "oci", "run", "--bundle", bundle, "userns-pykvm")
    theirs = subprocess.run([RUNC, "--root", str(tmp_path / "runc-state"), "run", "--bundle",
                             str(bundle), "userns-runc"], capture_output=True, text=True, timeout=60)
    assert ours.returncode == theirs.returncode == 0, (ours.stderr, theirs.stderr)
    assert ours.stdout == theirs.stdout
    lines = ours.stdout.splitlines()
    assert lines[0] == "0" and lines[1].split() == ["0", "100000", "65536"]
    assert lines[2].split()[2:4] == ["0", "0"], "the file is root's inside ..."
    assert os.stat(bundle / "rootfs" / "tmp" / "w").st_uid == 100000, "... and uid 100000's outside"
    shutil.rmtree(public)
