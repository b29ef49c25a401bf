"""`pykvm container exec`: a new process inside a running container (docker exec, runc exec).

The container's command records what it sees (namespaces, hostname, mounts, cgroups);
exec's process must see the same.  Real namespaces and cgroups: marker `root`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from clitools import wait_for
from ptyrun import lines, run_on_pty

pytestmark = pytest.mark.root

# What a process sees of its container: one line per namespace, hostname, cgroups, mounts.
PROBE = ("for n in pid mnt uts ipc net cgroup user; do readlink /proc/self/ns/$n; done; hostname; "
         "cat /proc/self/cgroup; cat /proc/self/mountinfo")


@pytest.fixture
def running(pykvm, fresh_rootfs):
    """A `run -d` container whose command saved PROBE's output in /seen, then sleeps."""
    r = pykvm("container", "run", "-d", "--name", "box", "--hostname", "boxhost", "--memory", "64M",
              "-e", "FROM_RUN=1", "-w", "/tmp", "--rootfs", fresh_rootfs,
              "sh", "-c", f"({PROBE}) > /seen.tmp; mv /seen.tmp /seen; exec sleep 1000")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    wait_for(lambda: (fresh_rootfs / "seen").exists())
    yield cid
    assert pykvm("container", "rm", "-f", cid).returncode == 0


def _cgroup_pids(state_root: Path, cid: str) -> set[int]:
    import json
    state = json.loads((state_root / cid / "state.json").read_text())
    return {int(p) for d in state["cgroup"]["dirs"] for p in (Path(d) / "cgroup.procs").read_text().split()}


def test_exec_sees_what_the_container_s_command_sees(pykvm, running, fresh_rootfs):
    r = pykvm("container", "exec", "box", "sh", "-c", PROBE)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (fresh_rootfs / "seen").read_text()
    assert "boxhost\n" in r.stdout
    host_ns = {os.readlink(f"/proc/self/ns/{n}") for n in ("pid", "mnt", "uts", "ipc", "net", "cgroup")}
    assert not host_ns & set(r.stdout.splitlines()[:6]), "none of them is the host's"


def test_exec_is_in_the_container_s_pid_namespace(pykvm, running):
    r = pykvm("container", "exec", "box", "sh", "-c", "echo $$; ps -o pid,comm; true")
    assert r.returncode == 0, r.stderr
    me, _, *rows = r.stdout.split("\n")
    procs = dict(row.split() for row in rows if row.strip())
    assert procs["1"] == "sleep", procs          # the container's command is its PID 1
    assert int(me) > 1 and procs[me] == "sh", (me, procs)


def test_files_are_shared_both_ways(pykvm, running, fresh_rootfs):
    assert pykvm("container", "exec", "box", "sh", "-c", "echo from-exec > /tmp/note").returncode == 0
    assert (fresh_rootfs / "tmp/note").read_text() == "from-exec\n"
    assert pykvm("container", "exec", "box", "cat", "/seen").stdout == (fresh_rootfs / "seen").read_text()


def test_the_container_s_command_sees_what_exec_writes(pykvm, busybox_rootfs):
    """/dev/shm is a tmpfs mounted in the container's own mount namespace: only a process in
    that namespace can leave a file there for the command to find."""
    script = "while [ ! -e /dev/shm/from-exec ]; do sleep 0.05; done; cat /dev/shm/from-exec"
    cid = pykvm("container", "run", "-d", "--rootfs", busybox_rootfs, "sh", "-c", script).stdout.strip()
    try:
        r = pykvm("container", "exec", cid, "sh", "-c", "echo written-by-exec > /dev/shm/from-exec")
        assert r.returncode == 0, r.stderr
        r = pykvm("container", "logs", "-f", cid)
        assert r.stdout == "written-by-exec\n", r.stdout + r.stderr
        assert "exited (0)" in pykvm("container", "ps", "-a").stdout
    finally:
        pykvm("container", "rm", "-f", cid)


def test_exec_process_is_in_the_container_s_cgroup(pykvm, running, state_root):
    """Seen from the host: while exec runs, its process is in the container's (limited) cgroup."""
    import subprocess
    import sys
    before = _cgroup_pids(state_root, running)
    proc = subprocess.Popen([sys.executable, "-m", "pykvm", "container", "exec", "-i", "box", "sh", "-c",
                             "echo $$; cat /sys/fs/cgroup/memory/memory.limit_in_bytes; echo; read x"],
                            env={**os.environ, "PYKVM_STATE_ROOT": str(state_root)},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip().isdigit()
        assert int(proc.stdout.readline()) == 64 << 20, "the container's memory limit"
        assert proc.stdout.readline() == "\n", "cat has been reaped"
        added = _cgroup_pids(state_root, running) - before
        shell = [p for p in added if Path(f"/proc/{p}/comm").read_text() == "sh\n"]
        assert len(shell) == 1 and len(added) == 2, added   # the shell and its joiner (exec.py)
    finally:
        proc.communicate("\n", timeout=10)
    assert proc.returncode == 0
    assert _cgroup_pids(state_root, running) == before, "nothing left behind in the cgroup"


def test_process_settings_come_from_the_container(pykvm, running):
    from pykvm.container.runtime.capabilities import DEFAULT_CAPS, cap_numbers
    r = pykvm("container", "exec", "box", "sh", "-c",
              'echo "$FROM_RUN|$HOSTNAME|$(pwd)|$(id -u)"; grep -E "^(CapBnd|CapEff|NoNewPrivs)" /proc/self/status')
    first, *status = r.stdout.splitlines()
    assert first == "1|boxhost|/tmp|0", r.stdout + r.stderr
    status = dict(line.split(":\t") for line in status)
    default = sum(1 << c for c in cap_numbers(DEFAULT_CAPS))
    assert int(status["CapBnd"], 16) == default and int(status["CapEff"], 16) == default
    assert status["NoNewPrivs"] == "1"
    r = pykvm("container", "exec", "-u", "user", "-w", "/", "-e", "FROM_RUN=2", "box", "sh", "-c",
              'echo "$FROM_RUN|$(pwd)|$(id -u)|$HOME"')
    assert r.stdout == "2|/|1000|/tmp\n", r.stdout + r.stderr


@pytest.mark.parametrize("script, code", [("exit 0", 0), ("exit 3", 3), ("kill -9 $$", 137)])
def test_exit_status_propagates(pykvm, running, script, code):
    assert pykvm("container", "exec", "box", "sh", "-c", script).returncode == code


def test_stdin_only_with_i(pykvm, running):
    assert pykvm("container", "exec", "-i", "box", "cat", input="piped\n").stdout == "piped\n"
    assert pykvm("container", "exec", "box", "cat", input="piped\n").stdout == ""


def test_only_stdio_is_passed_in(pykvm, running, tmp_path):
    """A host fd left open by exec's caller does not reach the container (CVE-2024-21626's lesson)."""
    leaked = os.open(tmp_path / "secret", os.O_CREAT | os.O_RDWR)
    os.set_inheritable(leaked, True)
    try:
        r = pykvm("container", "exec", "box", "ls", "/proc/self/fd", pass_fds=(leaked,))
    finally:
        os.close(leaked)
    assert r.returncode == 0 and set(r.stdout.split()) == {"0", "1", "2", "3"}, r.stdout + r.stderr


def test_command_not_found_is_127(pykvm, running):
    r = pykvm("container", "exec", "box", "no-such-command")
    assert r.returncode == 127 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("pykvm: error: no-such-command: command not found in the container")


def test_bad_container_is_one_line(pykvm, busybox_rootfs, state_root):
    r = pykvm("container", "exec", "nothing-here", "true")
    assert r.returncode == 1 and r.stderr == "pykvm: error: no such container: nothing-here\n"
    cid = pykvm("container", "run", "-d", "--rootfs", busybox_rootfs, "true").stdout.strip()
    wait_for(lambda: "exited (0)" in pykvm("container", "ps", "-a").stdout)
    r = pykvm("container", "exec", cid, "true")
    assert r.returncode == 1 and r.stderr == \
        f"pykvm: error: container {cid} is stopped, not running: cannot exec in it\n", r.stderr
    assert pykvm("container", "rm", cid).returncode == 0


def test_tty_from_the_container_s_devpts(pykvm, running, state_root):
    """-it: the command's stdio is a pty of the container's devpts (/dev/pts/0: the container
    itself has none), with our terminal's size, TERM=xterm, and only fds 0-2."""
    import sys
    env = {**os.environ, "PYKVM_STATE_ROOT": str(state_root)}
    run = run_on_pty([sys.executable, "-m", "pykvm", "container", "exec", "-it", "box", "sh", "-c",
                      "tty; stty size; echo $TERM; ls /proc/self/fd; exit 4"], env, size=(33, 101))
    assert run.status == 4, run.text
    assert lines(run.output)[:4] == ["/dev/pts/0", "33 101", "xterm", "0  1  2  3"], run.text
    assert run.mode_after == run.mode_before, "our terminal's settings are restored"


def test_launcher_killed_takes_the_command_with_it(pykvm, running, state_root):
    import signal
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "pykvm", "container", "exec", "box", "sleep", "300"],
                            env={**os.environ, "PYKVM_STATE_ROOT": str(state_root)})
    wait_for(lambda: "sleep 300" in pykvm("container", "exec", "box", "ps", "-o", "args").stdout)
    before = _cgroup_pids(state_root, running)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    wait_for(lambda: len(_cgroup_pids(state_root, running)) == len(before) - 2)   # joiner, sleep
    assert "sleep 300" not in pykvm("container", "exec", "box", "ps", "-o", "args").stdout


def test_detached_exec_runs_on_in_the_background(pykvm, running, fresh_rootfs, state_root):
    before = _cgroup_pids(state_root, running)
    r = pykvm("container", "exec", "-d", "box", "sh", "-c",
              "while [ ! -e /go ]; do sleep 0.05; done; echo done > /tmp/detached; echo lost")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), "returns at once, output discarded"
    added = _cgroup_pids(state_root, running) - before            # its joiner, sh (and sh's sleep)
    comms = [_comm(p) for p in added]
    assert "sh" in comms and len(added) >= 2, comms
    (fresh_rootfs / "go").touch()
    wait_for(lambda: (fresh_rootfs / "tmp/detached").exists())
    wait_for(lambda: _cgroup_pids(state_root, running) == before)
    r = pykvm("container", "exec", "-d", "-t", "box", "true")
    assert r.returncode == 2 and r.stderr == \
        "pykvm: error: exec -d runs the command in the background: it cannot have -i or -t\n"
    r = pykvm("container", "exec", "-d", "box", "no-such-command")
    assert r.returncode == 127 and "command not found" in r.stderr, "a failed start is still reported"


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""                                            # it has just exited


def test_ctrl_c_reaches_the_command(pykvm, running, state_root):
    import signal
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "pykvm", "container", "exec", "box", "sh", "-c",
                             "trap 'echo got-INT; exit 9' INT; echo ready; while :; do sleep 0.1; done"],
                            env={**os.environ, "PYKVM_STATE_ROOT": str(state_root)},
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 9
    assert re.fullmatch(r"got-INT\n", proc.stdout.read())


def test_host_network_container(pykvm, busybox_rootfs):
    """exec into a `--network host` container: its network namespace is ours, the rest its own."""
    cid = pykvm("container", "run", "-d", "--network", "host", "--rootfs", busybox_rootfs,
                "sleep", "1000").stdout.strip()
    try:
        r = pykvm("container", "exec", cid, "sh", "-c", "readlink /proc/self/ns/net; readlink /proc/self/ns/uts")
        assert r.returncode == 0, r.stderr
        net, uts = r.stdout.split()
        assert net == os.readlink("/proc/self/ns/net") and uts != os.readlink("/proc/self/ns/uts")
    finally:
        pykvm("container", "rm", "-f", cid)


def test_exec_into_an_oci_container_whose_pid_1_is_the_command(pykvm, runc_bundle, tmp_path):
    import json
    spec = json.loads((runc_bundle / "config.json").read_text())
    spec["process"].update(terminal=False, args=["sleep", "1000"], env=["PATH=/bin", "FROM_SPEC=yes"], cwd="/tmp")
    (runc_bundle / "config.json").write_text(json.dumps(spec))
    with open(tmp_path / "out", "w") as out:
        assert pykvm("container", "oci", "create", "--bundle", runc_bundle, "o1", stdout=out).returncode == 0
    try:
        assert pykvm("container", "oci", "start", "o1").returncode == 0
        r = pykvm("container", "exec", "o1", "sh", "-c", 'cat /proc/1/comm; echo "$FROM_SPEC $(pwd) $(hostname)"')
        assert r.stdout == "sleep\nyes /tmp runc\n", r.stdout + r.stderr
    finally:
        pykvm("container", "oci", "delete", "--force", "o1")
