"""Escape attempts, as runc's CVEs taught them, and bad input (marker `root` where it runs).

CVE-2019-5736: the container overwrote the host's runtime binary through /proc/self/exe.
CVE-2021-30465 and friends: a rootfs whose mount targets are symlinks to host paths.
CVE-2024-21626: a host fd leaked into the container ("Leaky Vessels").
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest


def mountinfo() -> list[str]:
    return Path("/proc/self/mountinfo").read_text().splitlines()


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.root
@pytest.mark.parametrize("entry", ["proc", "dev", "sys"])
def test_symlinked_mount_target_stays_inside(pykvm, fresh_rootfs, tmp_path, entry):
    """rootfs/<entry> -> a host directory: whatever happens, the host directory is untouched."""
    host_dir = tmp_path / "host-target"
    host_dir.mkdir()
    (host_dir / "marker").write_text("host")
    os.rmdir(fresh_rootfs / entry)
    (fresh_rootfs / entry).symlink_to(host_dir)           # absolute link to a host path
    before = mountinfo()
    pykvm("container", "run", "--rm", "--rootfs", fresh_rootfs, "true")
    assert mountinfo() == before
    assert sorted(os.listdir(host_dir)) == ["marker"], "nothing was created or mounted on the host path"
    # The link was resolved inside the rootfs: a directory with the host path's name appeared there.
    assert (fresh_rootfs / str(host_dir).lstrip("/")).is_dir()


@pytest.mark.root
def test_symlink_to_host_root_is_contained(pykvm, fresh_rootfs):
    os.rmdir(fresh_rootfs / "proc")
    (fresh_rootfs / "proc").symlink_to("/")
    before = mountinfo()
    pykvm("container", "run", "--rm", "--rootfs", fresh_rootfs, "true")
    assert mountinfo() == before
    assert Path("/proc/self/status").exists() and Path("/etc/os-release").exists()


@pytest.mark.root
def test_proc_self_exe_cannot_reach_host_binaries(pykvm, busybox_rootfs):
    interpreter = os.path.realpath(sys.executable)
    before = sha(interpreter)
    script = ("echo pwned > /proc/1/exe 2>/dev/null && echo WROTE-INIT-EXE; "
              "cat /proc/1/exe > /dev/null 2>&1 && echo READ-INIT-EXE; "
              "readlink /proc/1/fd/1 > /dev/null 2>&1 && echo READLINK-INIT-FD; "
              "cat /proc/1/environ > /dev/null 2>&1 && echo READ-INIT-ENVIRON; "
              "ls /proc/1/root/ > /dev/null 2>&1 && echo SAW-INIT-ROOT; "
              "echo pwned > /proc/self/exe 2>/dev/null && echo WROTE-SELF-EXE; echo done")
    r = pykvm("container", "run", "--rm", "--init", "--rootfs", busybox_rootfs, "sh", "-c", script)
    assert r.stdout == "done\n", r.stdout
    assert sha(interpreter) == before
    pykvm_files = Path(__file__).resolve().parents[2] / "pykvm"
    r = pykvm("container", "run", "--rm", "--rootfs", busybox_rootfs, "ls", str(pykvm_files))
    assert r.returncode != 0, "pykvm's own files are not visible inside"


@pytest.mark.root
def test_init_command_line_shows_no_host_path(pykvm, busybox_rootfs):
    """/proc/1/cmdline inside was the launcher's: the host's Python, its paths, our argv."""
    r = pykvm("container", "run", "--rm", "--init", "--rootfs", busybox_rootfs, "sh", "-c",
              "cat /proc/1/cmdline; echo; ps -o pid,args")
    assert r.returncode == 0, r.stderr
    cmdline, _, ps = r.stdout.partition("\n")
    assert cmdline == "pykvm-init\0", repr(cmdline)
    assert sys.executable not in r.stdout and str(busybox_rootfs) not in r.stdout, r.stdout
    assert any(line.split() == ["1", "pykvm-init"] for line in ps.splitlines()), ps


@pytest.mark.root
def test_host_fd_not_visible(pykvm, busybox_rootfs, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    fd = os.open(secret, os.O_RDONLY)
    os.set_inheritable(fd, True)
    try:
        r = pykvm("container", "run", "--rm", "--rootfs", busybox_rootfs, "sh", "-c",
                  f"cat /proc/self/fd/{fd} 2>/dev/null; cat /dev/fd/{fd} 2>/dev/null; echo end",
                  pass_fds=(fd,))
    finally:
        os.close(fd)
    assert r.stdout == "end\n"


@pytest.mark.root
@pytest.mark.parametrize("detach", [False, True])
def test_init_keeps_no_host_fd(pykvm, busybox_rootfs, tmp_path, state_root, detach):
    """PID 1 (our Python init, --init) holds nothing of the host's: looked at from the host, through
    /proc/<init>/fd, while the command runs.  Only /dev/null as 0-1-2."""
    import json
    import subprocess
    import sys
    import time
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    fd = os.open(secret, os.O_RDONLY)
    os.set_inheritable(fd, True)
    argv = [sys.executable, "-m", "pykvm", "container", "run", "--rm", *(["-d"] if detach else []),
            "--name", "fds", "--init", "--rootfs", str(busybox_rootfs), "sleep", "30"]
    env = {**os.environ, "PYKVM_STATE_ROOT": str(state_root)}
    proc = subprocess.Popen(argv, pass_fds=(fd,), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(fd)
    try:
        deadline = time.monotonic() + 20
        while True:
            states = list(state_root.glob("*/state.json")) if state_root.exists() else []
            pid = json.loads(states[0].read_text())["pid"] if states else 0
            if pid and Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
                break                                    # init has forked the command
            assert time.monotonic() < deadline, "the container did not start"
            time.sleep(0.05)
        settle = time.monotonic() + 5                    # init closes what it does not need after the fork
        while True:
            fds = _open_fds(pid)
            if fds == {0: "/dev/null", 1: "/dev/null", 2: "/dev/null"} or time.monotonic() > settle:
                break
            time.sleep(0.05)
    finally:
        pykvm("container", "rm", "-f", "fds")
        proc.wait(timeout=20)
    assert fds == {0: "/dev/null", 1: "/dev/null", 2: "/dev/null"}, fds


def _open_fds(pid: int) -> dict[int, str]:
    """fd number -> what it points at, for another process (fds closing meanwhile are skipped)."""
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:
            pass
    return out


# --- bad input: one line, a non-zero status, no traceback ---------------------------------------

@pytest.mark.parametrize("args,code,message", [
    (["run", "--rm", "--rootfs", "/no/such/dir", "sh"], 1, "rootfs /no/such/dir does not exist"),
    (["run", "--rm", "no-such-image"], 1, "no-such-image"),
    (["run", "--rm", "--memory", "12Q", "--rootfs", "/", "sh"], 2, "--memory '12Q' is not a size"),
    (["run", "--rm", "--cpus", "lots", "--rootfs", "/", "sh"], 2, "bad --cpus 'lots'"),
    (["run", "--rm", "--pids-limit", "0", "--rootfs", "/", "sh"], 2, "bad --pids-limit 0"),
    (["run", "--rm"], 2, "give an IMAGE or --rootfs DIR"),
    (["run", "--rm", "--rootfs", "/"], 2, "no command to run"),
    (["kill", "-s", "SIGFOO", "x"], 2, "unknown signal 'SIGFOO'"),
    (["stop", "nonexistent"], 1, "no such container: nonexistent"),
    (["logs", "nonexistent"], 1, "no such container: nonexistent"),
    (["oci", "state", "nonexistent"], 1, "no such container: nonexistent"),
])
def test_bad_input_is_one_clear_line(pykvm, args, code, message):
    r = pykvm("container", *args)
    assert r.returncode == code, (r.returncode, r.stderr)
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_invalid_config_json_names_the_field(pykvm, tmp_path):
    (tmp_path / "config.json").write_text('{"ociVersion": "1.0.2", "process": {"args": "sh"}, '
                                          '"root": {"path": "rootfs"}}')
    r = pykvm("container", "oci", "create", "--bundle", tmp_path, "c1")
    assert r.returncode == 2
    assert r.stderr.strip() == "pykvm: error: config.json: process.args must be a non-empty list of strings"
