"""An OCI bundle run in a VM: `pykvm container oci ... --isolation vm` and pykvm-runc with the
org.pykvm.isolation annotation (the L1 lane, `make test-hw`).

The bundle is busybox's root directory and a config.json; the VM boots Debian's kernel from
`make linux-guest` with the directory as an ext4 root disk.  Checked: the process from
config.json (args, env, cwd, user and groups, hostname) and linux.resources (RAM, vCPUs)
as the guest sees them, the two output streams and the exit status of `run`, and runc's
lifecycle (created, running, a signal passed on, stopped, deleted) of `create` and `start`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from linux_guest import guest_file

pytestmark = [pytest.mark.linux, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYKVM_RUNC = Path(sys.executable).with_name("pykvm-runc")
RUN_TIMEOUT = 600                   # one VM boot and command, on a slow L1; a safety net, not a speed goal
BUSYBOX_ROOTFS = os.path.join(ROOT, "guests", "containers", "busybox", "rootfs")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A private state root, and busybox's root directory built (`make -C guests/containers`)."""
    guest_file("initramfs.cpio", "initramfs")
    subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "guests", "containers")], check=True)
    top = tmp_path_factory.mktemp("oci-vm")
    return {**os.environ, "PYKVM_STATE_ROOT": str(top / "state")}


def make_bundle(where: Path, args: list[str], annotations: dict | None = None, **config) -> Path:
    """A bundle: busybox's root and a config.json running `args` (terminal off)."""
    where.mkdir()
    shutil.copytree(BUSYBOX_ROOTFS, where / "rootfs", symlinks=True)
    spec = {"ociVersion": "1.0.2", "root": {"path": "rootfs", "readonly": True},
            "process": {"terminal": False, "args": args, "cwd": "/", "env": ["PATH=/bin"],
                        "user": {"uid": 0, "gid": 0}},
            "annotations": annotations or {}, **config}
    (where / "config.json").write_text(json.dumps(spec))
    return where


def pykvm(*args: str, env: dict, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    return subprocess.run([sys.executable, "-m", "pykvm", *args], text=True, env=env, timeout=RUN_TIMEOUT,
                          cwd=ROOT, stdin=subprocess.DEVNULL, **kw)


def oci_state(env: dict, cid: str) -> dict:
    r = pykvm("container", "oci", "state", cid, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def host_boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def wait_until(predicate, what: str, timeout: float = RUN_TIMEOUT) -> None:
    """Poll `predicate` (a safety net against a hang, not a speed goal)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.2)


def test_oci_run_in_a_vm_gives_the_config_s_process_its_output_and_status(env, tmp_path):
    """`oci run --isolation vm`: the guest kernel is not the host's (its boot_id, new at each
    boot, differs: the L1 lane's host runs the very kernel package the guest boots); the process has config.json's
    args, env, cwd, user and groups and hostname; memory.limit is the RAM and the CPU quota the
    vCPUs; stdout and stderr stay apart; pykvm exits with the command's status."""
    script = ("cat /proc/sys/kernel/random/boot_id; "
              'echo "$(hostname) $(id -u) $(id -g) $(pwd) $GREETING $(nproc)"; id -G; '
              "grep MemTotal /proc/meminfo; echo to-stderr >&2; exit 3")
    bundle = make_bundle(tmp_path / "b", ["/bin/sh", "-c", script], hostname="box",
                         linux={"resources": {"memory": {"limit": 384 << 20},
                                              "cpu": {"quota": 150000, "period": 100000}}})
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"].update(env=["PATH=/bin", "GREETING=hi"], cwd="/tmp",
                           user={"uid": 1000, "gid": 100, "additionalGids": [10, 20]})
    (bundle / "config.json").write_text(json.dumps(spec))
    r = pykvm("container", "oci", "run", "--isolation", "vm", "-b", str(bundle), "run1", env=env)
    assert r.returncode == 3, r.stderr
    assert r.stderr == "to-stderr\n"
    boot_id, process, groups, meminfo = r.stdout.splitlines()
    assert boot_id != host_boot_id()           # another kernel's boot (the release may be the host's)
    assert process.split() == ["box", "1000", "100", "/tmp", "hi", "2"], process
    assert set(groups.split()) == {"100", "10", "20"}, groups
    mem_kib = int(meminfo.split()[1])
    assert 256 << 10 < mem_kib <= 384 << 10, meminfo        # the RAM less what the kernel keeps
    assert "run1" not in pykvm("container", "ps", "-a", "-q", env=env).stdout


def test_create_start_state_kill_delete_by_the_annotation(env, tmp_path):
    """The annotation alone chooses the VM; `create` leaves it created (nothing booted),
    `start` boots it, `kill` passes SIGTERM to the command, `state` follows, `delete` cleans up."""
    bundle = make_bundle(tmp_path / "b", ["/bin/sh", "-c", "echo ready; exec sleep 1000"],
                         annotations={"org.pykvm.isolation": "vm"})
    output = tmp_path / "output"
    with open(output, "w") as out:                       # the container's stdout and stderr: create's
        created = pykvm("container", "oci", "create", "-b", str(bundle), "life", env=env,
                        capture_output=False, stdout=out, stderr=out)
    assert created.returncode == 0, output.read_text()
    try:
        state = oci_state(env, "life")
        assert state["status"] == "created" and state["pid"] > 0, state
        assert output.read_text() == ""                  # nothing runs before `start`
        row = next(line for line in pykvm("container", "ps", "-a", env=env).stdout.splitlines()
                   if line.startswith("life"))
        assert row.split()[2:4] == ["created", "vm"], row
        started = pykvm("container", "oci", "start", "life", env=env)
        assert started.returncode == 0, started.stderr
        wait_until(lambda: "ready" in output.read_text(), "'ready' from the command")
        running = oci_state(env, "life")
        assert (running["status"], running["pid"]) == ("running", state["pid"])
        killed = pykvm("container", "oci", "kill", "life", "TERM", env=env)
        assert killed.returncode == 0, killed.stderr
        wait_until(lambda: oci_state(env, "life")["status"] == "stopped", "stop after SIGTERM")
        exit_json = Path(env["PYKVM_STATE_ROOT"]) / "life" / "exit.json"
        assert json.loads(exit_json.read_text())["exit_code"] == 128 + 15, output.read_text()
        assert output.read_text() == "ready\n"
    finally:
        deleted = pykvm("container", "oci", "delete", "--force", "life", env=env)
    assert deleted.returncode == 0, deleted.stderr
    assert not (Path(env["PYKVM_STATE_ROOT"]) / "life").exists()


def test_pykvm_runc_runs_an_annotated_bundle_in_a_vm(env, tmp_path):
    """What an engine sends (`podman run --runtime pykvm-runc --annotation org.pykvm.isolation=vm`):
    the annotation in config.json; `run` exits with the command's status."""
    if not PYKVM_RUNC.exists():
        pytest.skip(f"{PYKVM_RUNC} is missing: `make venv` installs it")
    bundle = make_bundle(tmp_path / "b", ["/bin/sh", "-c", "cat /proc/sys/kernel/random/boot_id; exit 7"],
                         annotations={"org.pykvm.isolation": "vm"})
    r = subprocess.run([str(PYKVM_RUNC), "--root", env["PYKVM_STATE_ROOT"], "run", "--bundle", str(bundle), "rc1"],
                       capture_output=True, text=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL, env=env)
    assert r.returncode == 7, r.stderr
    assert r.stdout.strip() and r.stdout.strip() != host_boot_id(), r.stdout


def test_podman_runs_an_image_in_a_vm_by_the_annotation(env, tmp_path):
    """The whole engine path: `podman run --runtime pykvm-runc --annotation org.pykvm.isolation=vm`;
    Podman writes the bundle (its own storage's root directory), conmon waits for the pid
    that `create` wrote, and the command's status comes back through all of them."""
    for program in ("podman", "conmon"):
        if shutil.which(program) is None:
            pytest.skip(f"needs {program} (Debian package {program}; .ci/packages installs it)")
    if not PYKVM_RUNC.exists():
        pytest.skip(f"{PYKVM_RUNC} is missing: `make venv` installs it")
    sys.path.insert(0, os.path.join(ROOT, "tests", "container"))
    from engine_fixtures import podman_config

    (tmp_path / "podman").mkdir()
    (tmp_path / "big").mkdir()
    podman_env = {**podman_config(tmp_path / "podman"), "TMPDIR": str(tmp_path / "big")}
    store = {**env, "PYKVM_STORE": str(tmp_path / "store")}
    built = pykvm("container", "build", "-q", "-t", "busybox:vm", os.path.join(ROOT, "guests", "containers", "busybox"),
                  env=store)
    assert built.returncode == 0, built.stderr
    saved = pykvm("container", "save", "-o", str(tmp_path / "busybox.tar"), "busybox:vm", env=store)
    assert saved.returncode == 0, saved.stderr
    # Loaded as an OCI layout directory: Podman unpacks an archive into /var/tmp, which L1 lacks
    with tarfile.open(tmp_path / "busybox.tar") as archive:
        archive.extractall(tmp_path / "layout", filter="data")
    policy = tmp_path / "policy.json"           # nor has L1's /etc a containers/policy.json
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    loaded = subprocess.run(["podman", "load", "--signature-policy", str(policy), "-i", str(tmp_path / "layout")],
                            env=podman_env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert loaded.returncode == 0, loaded.stderr
    image = loaded.stdout.strip().splitlines()[-1].split(": ", 1)[1].split(",")[0]     # "Loaded image: NAME"
    runtime = tmp_path / "pykvm-runc-vm"        # the state root fixed, as a packager's wrapper fixes it
    runtime.write_text(f"#!/bin/sh\nexec {PYKVM_RUNC} --root {tmp_path / 'runc-state'} \"$@\"\n")
    runtime.chmod(0o755)
    r = subprocess.run(["podman", "--runtime", str(runtime), "run", "--rm", "--network", "none",
                        "--annotation", "org.pykvm.isolation=vm", image,
                        "sh", "-c", "cat /proc/sys/kernel/random/boot_id; exit 5"],
                       env=podman_env, capture_output=True, text=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
    assert r.returncode == 5, r.stderr
    assert r.stdout.strip() and r.stdout.strip() != host_boot_id(), r.stdout
