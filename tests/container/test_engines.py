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
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from clitools import containers_in, wait_for
from engine_fixtures import podman_config
from fd_passing import pipe_holding, run_with_fds
from image_fixtures import bundled_context, run_pykvm
from rootless_fixtures import (NOBODY, nobody_interpreter, nobody_pythonpath, public_dir,  # noqa: F401  (fixtures)
                               rootless_problem)

pytestmark = pytest.mark.root

PYKVM_RUNC = Path(sys.executable).with_name("pykvm-runc")
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


def runtime_wrapper(directory: Path, state: Path, program: str = str(PYKVM_RUNC), name: str = "") -> Path:
    """An executable that runs `program --root STATE`: Podman 4.3 passes its --runtime-flag
    options on some calls and not on its clean-up `delete`, so the state directory is fixed
    here, as a packager's wrapper would fix it."""
    path = directory / f"{name or Path(program).name}-wrapper"
    path.write_text(f"#!/bin/sh\nexec {program} --root {state} \"$@\"\n")
    path.chmod(0o755)
    return path


# --- Podman ----------------------------------------------------------------------------

@dataclass
class Podman:
    """`podman` with this test's configuration and a runtime program; `prefix` runs it
    through another program first (nsenter into a network namespace, setpriv to a user)."""

    env: dict
    runtime: Path
    prefix: tuple[str, ...] = ()
    cwd: Path | None = None

    def argv(self, *args) -> list[str]:
        return [*self.prefix, "podman", "--runtime", str(self.runtime), *map(str, args)]

    def __call__(self, *args, timeout: float = 90, check: bool = False, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        r = subprocess.run(self.argv(*args), env=self.env, cwd=self.cwd, text=True, timeout=timeout, **kw)
        if check:
            assert r.returncode == 0, f"podman {' '.join(map(str, args))}: {r.returncode}\n{r.stderr}"
        return r

    def with_runtime(self, runtime: Path) -> Podman:
        return replace(self, runtime=runtime)


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
    assert containers_in(tmp_path / "state") == [], "delete left the container's state"


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


@pytest.mark.parametrize("runtime", ["pykvm-runc", "runc"])
def test_podman_run_it_from_a_real_terminal(podman, tmp_path, runtime):
    """podman run -it with Podman itself on a pty, as a user's shell starts it: Podman puts
    that terminal in raw mode and relays it through conmon to the pty whose master came from
    the runtime over --console-socket; the window size goes along, what is typed reaches the
    shell, the shell's exit status comes back, and the terminal is given back as it was.
    runc, the oracle, runs the same session."""
    from ptyrun import lines, run_on_pty
    if runtime == "runc":
        podman = podman.with_runtime(runtime_wrapper(tmp_path, tmp_path / "runc-state", need("runc")))
    typed = []

    def typing(text: bytes):
        return lambda master: typed.append(os.write(master, text))
    r = run_on_pty(podman.argv("run", "--rm", "-it", *RUN_OPTS, IMAGE, "sh"), podman.env, size=(30, 90),
                   steps=[(b"# ", typing(b"stty size; echo $((6*7))\r")), (b"42\r\n", typing(b"exit 3\r"))],
                   timeout=120)
    assert len(typed) == 2, f"the shell's prompt or its answer never came: {r.output!r}"
    assert ["30 90", "42"] == [line for line in lines(r.output) if line in ("30 90", "42")], r.output
    assert r.status == 3, r.output
    assert r.mode_after == r.mode_before, "Podman left the terminal in raw mode"


# --- Podman's own network: a port published to a server inside ----------------------------

NETWORK = "pykvm-test"
HOST_PORT = 8080
CNI_PLUGINS = Path("/usr/lib/cni")
# busybox httpd as the container's process (PID 1), serving one page that names its host.
SERVER = "mkdir /www && echo served by $(hostname) as PID $$ >/www/index.html && exec httpd -f -p 80 -h /www"


def cni_network(directory: Path, name: str, leases: Path) -> None:
    """A CNI network list of our own, as Debian's Podman ships its default `podman` network
    (bridge with a gateway and masquerade, portmap for -p, firewall, tuning), but with the
    host-local address leases kept in `leases`."""
    plugins = [{"type": "bridge", "bridge": "cni-pykvm0", "isGateway": True, "ipMasq": True,
                "hairpinMode": True,
                "ipam": {"type": "host-local", "dataDir": str(leases), "routes": [{"dst": "0.0.0.0/0"}],
                         "ranges": [[{"subnet": "10.88.0.0/24", "gateway": "10.88.0.1"}]]}},
               {"type": "portmap", "capabilities": {"portMappings": True}},
               {"type": "firewall"}, {"type": "tuning"}]
    directory.mkdir()
    (directory / f"{name}.conflist").write_text(json.dumps({"cniVersion": "0.4.0", "name": name,
                                                            "plugins": plugins}, indent=2))


@pytest.fixture
def podman_in_netns(podman, netns, tmp_path) -> Podman:
    """Podman run inside the test's own network namespace, with a CNI network of the test's
    own: its bridge, the containers' veths and portmap's iptables rules are made there, and
    that namespace is the "host" whose 127.0.0.1 a port is published on."""
    for plugin in ("bridge", "portmap", "host-local", "firewall", "tuning"):
        if not (CNI_PLUGINS / plugin).exists():
            pytest.skip(f"needs the CNI plugin {CNI_PLUGINS / plugin} "
                        f"(Debian package containernetworking-plugins)")
    need("iptables")
    cni_network(tmp_path / "cni", NETWORK, tmp_path / "leases")
    conf = tmp_path / "containers.conf"
    conf.write_text(Path(podman.env["CONTAINERS_CONF"]).read_text() + textwrap.dedent(f"""\
        [network]
        network_backend = "cni"
        network_config_dir = "{tmp_path / 'cni'}"
        """))
    return replace(podman, env={**podman.env, "CONTAINERS_CONF": str(conf)},
                   prefix=("nsenter", f"--net=/run/netns/{netns}", "--"))


# One HTTP GET with a 5 s timeout (busybox-static 1.35's `wget -T` crashes).
GET = ("import sys, urllib.request; "
       "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())")


def get(in_ns, url: str) -> subprocess.CompletedProcess:
    """GET `url` from the test's network namespace."""
    return in_ns(sys.executable, "-c", GET, url)


def fetch(in_ns, url: str) -> str:
    """The page at `url`, asked for until the server answers (it starts after `podman run -d`
    returns); at most 60 s."""
    tries = []

    def answered() -> bool:
        tries.append(get(in_ns, url))
        return tries[-1].returncode == 0
    try:
        wait_for(answered, timeout=60)
    except AssertionError:
        raise AssertionError(f"no answer from {url} in 60 s: {tries[-1].stderr}") from None
    return tries[-1].stdout


def serve_and_fetch(podman: Podman, in_ns) -> list[str]:
    """Run the server with -p 127.0.0.1:HOST_PORT:80, fetch its page through the published
    port; returns what `podman port` says and the page (with the container's id made neutral)."""
    cid = podman("run", "-d", "--network", NETWORK, "-p", f"127.0.0.1:{HOST_PORT}:80", *RUN_OPTS, IMAGE,
                 "sh", "-c", SERVER, check=True).stdout.strip()
    try:
        pid, sandbox = podman("inspect", "--format", "{{.State.Pid}} {{.NetworkSettings.SandboxKey}}", cid,
                              check=True).stdout.split()
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(sandbox).st_ino, \
            "the container's process is in the network namespace Podman made (config.json's path)"
        ports = podman("port", cid, check=True).stdout.strip()
        page = fetch(in_ns, f"http://127.0.0.1:{HOST_PORT}/")
    finally:
        podman("rm", "-f", "-t", "0", cid)
    return [ports, page.replace(cid[:12], "<id>")]


def test_podman_publishes_a_port_to_a_server_inside(podman_in_netns, in_ns, tmp_path):
    """-p 127.0.0.1:8080:80 with Podman's own networking (CNI: bridge, veth, portmap's DNAT
    of the host's loopback port): the page served inside comes back on the host's port, under
    pykvm-runc as under runc, and the port is free again once the container is gone."""
    runc = podman_in_netns.with_runtime(runtime_wrapper(tmp_path, tmp_path / "runc-state", need("runc")))
    ours = serve_and_fetch(podman_in_netns, in_ns)
    assert ours == ["80/tcp -> 127.0.0.1:8080", "served by <id> as PID 1\n"]
    assert ours == serve_and_fetch(runc, in_ns)
    r = get(in_ns, f"http://127.0.0.1:{HOST_PORT}/")
    assert "Connection refused" in r.stderr, "nothing answers on the port once the container is gone"


# What a container sees of itself, for runs that runc and pykvm-runc must see alike.
PROBE = ("echo $$; id; cat /proc/1/cmdline; echo; grep -E '^(Cap|NoNewPrivs)' /proc/self/status; "
         "ulimit -n; ulimit -u; umask; ls /dev; echo $PATH; pwd")


def test_podman_sees_the_same_container_under_runc(podman, tmp_path):
    """The same podman run under runc and under pykvm-runc: the same view from inside."""
    runc = podman.with_runtime(runtime_wrapper(tmp_path, tmp_path / "runc-state", need("runc")))
    ours, theirs = (p("run", "--rm", *RUN_OPTS, IMAGE, "sh", "-c", PROBE) for p in (podman, runc))
    assert theirs.returncode == ours.returncode == 0, ours.stderr + theirs.stderr
    assert ours.stdout == theirs.stdout


def test_podman_preserve_fds_as_under_runc(podman, tmp_path):
    """podman run --preserve-fds 1: conmon passes its fd 3 on to `create --preserve-fds 1`,
    and the container reads the pipe the test gave Podman as fd 3."""
    runc = podman.with_runtime(runtime_wrapper(tmp_path, tmp_path / "runc-state", need("runc")))
    probe = "ls /proc/self/fd | tr '\\n' ' '; echo; cat <&3"
    seen = {}
    for name, p in (("pykvm-runc", podman), ("runc", runc)):
        fd = pipe_holding(f"through podman to {name}\n")
        try:
            r = run_with_fds(p.argv("run", "--rm", "--preserve-fds", "1", *RUN_OPTS, IMAGE, "sh", "-c", probe),
                             [fd], env=p.env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                             timeout=90)
        finally:
            os.close(fd)
        assert r.returncode == 0, (name, r.stderr)
        seen[name] = r.stdout.replace(name, "RUNTIME")
    assert seen["pykvm-runc"] == seen["runc"]
    assert seen["runc"].splitlines()[1] == "through podman to RUNTIME"


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[1])


# --- rootless Podman -------------------------------------------------------------------

NO_SUBIDS = "pykvm-no-subids"           # a user name that /etc/subuid and /etc/subgid do not list


def has_subids(user: str, uid: int | None = None) -> bool:
    """Do /etc/subuid and /etc/subgid both give `user` (or its `uid`) a range (subuid(5):
    name-or-uid:first:count)?"""
    def listed(path: str) -> bool:
        try:
            return any(line.split(":")[0] in (user, str(uid)) for line in Path(path).read_text().splitlines())
        except FileNotFoundError:
            return False
    return listed("/etc/subuid") and listed("/etc/subgid")


def grant_subids(uid: int, count: int = 65536):
    """Give `uid` a range in /etc/subuid and /etc/subgid, above every range listed there (as
    useradd does for a new user); return what puts both files back as they were."""
    saved = {}
    for path in (Path("/etc/subuid"), Path("/etc/subgid")):
        saved[path] = path.read_text() if path.exists() else None
        lines = (saved[path] or "").splitlines()
        first = max([100000] + [int(a) + int(n) for _, a, n in (line.split(":") for line in lines if line.count(":") == 2)])
        path.write_text("".join(f"{line}\n" for line in lines) + f"{uid}:{first}:{count}\n")

    def restore():
        for path, text in saved.items():
            if text is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(text)
    return restore


@pytest.fixture(params=["single", "ranges"])
def rootless_podman(request, public_dir, nobody_pythonpath, image_archive):
    """Podman as uid 65534 (nobody), its runtime a copy of pykvm-runc that user can read.

    Podman looks $USER up in /etc/subuid and /etc/subgid.  "single": a name with no range,
    so Podman maps the user alone (0 inside is 65534 outside, and its user namespace denies
    setgroups(2)).  "ranges": nobody's ranges, written by newuidmap and newgidmap.  Either way
    the runtime runs as root of that user namespace, and cgroups v1 are not delegated to an
    ordinary user: Podman leaves cgroupsPath out and the runtime goes on without a cgroup."""
    need("podman")
    need("conmon")
    if problem := rootless_problem():
        pytest.skip(problem)
    python = nobody_interpreter()
    if python is None:
        pytest.skip(f"no Python {sys.version_info.major}.{sys.version_info.minor} that uid {NOBODY} may run")
    if request.param == "ranges":
        if not (shutil.which("newuidmap") and shutil.which("newgidmap")):
            pytest.skip("needs newuidmap and newgidmap (Debian package uidmap; .ci/packages installs it)")
        if not has_subids("nobody", NOBODY):
            request.addfinalizer(grant_subids(NOBODY))
    elif has_subids(NO_SUBIDS):
        pytest.skip(f"/etc/subuid lists {NO_SUBIDS}: no user is left to show the single mapping")
    home = public_dir / "home"
    home.mkdir()
    conf = podman_config(home)
    archive = public_dir / "busybox.tar"
    shutil.copyfile(image_archive, archive)
    archive.chmod(0o644)
    program = f"/usr/bin/env PYTHONPATH={nobody_pythonpath} {python} -P -m pykvm.commands.runc"
    runtime = runtime_wrapper(public_dir, home / "state", program, name="pykvm-runc")
    for path in (home, *home.iterdir()):
        os.chown(path, NOBODY, NOBODY)
    env = {"HOME": str(home), "XDG_RUNTIME_DIR": str(home), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
           "USER": "nobody" if request.param == "ranges" else NO_SUBIDS,
           **{name: conf[name] for name in ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF")}}
    as_nobody = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
    podman = Podman(env, runtime, prefix=as_nobody, cwd=home)
    try:
        podman("load", "-i", archive, check=True, timeout=120)
        yield podman
    finally:
        podman("rm", "-af", "-t", "0")
        pause = home / "tmp" / "pause.pid"        # the process that keeps Podman's user namespace
        if pause.exists():
            os.kill(int(pause.read_text()), signal.SIGKILL)


def test_rootless_podman_runs_pykvm_runc_as_it_runs_runc(rootless_podman, request):
    """`podman run --rm busybox echo hi` as an ordinary user, then the probe under both
    runtimes: the same view from inside, and the user namespace the mapping asked for."""
    r = rootless_podman("run", "--rm", *RUN_OPTS, IMAGE, "echo", "hi")
    assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr
    home = rootless_podman.cwd
    runc = rootless_podman.with_runtime(runtime_wrapper(home.parent, home / "runc-state", need("runc")))
    probe = PROBE + "; echo $(wc -l </proc/self/uid_map) $(cat /proc/self/setgroups)"
    ours, theirs = (p("run", "--rm", *RUN_OPTS, IMAGE, "sh", "-c", probe) for p in (rootless_podman, runc))
    assert theirs.returncode == ours.returncode == 0, ours.stderr + theirs.stderr
    assert ours.stdout == theirs.stdout
    mapping = request.node.callspec.params["rootless_podman"]
    assert ours.stdout.splitlines()[-1] == {"single": "1 deny", "ranges": "2 allow"}[mapping]


def test_rootless_podman_exec(rootless_podman):
    """podman exec as an ordinary user: the exec'd process's output and exit status, under
    pykvm-runc as under runc.  The process that joins the container's namespaces cannot read
    /proc/self there (that /proc is another PID namespace's), so whether setgroups(2) is
    denied is asked before it joins."""
    home = rootless_podman.cwd
    runc = rootless_podman.with_runtime(runtime_wrapper(home.parent, home / "runc-state", need("runc")))
    for podman in (rootless_podman, runc):
        cid = podman("run", "-d", *RUN_OPTS, IMAGE, "sleep", "100", check=True).stdout.strip()
        try:
            r = podman("exec", cid, "sh", "-c", "echo in; id -u; cat /proc/1/comm; exit 5")
            assert (r.returncode, r.stdout) == (5, "in\n0\nsleep\n"), f"{podman.runtime.name}: {r.stderr}"
        finally:
            podman("rm", "-f", "-t", "0", cid)


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
    assert containers_in(containerd.runc_root.joinpath(containerd.namespace)) == []


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


def test_podman_annotation_reaches_pykvm_runc(podman):
    """`--annotation org.pykvm.isolation=...` is how an engine chooses VM isolation: Podman
    writes it into config.json, and pykvm-runc reads it there (a bad value: its one line)."""
    r = podman("run", "--rm", "--annotation", "org.pykvm.isolation=qemu", *RUN_OPTS, IMAGE, "true")
    assert r.returncode != 0
    assert "annotations['org.pykvm.isolation'] is 'qemu': it must be one of container, vm" in r.stderr, r.stderr


def test_podman_vm_annotation_gets_to_the_boot(podman):
    """With `=vm`, Podman's config.json passes the VM checks (no terminal, no hooks) and
    pykvm-runc goes on to the guest; where Linux cannot boot, that is where it stops, in its
    one line (tests/linux/test_oci_vm.py boots it in the L1 lane)."""
    from pykvm.vm.guests import hardware_kvm_problem
    if not hardware_kvm_problem():
        pytest.skip("this KVM boots Linux: the boot itself is tests/linux/test_oci_vm.py's (the L1 lane)")
    r = podman("run", "--rm", "--annotation", "org.pykvm.isolation=vm", *RUN_OPTS, IMAGE, "uname", "-r")
    assert r.returncode != 0
    assert "--isolation vm boots Linux, but" in r.stderr or "--isolation vm needs the Linux guest" in r.stderr, r.stderr
