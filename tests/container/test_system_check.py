"""`pykvm container system check [--repair]`: each thing a crash (or a disk) can leave is
found, said in one line, and mended; a store or state in use is left alone.

The containers here run in a cgroup of the test's own (tests/chaos/probes.py), so what the
check finds and removes is theirs alone.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clitools import containers_in

from pykvm.container.image.check import check_store
from pykvm.container.image.store import ImageStore
from pykvm.container.runtime.check import UNKNOWN_EXIT, check_containers, check_mounts
from pykvm.container.runtime.state import ContainerState, StateStore, process_start_time

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chaos"))
from image_fixtures import make_tar, run_pykvm  # noqa: E402
from probes import PrivateCgroup  # noqa: E402

TRACEBACK = "Traceback"


@pytest.fixture
def stores(tmp_path):
    """A store holding one image (one layer), and a state root; env for the CLI."""
    store = ImageStore(tmp_path / "store")
    layer = store.put_bytes(make_tar([("file", "hello", b"hi\n")]))
    diff_id = layer                                           # an uncompressed tar: digest == diff_id
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_id]},
              "config": {"Cmd": ["/hello"]}}
    store.add_image("app:1", config, [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                       "digest": layer, "size": store.blob_path(layer).stat().st_size}])
    del store                                                 # its shared hold on the store goes with it
    env = {"PYKVM_STORE": str(tmp_path / "store"), "PYKVM_STATE_ROOT": str(tmp_path / "state")}
    return tmp_path / "store", tmp_path / "state", env


def check(env, *args):
    status, out, err = run_pykvm("container", "system", "check", *args, env=env)
    assert TRACEBACK not in err, err
    return status, out.splitlines()


def test_a_clean_store_and_state_pass(stores):
    _, _, env = stores
    assert check(env) == (0, ["no problems found"])


def test_store_problems_are_found_one_line_each_and_repaired(stores):
    root, _, env = stores
    store = ImageStore(root)
    layer = store.get("app:1").layers[0]["digest"]
    store.blob_path(layer).write_bytes(b"not what the digest says")           # a disk changed it
    (root / "tmp" / "unpack-x1").mkdir()                                      # a killed unpack
    (root / "tmp" / "tmpab12.blob").write_bytes(b"half a download")
    (root / "layers" / "not-a-layer").mkdir()
    (root / "layer-sizes.json").write_text("{trunc")
    del store
    status, lines = check(env)
    assert status == 1, lines
    assert lines == [
        f"blob {layer[7:]}: is corrupt (its content has another digest)",
        f"image app:1: is incomplete: layer {layer} is missing or corrupt",
        "layers/not-a-layer: is not an unpacked layer",
        "layer-sizes.json: is not a JSON object",
        "tmp/tmpab12.blob: is a leftover of a pykvm process that died",
        "tmp/unpack-x1: is a half-unpacked layer of a pykvm process that died",
        "6 problem(s) found; `--repair` mends them",
    ], lines
    status, lines = check(env, "--repair")
    assert status == 0 and lines[-1] == "6 problem(s) found and repaired", lines
    assert lines[0].endswith(": deleted") and lines[1].endswith(": removed (pull or build it again)"), lines
    assert check(env) == (0, ["no problems found"])
    assert run_pykvm("container", "images", "-q", env=env)[1] == ""           # the incomplete image is gone
    assert os.listdir(root / "tmp") == []


def test_tmp_files_of_a_process_that_has_the_store_open_are_not_leftovers(stores):
    root, _, env = stores
    (root / "tmp" / "tmpzz.blob").write_bytes(b"a download in progress")
    busy = ImageStore(root)                                  # as a pull in progress holds it
    status, lines = check(env, "--repair")
    assert (status, lines) == (0, ["no problems found"])
    assert (root / "tmp" / "tmpzz.blob").exists()
    del busy
    status, lines = check(env, "--repair")
    assert lines == ["tmp/tmpzz.blob: is a leftover of a pykvm process that died: removed",
                     "1 problem(s) found and repaired"], lines


def test_the_store_in_use_lock_is_a_shared_flock_held_while_the_store_lives(tmp_path):
    store = ImageStore(tmp_path / "s")
    with open(tmp_path / "s" / "in-use") as f:
        with pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)        # other users share it
        fcntl.flock(f, fcntl.LOCK_UN)
        with store.exclusive() as alone:
            assert alone
        with pytest.raises(BlockingIOError):                  # held again after the check
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _state(store: StateStore, cid: str, **fields) -> ContainerState:
    state = ContainerState(id=cid, name=cid, created=time.time(), **fields)
    store.create(state)
    return state


def test_a_container_whose_monitor_was_killed_is_marked_stopped_with_an_unknown_status(tmp_path):
    store = StateStore(tmp_path / "state")
    _state(store, "lost1", pid=2 ** 22 + 1, monitor_pid=2 ** 22 + 2)         # neither exists
    (found,) = check_containers(store)
    assert found.line() == "container lost1: its exit status was never recorded (its monitor was killed)"
    (fixed,) = check_containers(store, repair=True)
    assert fixed.repaired == f"marked stopped (exit status {UNKNOWN_EXIT}: unknown)"
    assert store.exit_info("lost1")["exit_code"] == UNKNOWN_EXIT
    assert check_containers(store) == []


def test_the_runtimes_cache_is_not_a_broken_container(tmp_path):
    """<root>/.cache (compiled seccomp filters) has no state.json, and is no container's."""
    store = StateStore(tmp_path / "state")
    entry = tmp_path / "state" / ".cache" / "seccomp" / "0badf00d"
    entry.parent.mkdir(parents=True)
    entry.write_bytes(b"kept")
    assert check_containers(store) == check_containers(store, repair=True) == []
    assert entry.read_bytes() == b"kept"


def test_a_stopped_oci_container_keeps_its_cgroup_until_delete_a_run_one_does_not(tmp_path):
    """The first chaos run showed it: the check called an `oci create`d container's cgroup
    left over, when removing it is `oci delete`'s job (runtime.md)."""
    store = StateStore(tmp_path / "state")
    for cid, bundle in (("ocic", str(tmp_path)), ("runc1", "")):
        cgroup_dir = tmp_path / "cgroup" / cid                 # stands in for the recorded directory
        cgroup_dir.mkdir(parents=True)
        _state(store, cid, bundle=bundle, pid=2 ** 22 + 1, cgroup={"version": "v1", "dirs": [str(cgroup_dir)]})
        store.record_exit(cid, 0, False)
    assert [f.line() for f in check_containers(store)] == ["container runc1: its cgroup is left"]


def test_a_container_being_created_by_a_live_launcher_is_left_alone(tmp_path):
    store = StateStore(tmp_path / "state")
    me = os.getpid()
    _state(store, "young", launcher_pid=me, launcher_start=process_start_time(me))   # init not known yet
    assert check_containers(store, repair=True) == []
    assert store.load("young").id == "young"


def test_a_state_directory_without_state_json_is_removed(tmp_path):
    store = StateStore(tmp_path / "state")
    (Path(store.ensure()) / "half").mkdir()                          # a launcher killed after mkdir
    (found,) = check_containers(store, repair=True)
    assert found.line() == "container half: has no readable state.json: removed"
    assert not (Path(store.root) / "half").exists()


@pytest.mark.root
def test_a_mount_left_under_the_state_root_is_unmounted(tmp_path):
    target = tmp_path / "state" / "c1" / "rootfs"
    target.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "none", str(target)], check=True)
    try:
        (found,) = check_mounts([tmp_path / "state"], repair=True)
        assert found.line() == f"mount {target}: is left over: unmounted"
        assert check_mounts([tmp_path / "state"]) == []
    finally:
        subprocess.run(["umount", str(target)], capture_output=True)


@pytest.mark.root
def test_a_store_or_state_root_that_is_itself_a_mount_point_is_not_a_leftover(tmp_path):
    """An 8 MiB tmpfs store showed it: the first check called the store's own mount left
    over, and --repair would have unmounted it."""
    root = tmp_path / "store"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "none", str(root)], check=True)
    try:
        assert check_mounts([root], repair=True) == []
        assert os.path.ismount(root)
    finally:
        subprocess.run(["umount", str(root)], capture_output=True)


@pytest.mark.root
@pytest.mark.slow
def test_kill_9_of_a_foreground_runs_process_group_is_found_and_repaired(stores, busybox_rootfs):
    """Launcher, monitor and init killed at once: nobody records the exit, removes the
    cgroup or the --rm container.  `ps` and the check see it; --repair tidies it all."""
    _, state_root, env = stores
    env = {**os.environ, **env, "PYKVM_NETWORK": "none"}
    cgroup = PrivateCgroup(f"pykvm-check-{os.getpid()}")
    try:
        proc = subprocess.Popen([sys.executable, "-m", "pykvm", "container", "run", "--rm", "--rootfs",
                                 str(busybox_rootfs), "sh", "-c", "echo up; exec sleep 60"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=cgroup.enter)
        assert proc.stdout.readline() == b"up\n"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        (cid,) = containers_in(state_root)
        status, lines = check(env)
        assert lines[0] == (f"container {cid}: its exit status was never recorded (its monitor was killed); "
                            "its cgroup is left; it was run with --rm but is still here"), lines
        assert cgroup.containers(), "the kill left the container's cgroup"
        status, lines = check(env, "--repair")
        assert status == 0 and lines[0].endswith(": removed (it was run with --rm)"), lines
        assert check(env) == (0, ["no problems found"])
        assert cgroup.containers() == [] and cgroup.processes() == []
        assert containers_in(state_root) == []
    finally:
        for pid in cgroup.processes():
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while cgroup.remove() and time.monotonic() < deadline:
            time.sleep(0.05)


def test_a_broken_index_json_is_one_error_line_not_a_traceback(stores):
    """A broken index.json is one line, not a traceback (the check cannot mend it)."""
    root, _, env = stores
    (root / "oci" / "index.json").write_text(json.dumps({"manifests": "x"}))
    status, out, err = run_pykvm("container", "system", "check", env=env)
    assert status != 0 and TRACEBACK not in err
    assert err.count("pykvm: error:") == 1, err
