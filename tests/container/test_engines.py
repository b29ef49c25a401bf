"""pykvm-runc under the real engines: Podman 4.3 (through conmon) and containerd 1.6 (through
containerd-shim-runc-v2 and go-runc), with the busybox image pykvm builds and saves.

Each engine keeps to this test's temporary directories: Podman by a containers.conf and a
storage.conf of its own, containerd by a daemon started here with its own root, state and
socket.  runc, the oracle, runs the same commands where the engines leave a choice.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from clitools import wait_for
from engine_fixtures import podman_config
from fd_passing import pipe_holding, run_with_fds
from image_fixtures import bundled_context, run_pykvm

pytestmark = pytest.mark.root

PYKVM_RUNC = Path(sys.executable).with_name("pykvm-runc")
RUNC = shutil.which("runc")
# The host's hard RLIMIT_NOFILE may be below Podman's default (1048576): runc and pykvm
# both refuse to raise a hard limit, so every container asks for less.
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
# This file tests the calling contract; whether Podman's default seccomp profile is applied
# is bundle.py's business, tested with the filter itself.
RUN_OPTS = [*LIMITS, "--security-opt", "seccomp=unconfined"]
IMAGE = "localhost/busybox:engines"


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.skip(f"needs {program} (Debian package {program}; .ci/packages installs it)")
    return path


@pytest.fixture(scope="module")
def image_archive(tmp_path_factory) -> Path:
    """The bundled busybox image, built by pykvm and saved as an OCI archive."""
    if not PYKVM_RUNC.exists():
        pytest.skip(f"{PYKVM_RUNC} is missing: `make venv` installs it")
    tmp = tmp_path_factory.mktemp("image")
    env = {"PYKVM_STORE": str(tmp / "store")}
    status, _, err = run_pykvm("container", "build", "-q", "-t", IMAGE.removeprefix("localhost/"),
                               str(bundled_context(tmp, "busybox")), env=env)
    assert status == 0, err
    archive = tmp / "busybox.tar"
    status, _, err = run_pykvm("container", "save", "-o", str(archive), IMAGE.removeprefix("localhost/"),
                               env=env)
    assert status == 0, err
    return archive


def runtime_wrapper(directory: Path, state: Path, program: str = str(PYKVM_RUNC)) -> Path:
    """An executable that runs `program --root STATE`: Podman 4.3 passes its --runtime-flag
    options on some calls and not on its clean-up `delete`, so the state directory is fixed
    here, as a packager's wrapper would fix it."""
    path = directory / f"{Path(program).name}-wrapper"
    path.write_text(f"#!/bin/sh\nexec {program} --root {state} \"$@\"\n")
    path.chmod(0o755)
    return path


# --- Podman ----------------------------------------------------------------------------

@dataclass
class Podman:
    """`podman` with this test's configuration and a runtime program."""

    env: dict
    runtime: Path

    def __call__(self, *args, timeout: float = 90, check: bool = False, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        r = subprocess.run(["podman", "--runtime", str(self.runtime), *map(str, args)], env=self.env,
                           text=True, timeout=timeout, **kw)
        if check:
            assert r.returncode == 0, f"podman {' '.join(map(str, args))}: {r.returncode}\n{r.stderr}"
        return r

    def with_runtime(self, runtime: Path) -> Podman:
        return Podman(self.env, runtime)


@pytest.fixture(scope="module")
def podman_env(tmp_path_factory, image_archive) -> dict:
    """containers.conf and storage.conf under a temporary directory; the image loaded."""
    need("podman")
    need("conmon")
    tmp = tmp_path_factory.mktemp("podman")
    env = podman_config(tmp)
    r = subprocess.run(["podman", "load", "-i", str(image_archive)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    yield env
    subprocess.run(["podman", "rm", "-af", "-t", "0"], env=env, capture_output=True, timeout=120)


@pytest.fixture
def podman(podman_env, tmp_path) -> Podman:
    return Podman(podman_env, runtime_wrapper(tmp_path, tmp_path / "state"))


def test_podman_run_echo(podman, tmp_path):
    r = podman("run", "--rm", *RUN_OPTS, IMAGE, "echo", "hi")
    assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr
    assert not any((tmp_path / "state").iterdir()), "delete left the container's state"


def test_podman_passes_the_exit_status_through(podman):
    r = podman("run", "--rm", *RUN_OPTS, IMAGE, "sh", "-c", "exit 42")
    assert r.returncode == 42, r.stderr
    r = podman("run", "--rm", *RUN_OPTS, IMAGE, "no-such-command")
    assert r.returncode == 127, r.stderr


def test_podman_memory_limit_oom_is_137(podman):
    """--memory reaches linux.resources.memory.limit; the OOM kill is the command's end."""
    r = podman("run", "--rm", "--memory", "16m", "--memory-swap", "16m", *RUN_OPTS, IMAGE, "sh", "-c",
               "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived")
    assert r.returncode == 137 and "survived" not in r.stdout, (r.returncode, r.stdout, r.stderr)


def test_podman_pids_limit(podman):
    script = "i=0; while [ $i -lt 40 ]; do sleep 30 & i=$((i+1)); done; echo done"
    r = podman("run", "--rm", "--pids-limit", "16", *RUN_OPTS, IMAGE, "sh", "-c", script)
    assert r.returncode != 0 and "can't fork" in r.stderr, (r.returncode, r.stdout, r.stderr)


def test_podman_logs(podman):
    """conmon, not the runtime, keeps the log: the container's stdout reaches it through
    the stdio that `create` passes on."""
    cid = podman("run", "-d", *RUN_OPTS, IMAGE, "sh", "-c", "echo out; echo err >&2", check=True).stdout.strip()
    try:
        assert podman("wait", cid, check=True).stdout.strip() == "0"
        logs = podman("logs", cid, check=True)
        assert (logs.stdout, logs.stderr) == ("out\n", "err\n")
    finally:
        podman("rm", "-f", cid)


def test_podman_detached_exec_stop_rm(podman):
    """-d, then exec (status and output), the process tree conmon expects, stop, rm."""
    cid = podman("run", "-d", *RUN_OPTS, IMAGE, "sh", "-c",
                 "trap 'exit 3' TERM; while :; do sleep 1; done", check=True).stdout.strip()
    try:
        pid, conmon = map(int, podman("inspect", "--format", "{{.State.Pid}} {{.State.ConmonPid}}",
                                      cid, check=True).stdout.split())
        assert parent_of(pid) == conmon, "the container's process is conmon's child, as under runc"
        r = podman("exec", cid, "sh", "-c", "echo in; cat /proc/1/comm; exit 5")
        assert (r.returncode, r.stdout) == (5, "in\nsh\n"), r.stderr
        assert cid[:12] in podman("ps", check=True).stdout
        podman("stop", "-t", "10", cid, check=True)
        state = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", cid, check=True)
        assert state.stdout.split() == ["exited", "3"], "SIGTERM reached the trap: exit 3"
    finally:
        podman("rm", "-f", cid)
    assert podman("inspect", cid).returncode != 0


def test_podman_kill_gives_137(podman):
    cid = podman("run", "-d", *RUN_OPTS, IMAGE, "sleep", "100", check=True).stdout.strip()
    try:
        podman("kill", cid, check=True)          # SIGKILL by default
        assert podman("wait", cid, check=True).stdout.strip() == "137"
    finally:
        podman("rm", "-f", cid)


def test_podman_stop_escalates_to_sigkill(podman):
    """`sleep` as PID 1 has no handler for SIGTERM, so the kernel drops it (pid_namespaces(7));
    podman stop sends SIGKILL after its timeout, as under runc."""
    cid = podman("run", "-d", *RUN_OPTS, IMAGE, "sleep", "100", check=True).stdout.strip()
    try:
        podman("stop", "-t", "1", cid, check=True)
        state = podman("inspect", "--format", "{{.State.ExitCode}}", cid, check=True)
        assert state.stdout.strip() == "137"
    finally:
        podman("rm", "-f", cid)


def test_podman_terminal_through_the_console_socket(podman):
    """-t: conmon listens on --console-socket; the pty master comes from inside, for run and exec."""
    r = podman("run", "--rm", "-t", *RUN_OPTS, IMAGE, "sh", "-c", "tty; echo $$")
    assert (r.returncode, r.stdout.split()) == (0, ["/dev/pts/0", "1"]), r.stderr
    cid = podman("run", "-d", *RUN_OPTS, IMAGE, "sleep", "100", check=True).stdout.strip()
    try:
        r = podman("exec", "-t", cid, "tty")
        assert (r.returncode, r.stdout.split()) == (0, ["/dev/pts/0"]), r.stderr
    finally:
        podman("rm", "-f", "-t", "0", cid)


def test_podman_sees_the_same_container_under_runc(podman, tmp_path):
    """The same podman run under runc and under pykvm-runc: the same view from inside."""
    if not RUNC:
        pytest.skip("needs runc (Debian package runc)")
    probe = ("echo $$; id; cat /proc/1/cmdline; echo; grep -E '^(Cap|NoNewPrivs)' /proc/self/status; "
             "ulimit -n; ulimit -u; umask; ls /dev; echo $PATH; pwd")
    runc = podman.with_runtime(runtime_wrapper(tmp_path, tmp_path / "runc-state", RUNC))
    ours, theirs = (p("run", "--rm", *RUN_OPTS, IMAGE, "sh", "-c", probe) for p in (podman, runc))
    assert theirs.returncode == ours.returncode == 0, ours.stderr + theirs.stderr
    assert ours.stdout == theirs.stdout


def test_podman_preserve_fds_as_under_runc(podman, tmp_path):
    """podman run --preserve-fds 1: conmon passes its fd 3 on to `create --preserve-fds 1`,
    and the container reads the pipe the test gave Podman as fd 3."""
    if not RUNC:
        pytest.skip("needs runc (Debian package runc)")
    runc = podman.with_runtime(runtime_wrapper(tmp_path, tmp_path / "runc-state", RUNC))
    probe = "ls /proc/self/fd | tr '\\n' ' '; echo; cat <&3"
    seen = {}
    for name, p in (("pykvm-runc", podman), ("runc", runc)):
        fd = pipe_holding(f"through podman to {name}\n")
        try:
            r = run_with_fds(["podman", "--runtime", p.runtime, "run", "--rm", "--preserve-fds", "1",
                              *RUN_OPTS, IMAGE, "sh", "-c", probe], [fd], env=p.env, capture_output=True,
                             text=True, stdin=subprocess.DEVNULL, timeout=90)
        finally:
            os.close(fd)
        assert r.returncode == 0, (name, r.stderr)
        seen[name] = r.stdout.replace(name, "RUNTIME")
    assert seen["pykvm-runc"] == seen["runc"]
    assert seen["runc"].splitlines()[1] == "through podman to RUNTIME"


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[1])


# --- containerd ------------------------------------------------------------------------

@dataclass
class Ctr:
    """`ctr` against this test's containerd, in a namespace of its own; the runc shim is
    told to call pykvm-runc, with its state under the test's directory."""

    address: str
    runc_root: Path
    namespace: str

    def __call__(self, *args, timeout: float = 90, check: bool = False) -> subprocess.CompletedProcess:
        r = subprocess.run(["ctr", "--address", self.address, "--namespace", self.namespace,
                            *map(str, args)], capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        if check:
            assert r.returncode == 0, f"ctr {' '.join(map(str, args))}: {r.returncode}\n{r.stderr}"
        return r

    def run(self, *args, **kw) -> subprocess.CompletedProcess:
        return self("run", "--snapshotter", "native", "--runc-binary", PYKVM_RUNC,
                    "--runc-root", self.runc_root, *args, **kw)


@pytest.fixture(scope="module")
def containerd(tmp_path_factory, image_archive):
    """Our own containerd: its root, state and socket in a temporary directory."""
    for program in ("containerd", "ctr", "containerd-shim-runc-v2"):
        need(program)
    tmp = tmp_path_factory.mktemp("containerd")
    address = str(tmp / "containerd.sock")
    (tmp / "config.toml").write_text(textwrap.dedent(f"""\
        version = 2
        root = "{tmp}/root"
        state = "{tmp}/state"
        disabled_plugins = ["io.containerd.grpc.v1.cri"]
        [grpc]
          address = "{address}"
        [ttrpc]
          address = "{address}.ttrpc"
        """))
    with open(tmp / "containerd.log", "w") as log:
        daemon = subprocess.Popen(["containerd", "--config", str(tmp / "config.toml")], stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    ctr = Ctr(address, tmp / "runc", f"pykvm-{tmp.parent.name}")     # cgroups are named after it
    try:
        wait_for(lambda: daemon.poll() is not None or ctr("version").returncode == 0, timeout=60)
        assert daemon.poll() is None, (tmp / "containerd.log").read_text()
        ctr("image", "import", "--snapshotter", "native", image_archive, check=True)
        yield ctr
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def test_containerd_run_echo_and_exit_status(containerd):
    r = containerd.run("--rm", IMAGE.removeprefix("localhost/"), "echo-test", "echo", "hi")
    assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr
    r = containerd.run("--rm", IMAGE.removeprefix("localhost/"), "status-test", "sh", "-c", "exit 9")
    assert r.returncode == 9, r.stderr
    assert not any(containerd.runc_root.joinpath(containerd.namespace).iterdir())


def test_containerd_exec_pause_kill(containerd):
    """ctr run -d, task exec (output, status), ps, pause/resume (the freezer), kill."""
    name = "exec-test"
    containerd.run("-d", IMAGE.removeprefix("localhost/"), name, "sleep", "100", check=True)
    try:
        r = containerd("task", "exec", "--exec-id", "probe", name, "sh", "-c", "echo in; exit 4")
        assert (r.returncode, r.stdout) == (4, "in\n"), r.stderr
        pid = task_pid(containerd, name)
        assert containerd("task", "ps", name, check=True).stdout.split()[2] == str(pid)
        containerd("task", "pause", name, check=True)
        assert task_status(containerd, name) == "PAUSED"
        assert paused(containerd.runc_root / containerd.namespace, name)
        containerd("task", "resume", name, check=True)
        assert task_status(containerd, name) == "RUNNING"
        containerd("task", "kill", "--signal", "SIGKILL", name, check=True)
        wait_for(lambda: task_status(containerd, name) == "STOPPED", timeout=30)
        r = containerd("task", "delete", name)
        assert "exit code 137" in r.stderr + r.stdout
    finally:
        containerd("task", "resume", name)
        containerd("task", "delete", "--force", name)
        containerd("container", "delete", name)


def task_status(ctr: Ctr, name: str) -> str:
    rows = [line.split() for line in ctr("task", "ls", check=True).stdout.splitlines()[1:]]
    return next(row[2] for row in rows if row[0] == name)


def task_pid(ctr: Ctr, name: str) -> int:
    rows = [line.split() for line in ctr("task", "ls", check=True).stdout.splitlines()[1:]]
    return int(next(row[1] for row in rows if row[0] == name))


def paused(root: Path, name: str) -> bool:
    """What pykvm-runc's state says, read by the program itself."""
    r = subprocess.run([PYKVM_RUNC, "--root", root, "state", name], capture_output=True, text=True,
                       timeout=30)
    return json.loads(r.stdout)["status"] == "paused"
