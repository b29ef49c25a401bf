"""`container run -d --isolation vm`: the parent's half, which runs on any host.

Booting the guest needs hardware KVM (the lane's tests/linux/test_isolation_vm.py does that);
what happens before the boot does not: the state directory, the log, the background process
and the exit it records when the run cannot start."""

import json
import os
import time

from pykvm.commands.container.isolation import run_detached
from pykvm.container.runtime.config import RunConfig
from pykvm.container.runtime.logs import LOG_NAME
from pykvm.container.runtime.state import StateStore

WAIT_S = 30


def test_a_detached_vm_run_that_cannot_start_says_why_in_its_log_and_exits_125(tmp_path, monkeypatch):
    monkeypatch.setenv("PYKVM_STATE_ROOT", str(tmp_path / "state"))
    monkeypatch.setenv("PYKVM_STORE", str(tmp_path / "store"))
    cfg = RunConfig(args=["true"], id="vmdetached1", name="vmdetached1")
    guest = (tmp_path / "vmlinuz", tmp_path / "initramfs.cpio")
    cid = run_detached("no-such-image:1", cfg, "256M", guest, 1)
    assert cid == "vmdetached1"
    store = StateStore()
    deadline = time.monotonic() + WAIT_S
    while store.exit_info(cid) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    exit_info = store.exit_info(cid)
    assert exit_info is not None, f"no exit recorded within {WAIT_S} s"
    assert exit_info["exit_code"] == 125                # Docker's "the run itself failed"
    with open(os.path.join(store.dir(cid), LOG_NAME)) as f:
        log = f.read()
    assert log.startswith("pykvm: error: ") and "no-such-image" in log, log
    assert "Traceback" not in log
    assert json.load(open(os.path.join(store.dir(cid), "state.json")))["isolation"] == "vm"
