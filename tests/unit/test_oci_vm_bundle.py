"""`oci create | run` with VM isolation, up to the boot: the choice (flag or annotation), the
config.json -> VM mapping, what is refused, and the state `create` leaves.

The VM itself boots only where Linux can (tests/linux/test_oci_vm.py, the L1 lane).  Here
`create` is given the paths of a kernel that does not exist: nothing reads them before
`start`, so the created state (a real background process waiting on a real exec.fifo, a real
root disk) is checked everywhere, and `start` then shows the handshake and the failed boot's
one line.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from clitools import ROOT, one_error_line, pykvm, wait_for

from pykvm.commands.container.isolation import DEFAULT_MEMORY, run_request
from pykvm.commands.container.oci_vm import ROOT_DISK, VM_REFUSED, check_for_vm, vm_resources
from pykvm.container.runtime.bundle import ISOLATION_ANNOTATION, bundle_isolation, load_bundle
from pykvm.errors import ConfigError
from pykvm.sizes import parse_size

PYKVM_RUNC = Path(sys.executable).with_name("pykvm-runc")
NO_KERNEL = ("/nonexistent/vmlinuz", "/nonexistent/initramfs.cpio")
EXT4_MAGIC = b"\x53\xef"                # the superblock's s_magic, at byte 1024 + 56


def spec(**process) -> dict:
    """A small config.json: what `runc spec` writes that matters here, terminal off."""
    return {"ociVersion": "1.0.2", "root": {"path": "rootfs", "readonly": True},
            "process": {"terminal": False, "args": ["sh", "-c", "echo hi"], "cwd": "/",
                        "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}, **process},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}}


def bundle_dir(tmp_path: Path, config: dict, rootfs: bool = False) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)
    (bundle / "config.json").write_text(json.dumps(config))
    if rootfs:
        from pykvm.container.runtime.rootfs import make_busybox_rootfs
        if not Path("/bin/busybox").exists():
            pytest.skip("needs /bin/busybox (Debian package busybox-static)")
        if not shutil.which("mkfs.ext4", path="/usr/sbin:/sbin:" + os.environ.get("PATH", "")):
            pytest.skip("needs mkfs.ext4 (Debian package e2fsprogs) for the root disk")
        make_busybox_rootfs(bundle / "rootfs")
    else:
        (bundle / "rootfs").mkdir(exist_ok=True)
    return bundle


# --- the choice ----------------------------------------------------------------------------

@pytest.mark.parametrize("annotations, flag, expected", [
    ({}, None, "container"),
    ({ISOLATION_ANNOTATION: "vm"}, None, "vm"),
    ({ISOLATION_ANNOTATION: "container"}, None, "container"),
    ({ISOLATION_ANNOTATION: "vm"}, "container", "container"),       # the flag wins
    ({}, "vm", "vm"),
    ({"org.other.runtime": "vm"}, None, "container"),
])
def test_the_flag_then_the_annotation_choose(tmp_path, annotations, flag, expected):
    bundle = bundle_dir(tmp_path, {**spec(), "annotations": annotations})
    assert bundle_isolation(str(bundle), flag) == expected


def test_an_unreadable_config_is_left_to_load_bundle(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    assert bundle_isolation(str(tmp_path)) == "container"
    with pytest.raises(ConfigError, match="is not valid JSON"):
        load_bundle(str(tmp_path))


@pytest.mark.parametrize("value", ["kvm", "", "VM", 1, True])
def test_a_bad_value_is_one_line(tmp_path, value):
    bundle = bundle_dir(tmp_path, spec())
    with pytest.raises(ConfigError) as error:
        bundle_isolation(str(bundle), value)
    assert str(error.value) == f"--isolation is {value!r}: it must be one of container, vm"


@pytest.mark.parametrize("command", ["create", "run"])
def test_bad_values_are_one_line_from_the_cli(tmp_path, command):
    bundle = bundle_dir(tmp_path, spec())
    line = one_error_line(pykvm("container", "oci", command, "--isolation", "kvm", "-b", str(bundle), "c1",
                                env={"PYKVM_STATE_ROOT": str(tmp_path / "state")}))
    assert line == "pykvm: error: --isolation is 'kvm': it must be one of container, vm"
    bundle = bundle_dir(tmp_path, {**spec(), "annotations": {ISOLATION_ANNOTATION: "VM"}})
    line = one_error_line(pykvm("container", "oci", command, "-b", str(bundle), "c1",
                                env={"PYKVM_STATE_ROOT": str(tmp_path / "state")}))
    assert line == ("pykvm: error: config.json: annotations['org.pykvm.isolation'] is 'VM': "
                    "it must be one of container, vm")
    assert not (tmp_path / "state" / "c1").exists()


@pytest.mark.parametrize("command", ["create", "run"])
def test_pykvm_runc_reads_the_annotation(tmp_path, command):
    """An engine's `--annotation org.pykvm.isolation=...` reaches pykvm-runc in config.json."""
    if not PYKVM_RUNC.exists():
        pytest.skip(f"{PYKVM_RUNC} is missing: `make venv` installs it")
    bundle = bundle_dir(tmp_path, {**spec(), "annotations": {ISOLATION_ANNOTATION: "qemu"}})
    r = subprocess.run([str(PYKVM_RUNC), "--root", str(tmp_path / "state"), command, "--bundle", str(bundle), "c1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "annotations['org.pykvm.isolation'] is 'qemu'" in r.stderr
    assert not (tmp_path / "state" / "c1").exists()


# --- config.json -> the VM -------------------------------------------------------------------

def test_the_process_becomes_container_init_s_request(tmp_path):
    bundle = bundle_dir(tmp_path, {**spec(args=["/bin/sh", "-c", "id"], env=["A=1", "PATH=/bin"], cwd="/tmp",
                                          user={"uid": 1000, "gid": 100, "additionalGids": [10, 20]}),
                                   "hostname": "box"})
    from dataclasses import replace
    cfg = replace(load_bundle(str(bundle)), id="0123456789abcdef")
    request = run_request(cfg)
    assert (request.args, request.env, request.cwd) == (["/bin/sh", "-c", "id"], ["A=1", "PATH=/bin"], "/tmp")
    assert (request.uid, request.gid, request.groups) == (1000, 100, [10, 20])
    assert (request.hostname, request.stdin) == ("box", "null")
    assert run_request(replace(cfg, hostname=None, interactive=True)).hostname == "0123456789ab"
    assert run_request(replace(cfg, interactive=True)).stdin == "pipe"


@pytest.mark.parametrize("resources, ram, cpus", [
    ({}, parse_size(DEFAULT_MEMORY), 1),
    ({"memory": {"limit": 512 << 20}}, 512 << 20, 1),
    ({"memory": {"limit": -1}}, parse_size(DEFAULT_MEMORY), 1),
    ({"cpu": {"quota": 100000, "period": 100000}}, parse_size(DEFAULT_MEMORY), 1),
    ({"cpu": {"quota": 150000, "period": 100000}}, parse_size(DEFAULT_MEMORY), 2),    # rounded up
    ({"cpu": {"quota": 50000}}, parse_size(DEFAULT_MEMORY), 1),                        # the default period
    ({"cpu": {"quota": 400000, "period": 100000}, "memory": {"limit": 1 << 30}}, 1 << 30, 4),
])
def test_resources_become_guest_ram_and_vcpus(tmp_path, resources, ram, cpus):
    bundle = bundle_dir(tmp_path, {**spec(), "linux": {"resources": resources}})
    assert vm_resources(load_bundle(str(bundle))) == (ram, cpus)


def test_more_vcpus_or_ram_than_a_vm_can_have_are_one_line(tmp_path):
    from pykvm.sizes import host_memory
    from pykvm.vm.machine import MAX_CPUS

    bundle = bundle_dir(tmp_path, {**spec(), "linux": {"resources": {"cpu": {"quota": (MAX_CPUS + 1) * 1000,
                                                                              "period": 1000}}}})
    with pytest.raises(ConfigError, match=rf"asks for {MAX_CPUS + 1} vCPUs; a VM has 1 to {MAX_CPUS}$"):
        vm_resources(load_bundle(str(bundle)))
    too_much = host_memory() * 2
    bundle = bundle_dir(tmp_path, {**spec(), "linux": {"resources": {"memory": {"limit": too_much}}}})
    with pytest.raises(ConfigError, match=rf"^linux.resources.memory.limit {too_much}: more than this host's"):
        vm_resources(load_bundle(str(bundle)))


@pytest.mark.parametrize("config, refused", [
    (spec(terminal=True), "process.terminal is true"),
    ({**spec(), "hooks": {"poststart": [{"path": "/bin/true"}]}}, "hooks are given"),
])
def test_what_a_vm_cannot_honour_is_one_line_before_anything_is_made(tmp_path, config, refused):
    bundle = bundle_dir(tmp_path, config)
    with pytest.raises(ConfigError) as error:
        check_for_vm(load_bundle(str(bundle)))
    assert str(error.value) == f"config.json: {refused}, but with VM isolation {VM_REFUSED[refused]}"
    line = one_error_line(pykvm("container", "oci", "run", "--isolation", "vm", "-b", str(bundle), "c1",
                                env={"PYKVM_STATE_ROOT": str(tmp_path / "state")}))
    assert line == f"pykvm: error: {error.value}"
    assert not (tmp_path / "state" / "c1").exists()


def test_a_terminal_is_still_fine_for_a_container(tmp_path):
    """The refusal is the VM's: the same bundle as a container keeps its terminal."""
    bundle = bundle_dir(tmp_path, spec(terminal=True))
    assert load_bundle(str(bundle)).tty and bundle_isolation(str(bundle)) == "container"


# --- the state `create` leaves ----------------------------------------------------------------

def create_without_a_kernel(bundle: Path, cid: str, state_root: Path, log: Path) -> None:
    """oci_create_vm in a process of its own (as `oci create` is), with NO_KERNEL for the
    guest: the background process's stdout and stderr (the caller's, as runc's) go to `log`."""
    code = ("import sys; from pykvm.commands.container.oci_vm import oci_create_vm; "
            f"oci_create_vm({cid!r}, {str(bundle)!r}, guest={NO_KERNEL!r})")
    with open(log, "wb") as out:
        r = subprocess.run([sys.executable, "-c", code], stdout=out, stderr=out, timeout=120, cwd=ROOT,
                           env={**os.environ, "PYKVM_STATE_ROOT": str(state_root)})
    assert r.returncode == 0, log.read_text()


@pytest.fixture
def state_root(tmp_path):
    """A private state root; whatever a failed test left created or running is deleted (killed)."""
    root = tmp_path / "state"
    yield root
    for name in [n for n in os.listdir(root) if n != ".cache"] if root.exists() else []:
        cli(root, "oci", "delete", "--force", name)


def cli(state_root: Path, *args: str) -> subprocess.CompletedProcess:
    return pykvm("container", *args, env={"PYKVM_STATE_ROOT": str(state_root)})


def oci_state(state_root: Path, cid: str) -> dict:
    r = cli(state_root, "oci", "state", cid)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_create_leaves_it_created_with_the_background_process_as_its_pid(tmp_path, state_root):
    bundle = bundle_dir(tmp_path, {**spec(), "annotations": {ISOLATION_ANNOTATION: "vm", "note": "kept"}},
                        rootfs=True)
    log = tmp_path / "log"
    create_without_a_kernel(bundle, "vm1", state_root, log)
    state = oci_state(state_root, "vm1")
    assert state["status"] == "created" and state["annotations"]["note"] == "kept", state
    with open(f"/proc/{state['pid']}/cmdline", "rb") as f:
        assert b"oci_create_vm" in f.read()                 # the process that will run the VM
    directory = state_root / "vm1"
    assert sorted(os.listdir(directory)) == sorted(["state.json", "exec.fifo", ROOT_DISK])
    with open(directory / ROOT_DISK, "rb") as disk:
        disk.seek(1024 + 56)
        assert disk.read(2) == EXT4_MAGIC
    assert json.loads((directory / "state.json").read_text())["isolation"] == "vm"
    row = next(line for line in cli(state_root, "ps", "-a").stdout.decode().splitlines() if line.startswith("vm1"))
    assert row.split()[2:4] == ["created", "vm"], row
    if PYKVM_RUNC.exists():
        listed = subprocess.run([str(PYKVM_RUNC), "--root", str(state_root), "list", "--format", "json"],
                                capture_output=True, text=True, timeout=60)
        assert [(c["id"], c["status"], c["pid"]) for c in json.loads(listed.stdout)] == \
            [("vm1", "created", state["pid"])]
    # kill in "created": the waiting process ends (as a created container's init does)
    assert cli(state_root, "oci", "kill", "vm1", "KILL").returncode == 0
    wait_for(lambda: oci_state(state_root, "vm1")["status"] == "stopped", timeout=30)
    r = cli(state_root, "oci", "delete", "vm1")
    assert r.returncode == 0, r.stderr
    assert not directory.exists()


def test_start_lets_the_background_process_boot_and_its_failure_is_recorded(tmp_path, state_root):
    """`start` is the container's (exec.fifo): the background process goes on to boot, which
    fails here without a kernel: one line on the caller's stderr, 125 in exit.json."""
    bundle = bundle_dir(tmp_path, spec(), rootfs=True)
    log = tmp_path / "log"
    (bundle / "config.json").write_text(json.dumps({**spec(), "annotations": {ISOLATION_ANNOTATION: "vm"}}))
    create_without_a_kernel(bundle, "vm2", state_root, log)
    r = cli(state_root, "oci", "start", "vm2")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: oci_state(state_root, "vm2")["status"] == "stopped", timeout=60)
    assert json.loads((state_root / "vm2" / "exit.json").read_text())["exit_code"] == 125
    assert log.read_text() == f"pykvm: error: kernel {NO_KERNEL[0]}: no such file\n"
    r = cli(state_root, "oci", "start", "vm2")
    assert r.returncode != 0 and "not created" in r.stderr.decode()
    assert cli(state_root, "oci", "delete", "vm2").returncode == 0
