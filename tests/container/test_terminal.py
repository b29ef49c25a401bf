"""`-t` / process.terminal: the container's terminal comes from its own devpts, as under runc.

Each test drives pykvm from a pseudo-terminal of its own (ptyrun.py), as a user's
shell would, and looks from both sides: inside (`tty`, `stty size`, the fds),
and outside (the exit status, the terminal's settings afterwards, which host
processes hold a pty).  runc, given the same bundle, is the reference.
"""
from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time

import pytest
from clitools import containers_in

from ptyrun import lines, run_on_pty, set_size

pytestmark = pytest.mark.root

PTMX_MAJOR = 5                       # <linux/major.h> TTYAUX_MAJOR (5:2 is /dev/ptmx)
PTY_SLAVE_MAJORS = range(136, 144)   # <linux/major.h> UNIX98_PTY_SLAVE_MAJOR ... + 7
PROBE = ("tty; [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo STDIO-IS-A-TTY; stty size; "
         "ls /proc/self/fd; exit 3")


def cli(state_root, *args) -> list[str]:
    return [sys.executable, "-m", "pykvm", "container", *map(str, args)]


def env(state_root) -> dict:
    return {**os.environ, "PYKVM_STATE_ROOT": str(state_root)}


@pytest.mark.parametrize("flags", [["-it"], ["-t"]])
def test_tty_is_pts_0_of_the_containers_devpts(busybox_rootfs, state_root, flags):
    r = run_on_pty(cli(state_root, "run", "--rm", *flags, "--rootfs", busybox_rootfs,
                       "sh", "-c", PROBE), env(state_root), size=(33, 101))
    out = lines(r.output)
    assert out[:4] == ["/dev/pts/0", "STDIO-IS-A-TTY", "33 101", "0  1  2  3"], r.output
    assert r.status == 3
    assert r.mode_after == r.mode_before, "the host terminal's settings were not restored"


def test_interactive_shell_job_control_and_ctrl_d(busybox_rootfs, state_root):
    """An interactive sh: no "can't access tty; job control turned off", keys typed reach it."""
    r = run_on_pty(cli(state_root, "run", "--rm", "-it", "--rootfs", busybox_rootfs, "sh"),
                   env(state_root), steps=[(b"# ", lambda m: os.write(m, b"echo A$((40+2))B\r")),
                                           (b"A42B", lambda m: os.write(m, b"exit 4\r"))])
    assert b"A42B" in r.output
    assert b"job control" not in r.output and b"can't access tty" not in r.output, r.output
    assert r.status == 4
    assert r.mode_after == r.mode_before


def test_resize_and_ctrl_c_reach_the_container(busybox_rootfs, state_root):
    script = "trap 'stty size' WINCH; echo READY; while :; do sleep 0.1; done"
    r = run_on_pty(cli(state_root, "run", "--rm", "-it", "--rootfs", busybox_rootfs, "sh", "-c",
                       script), env(state_root), size=(24, 80),
                   steps=[(b"READY", lambda m: set_size(m, 50, 132)),
                          (b"50 132", lambda m: os.write(m, b"\x03"))])
    assert "50 132" in lines(r.output), r.output
    assert r.status == 130, "Ctrl-C is a byte to the container's pty, which sends it SIGINT"
    assert r.mode_after == r.mode_before


def _tty_fds(pid: int) -> dict[int, tuple[int, int]]:
    """fd -> (major, minor) for each of pid's fds that is a terminal device."""
    found = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            st = os.stat(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:
            continue
        major = os.major(st.st_rdev)
        if stat.S_ISCHR(st.st_mode) and (major in PTY_SLAVE_MAJORS or
                                         (major, os.minor(st.st_rdev)) == (PTMX_MAJOR, 2)):
            found[int(name)] = (major, os.minor(st.st_rdev))
    return found


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def test_pty_is_only_fds_0_1_2_of_the_command(busybox_rootfs, state_root):
    """Seen from the host: the monitor and PID 1 (pykvm-init, --init) hold no pty; the command holds only its slave,
    as 0, 1 and 2; nobody inside holds a master."""
    from pykvm.container.runtime.state import StateStore
    seen = {}

    def look(_master):
        (state,) = StateStore().list()
        init = state.pid
        command = _children(init)[0]
        monitor = int(open(f"/proc/{init}/stat").read().rpartition(")")[2].split()[1])
        seen.update(monitor=_tty_fds(monitor), init=_tty_fds(init), command=_tty_fds(command),
                    init_fds=sorted(int(fd) for fd in os.listdir(f"/proc/{init}/fd")))
        os.write(_master, b"\x03")

    r = run_on_pty(cli(state_root, "run", "--rm", "-it", "--init", "--rootfs", busybox_rootfs,
                       "sh", "-c", "echo READY; sleep 30"), env(state_root),
                   steps=[(b"READY", look)])
    assert r.status == 130
    assert seen["monitor"] == {} and seen["init"] == {}, seen
    assert seen["init_fds"] == [0, 1, 2], "PID 1 keeps nothing of the host but /dev/null"
    assert sorted(seen["command"]) == [0, 1, 2], seen
    assert len(set(seen["command"].values())) == 1
    assert next(iter(seen["command"].values()))[0] in PTY_SLAVE_MAJORS


def test_non_root_user_owns_its_terminal(busybox_rootfs, state_root):
    r = run_on_pty(cli(state_root, "run", "--rm", "-t", "-u", "1000", "--rootfs", busybox_rootfs,
                       "sh", "-c", "tty; stat -c %u /dev/pts/0; stty size"), env(state_root),
                   size=(20, 70))
    assert lines(r.output)[:3] == ["/dev/pts/0", "1000", "20 70"], r.output
    assert r.status == 0


def test_detached_tty_output_goes_to_the_log(pykvm, busybox_rootfs, state_root):
    cid = pykvm("container", "run", "-d", "-t", "--rootfs", busybox_rootfs, "sh", "-c",
                "tty; echo done; exit 6").stdout.strip()
    try:
        deadline = time.monotonic() + 10
        while "exited" not in pykvm("container", "ps", "-a").stdout:
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.05)
        assert "exited (6)" in pykvm("container", "ps", "-a").stdout
        logs = subprocess.run(cli(state_root, "logs", cid), env=env(state_root), capture_output=True)
        assert logs.stdout == b"/dev/pts/0\r\ndone\r\n", "the pty's own line ends, kept as written"
    finally:
        pykvm("container", "rm", "-f", cid)


# --- OCI bundles with process.terminal: true, side by side with runc ----------------------

@pytest.fixture
def tty_bundle(runc_bundle):
    """`runc spec`'s own config (terminal: true), running a probe of the terminal."""
    spec = json.loads((runc_bundle / "config.json").read_text())
    assert spec["process"]["terminal"] is True
    spec["process"]["args"] = ["sh", "-c", "tty; stty size; ls /dev; ls -l /dev/console; "
                                           "ls /proc/self/fd; exit 5"]
    (runc_bundle / "config.json").write_text(json.dumps(spec))
    return runc_bundle


def _without_dates(output: bytes) -> list[str]:
    """`ls -l` lines carry a time; keep the rest."""
    return [" ".join(w for w in line.split() if ":" not in w) for line in lines(output)]


def test_oci_run_terminal_same_as_runc(tty_bundle, state_root, tmp_path):
    runc = ["runc", "--root", str(tmp_path / "runc-state"), "run", "--bundle", str(tty_bundle), "t-runc"]
    for _ in range(3):
        theirs = run_on_pty(runc, env(state_root), size=(33, 101))
        # runc (1.1, Debian 12) sometimes runs the command before its pty is fully set up, and
        # busybox `stty size` then fails ("No child processes"); that is the peer's race, not
        # what this compares, so runc gets another go.
        if lines(theirs.output)[1:2] == ["33 101"]:
            break
    ours = run_on_pty(cli(state_root, "oci", "run", "--bundle", tty_bundle, "t-pykvm"),
                      env(state_root), size=(33, 101))
    assert theirs.status == ours.status == 5
    assert _without_dates(ours.output) == _without_dates(theirs.output), (ours.output, theirs.output)
    assert lines(ours.output)[:2] == ["/dev/pts/0", "33 101"]
    assert ours.mode_after == ours.mode_before


def _create_and_receive(argv, sock_path, environ) -> int:
    """Run a `create --console-socket`; return the pty master it sent us (recvtty's job)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(sock_path))
        listener.listen(1)
        listener.settimeout(30)
        proc = subprocess.Popen(argv, env=environ, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        conn, _ = listener.accept()
        with conn:
            _, fds, _, _ = socket.recv_fds(conn, 64, 1)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and len(fds) == 1, err
        return fds[0]


def _read_until_closed(master: int) -> bytes:
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:                          # EIO: the container's side is closed
            return out
        if not chunk:
            return out
        out += chunk


@pytest.mark.parametrize("runtime", ["pykvm", "runc"])
def test_oci_create_sends_the_master_to_the_console_socket(tty_bundle, state_root, tmp_path,
                                                           runtime):
    ids = {"pykvm": f"cs-{os.getpid()}", "runc": f"cs-runc-{os.getpid()}"}
    if runtime == "pykvm":
        base = cli(state_root, "oci")
    else:
        base = ["runc", "--root", str(tmp_path / "runc-state")]
    cid = ids[runtime]
    master = _create_and_receive(base + ["create", "--bundle", str(tty_bundle), "--console-socket",
                                         str(tmp_path / "console.sock"), cid],
                                 tmp_path / "console.sock", env(state_root))
    try:
        set_size(master, 27, 91)
        assert subprocess.run(base + ["start", cid], env=env(state_root)).returncode == 0
        out = _read_until_closed(master)
    finally:
        os.close(master)
        subprocess.run(base + ["delete", "--force", cid], env=env(state_root),
                       stderr=subprocess.DEVNULL)
    assert lines(out)[:2] == ["/dev/pts/0", "27 91"], out
    assert "console" in lines(out)[2].split(), out


@pytest.mark.parametrize("runtime", ["pykvm", "runc"])
def test_oci_create_sizes_the_pty_from_console_size(tty_bundle, state_root, tmp_path, runtime):
    """process.consoleSize: the pty's first size, before anyone resizes it (config.md)."""
    spec = json.loads((tty_bundle / "config.json").read_text())
    spec["process"]["consoleSize"] = {"height": 29, "width": 97}
    (tty_bundle / "config.json").write_text(json.dumps(spec))
    base = cli(state_root, "oci") if runtime == "pykvm" else ["runc", "--root", str(tmp_path / "runc-state")]
    cid = f"size-{runtime}-{os.getpid()}"
    master = _create_and_receive(base + ["create", "--bundle", str(tty_bundle), "--console-socket",
                                         str(tmp_path / "console.sock"), cid],
                                 tmp_path / "console.sock", env(state_root))
    try:
        assert subprocess.run(base + ["start", cid], env=env(state_root)).returncode == 0
        out = _read_until_closed(master)
    finally:
        os.close(master)
        subprocess.run(base + ["delete", "--force", cid], env=env(state_root), stderr=subprocess.DEVNULL)
    assert lines(out)[:2] == ["/dev/pts/0", "29 97"], out


def test_oci_create_terminal_needs_a_console_socket(pykvm, tty_bundle, state_root):
    r = pykvm("container", "oci", "create", "--bundle", tty_bundle, "no-socket")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "pykvm: error: process.terminal is true: `oci create` needs --console-socket PATH, "
        "a unix socket to send the terminal's master to (as runc)"]
    assert containers_in(state_root) == []


def test_oci_create_console_socket_without_terminal(pykvm, tty_bundle, state_root, tmp_path):
    spec = json.loads((tty_bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    (tty_bundle / "config.json").write_text(json.dumps(spec))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(tmp_path / "c.sock"))
        listener.listen(1)
        r = pykvm("container", "oci", "create", "--bundle", tty_bundle, "--console-socket",
                  tmp_path / "c.sock", "no-tty")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "only used with a terminal" in r.stderr
    assert containers_in(state_root) == []


def test_oci_create_console_socket_nobody_listens(pykvm, tty_bundle, state_root, tmp_path):
    r = pykvm("container", "oci", "create", "--bundle", tty_bundle, "--console-socket",
              tmp_path / "absent.sock", "no-listener")
    assert r.returncode == 1 and r.stderr == (f"pykvm: error: cannot connect to the console socket "
                                              f"{tmp_path / 'absent.sock'}: No such file or directory\n")
    assert not state_root.exists(), "refused before any state was written"
