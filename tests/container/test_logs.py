"""`pykvm container logs [-f] [--tail N]`: a detached container's output, followed or tailed."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from clitools import wait_for

pytestmark = pytest.mark.root


def _logs_process(state_root, *args):
    return subprocess.Popen([sys.executable, "-m", "pykvm", "container", "logs", *args],
                            env={**os.environ, "PYKVM_STATE_ROOT": str(state_root)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("tty", [False, True], ids=["pipe", "tty"])
def test_follow_streams_until_the_container_exits(pykvm, fresh_rootfs, state_root, tty):
    script = "echo one; while [ ! -e /go ]; do sleep 0.05; done; echo two; exit 3"
    r = pykvm("container", "run", "-d", *(["-t"] if tty else []), "--rootfs", fresh_rootfs, "sh", "-c", script)
    cid = r.stdout.strip()
    assert r.returncode == 0, r.stderr
    try:
        follow = _logs_process(state_root, "-f", cid)
        assert follow.stdout.readline().rstrip("\r\n") == "one"
        time.sleep(0.3)
        assert follow.poll() is None, "still following: the container runs"
        (fresh_rootfs / "go").touch()
        assert follow.stdout.readline().rstrip("\r\n") == "two"
        assert follow.wait(timeout=10) == 0, follow.stderr.read()
        assert follow.stdout.read() == "", "nothing after the container's last line"
        assert "exited (3)" in pykvm("container", "ps", "-a").stdout
        again = pykvm("container", "logs", "-f", cid)        # stopped: print all, return at once
        assert again.stdout.replace("\r\n", "\n") == "one\ntwo\n"
    finally:
        pykvm("container", "rm", "-f", cid)


def test_tail(pykvm, busybox_rootfs, state_root):
    cid = pykvm("container", "run", "-d", "--rootfs", busybox_rootfs, "seq", "10").stdout.strip()
    try:
        wait_for(lambda: "exited (0)" in pykvm("container", "ps", "-a").stdout)
        def logs(*opts):
            r = pykvm("container", "logs", *opts, cid)
            return r.returncode, r.stdout
        assert logs("--tail", "3") == (0, "8\n9\n10\n")
        assert logs("-n", "1") == (0, "10\n")
        assert logs("--tail", "0") == (0, "")
        assert logs("--tail", "all") == logs("--tail", "100") == logs() == (0, "".join(f"{i}\n" for i in range(1, 11)))
        assert logs("-f", "--tail", "2") == (0, "9\n10\n")
        r = pykvm("container", "logs", "--tail", "-1", cid)
        assert r.returncode == 2 and r.stderr == \
            "pykvm: error: bad --tail '-1': give a number of lines (0 or more) or 'all'\n", r.stderr
    finally:
        pykvm("container", "rm", "-f", cid)


def test_a_foreground_container_has_no_log(pykvm, busybox_rootfs):
    r = pykvm("container", "run", "--name", "fg", "--rootfs", busybox_rootfs, "echo", "to-the-terminal")
    assert r.stdout == "to-the-terminal\n"
    try:
        r = pykvm("container", "logs", "fg")
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith("pykvm: error: container ") and "only detached (-d)" in r.stderr
    finally:
        pykvm("container", "rm", "fg")
    assert pykvm("container", "logs", "fg").stderr == "pykvm: error: no such container: fg\n"
