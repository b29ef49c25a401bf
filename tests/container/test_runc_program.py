"""pykvm-runc against runc: the same bundle, driven the way an engine drives a runtime
(mini_engine.py: a subreaper that calls create, state, start, kill, waits, delete), gives
the same states, exit statuses and error messages."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from clitools import wait_for
from fd_passing import pipe_holding, run_with_fds

pytestmark = pytest.mark.root

PYKVM_RUNC = Path(sys.executable).with_name("pykvm-runc")
RUNC = shutil.which("runc")
ENGINE = Path(__file__).with_name("mini_engine.py")
# What runc's state prints beyond the spec's own keys; the values that differ by nature
# (a PID, a time, the runtime's version) are compared by kind.
STATE_KEYS = {"ociVersion", "id", "pid", "status", "bundle", "rootfs", "created", "owner", "annotations"}


def set_process(bundle: Path, args: list[str]) -> None:
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = args
    spec["annotations"] = {"org.example.test": "cross-check"}
    (bundle / "config.json").write_text(json.dumps(spec))


def drive(runtime: str, root: Path, bundle: Path, cid: str, sig: str = "-") -> dict:
    root.mkdir(exist_ok=True)
    r = subprocess.run([sys.executable, ENGINE, runtime, root, bundle, cid, sig], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture
def both(runc_bundle, tmp_path):
    if not PYKVM_RUNC.exists():
        pytest.skip(f"{PYKVM_RUNC} is missing: `make venv` installs it")

    def run(args: list[str], sig: str = "-") -> tuple[dict, dict]:
        set_process(runc_bundle, args)
        return (drive(str(PYKVM_RUNC), tmp_path / "pykvm", runc_bundle, "xcheck", sig),
                drive(RUNC, tmp_path / "runc", runc_bundle, "xcheck", sig))
    return run


@pytest.mark.parametrize("args, sig, status", [
    (["sh", "-c", "exit 7"], "-", 7),
    (["sleep", "100"], "KILL", 137),
    (["sleep", "100"], "9", 137),
    (["sh", "-c", "trap 'exit 3' TERM; while :; do sleep 0.1; done"], "SIGTERM", 3),
])
def test_same_lifecycle_as_runc(both, args, sig, status):
    ours, theirs = both(args, sig)
    for run in (ours, theirs):
        assert run["adopted"], "the container's process is the engine's child after create"
        assert run["wait"] == status
        assert [run[k]["status"] for k in ("create", "start", "delete")] == [0, 0, 0]
        assert run["kill_stopped"]["status"] == 1
        assert run["deleted"]["status"] == 1
    # "running" of a command that exits by itself may already be "stopped": only a command
    # that waits for its signal has a running state to compare.
    for step in ("created", "running", "stopped") if sig != "-" else ("created", "stopped"):
        a, b = ours[step], theirs[step]
        assert set(a) == set(b) == STATE_KEYS, step
        same = {k: (a[k], b[k]) for k in STATE_KEYS - {"ociVersion", "pid", "created"}}
        assert all(x == y for x, y in same.values()), (step, same)
        assert (a["pid"] == int(ours["pid_file"])) == (b["pid"] == int(theirs["pid_file"])), step
    assert ours["stopped"]["pid"] == theirs["stopped"]["pid"] == 0


def test_same_errors_as_runc(both):
    """The words engines match, on stderr and as JSON lines in --log."""
    ours, theirs = both(["true"])
    for run in (ours, theirs):
        assert run["kill_stopped"]["stderr"] == "container not running\n"
        assert run["deleted"]["stderr"] == "container does not exist\n"
        assert [e["msg"] for e in run["log"]] == ["container not running", "container does not exist"]
        assert {e["level"] for e in run["log"]} == {"error"}
        assert all(set(e) == {"level", "msg", "time"} for e in run["log"])


def test_ps_pause_exec_kill_all_as_runc(runc_bundle, tmp_path):
    """A running container's other operations, the same under both: ps --format json, pause
    and resume (the freezer), exec with its arguments, kill --all."""
    if not PYKVM_RUNC.exists():
        pytest.skip(f"{PYKVM_RUNC} is missing: `make venv` installs it")
    set_process(runc_bundle, ["sh", "-c", "sleep 100 & wait"])
    cid = f"ops-{os.getpid()}"              # the cgroup is named after it: not a past run's
    seen = {}
    for name, program in (("pykvm-runc", str(PYKVM_RUNC)), ("runc", RUNC)):
        call = Runtime(program, tmp_path / name)
        call("create", "--bundle", runc_bundle, cid, check=True)
        try:
            seen[name] = operate(call, cid)
        finally:
            call("resume", cid)
            call("delete", "--force", cid)
        seen[name]["listed after delete"] = call("list", "--quiet").stdout.split()
    assert seen["pykvm-runc"] == seen["runc"]
    assert seen["runc"]["ps"] == 2 and seen["runc"]["paused"] == "paused"


def operate(call: Runtime, cid: str) -> dict:
    """start, then what an engine does to a running container; what each step showed."""
    call("start", cid, check=True)
    steps = {"ps": len(json.loads(call("ps", "--format", "json", cid, check=True).stdout))}
    call("pause", cid, check=True)
    steps["paused"] = call.status(cid)
    call("resume", cid, check=True)
    steps["resumed"] = call.status(cid)
    r = call("exec", cid, "sh", "-c", "echo in; exit 6")
    steps["exec"] = (r.returncode, r.stdout)
    call("kill", "--all", cid, "KILL", check=True)
    wait_for(lambda: call.status(cid) == "stopped", timeout=30)
    call("delete", cid, check=True)
    return steps


class Runtime:
    """One runtime program with its own --root; output to files (see mini_engine.py)."""

    def __init__(self, program: str, root: Path):
        self.program, self.root = program, root
        root.mkdir()

    def __call__(self, *args, check: bool = False) -> subprocess.CompletedProcess:
        out, err = self.root.with_suffix(".out"), self.root.with_suffix(".err")
        with open(out, "w") as o, open(err, "w") as e:
            r = subprocess.run([self.program, "--root", str(self.root), *map(str, args)], stdout=o,
                               stderr=e, stdin=subprocess.DEVNULL, timeout=60)
        r.stdout, r.stderr = out.read_text(), err.read_text()
        if check:
            assert r.returncode == 0, f"{self.program} {' '.join(map(str, args))}: {r.stderr}"
        return r

    def status(self, cid: str) -> str:
        return json.loads(self("state", cid, check=True).stdout)["status"]


def test_update_sets_the_same_limits_as_runc(runc_bundle, tmp_path):
    """update --resources -: a LinuxResources object on stdin, as containerd sends it."""
    if not PYKVM_RUNC.exists():
        pytest.skip(f"{PYKVM_RUNC} is missing: `make venv` installs it")
    set_process(runc_bundle, ["sleep", "100"])
    cid = f"update-{os.getpid()}"
    resources = {"memory": {"limit": 64 << 20}, "pids": {"limit": 30},
                 "cpu": {"quota": 50000, "period": 100000}}
    seen = {}
    for name, program in (("pykvm-runc", str(PYKVM_RUNC)), ("runc", RUNC)):
        call = Runtime(program, tmp_path / name)
        call("create", "--bundle", runc_bundle, cid, check=True)
        try:
            pid = json.loads(call("state", cid, check=True).stdout)["pid"]
            r = subprocess.run([program, "--root", str(call.root), "update", "--resources", "-", cid],
                               input=json.dumps(resources), capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            seen[name] = cgroup_values(pid, ["memory/memory.limit_in_bytes", "memory/memory.memsw.limit_in_bytes",
                                             "pids/pids.max", "cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us"])
        finally:
            call("delete", "--force", cid)
    # Without memory.swap, runc leaves memory+swap as it was; pykvm sets it to the limit, as
    # at create (no swapping past the limit).
    ours, theirs = seen["pykvm-runc"], seen["runc"]
    assert ours.pop("memory/memory.memsw.limit_in_bytes") in (str(64 << 20), None)
    theirs.pop("memory/memory.memsw.limit_in_bytes")
    assert ours == theirs
    assert theirs["memory/memory.limit_in_bytes"] == str(64 << 20)


def cgroup_values(pid: int, files: list[str]) -> dict[str, str]:
    """cgroup v1 files of process `pid`'s own cgroups (/proc/PID/cgroup names them)."""
    paths = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            paths[controller] = Path("/sys/fs/cgroup", controllers, path.lstrip("/"))
    out = {}
    for name in files:
        controller, file = name.split("/")
        if controller not in paths:
            pytest.skip(f"no cgroup v1 {controller} controller here")
        target = paths[controller] / file
        out[name] = target.read_text().strip() if target.exists() else None
    return out


# --- --preserve-fds and --no-pivot ------------------------------------------------------

# What the container's process sees of its fds: their numbers (the last is ls's own
# directory), then what it reads from the two it was given.
FD_PROBE = "ls /proc/self/fd | tr '\\n' ' '; echo; cat <&3; cat <&4"


def with_fds(argv: list, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run argv with fd 3 the read end of a pipe holding a line and fd 4 a file, as an engine
    hands --preserve-fds 2; stdin /dev/null (runc copies its stdin into the container),
    stdout and stderr to files (the container may hold them on)."""
    (tmp_path / "fd4").write_text("from fd 4\n")
    fds = [pipe_holding("from fd 3\n"), os.open(tmp_path / "fd4", os.O_RDONLY)]
    out, err = tmp_path / f"{os.getpid()}.out", tmp_path / f"{os.getpid()}.err"
    try:
        with open(out, "w") as o, open(err, "w") as e:
            result = run_with_fds(argv, fds, stdin=subprocess.DEVNULL, stdout=o, stderr=e, timeout=60)
    finally:
        for fd in fds:
            os.close(fd)
    result.stdout, result.stderr = out.read_text(), err.read_text()
    return result


@pytest.fixture
def runtimes():
    if not PYKVM_RUNC.exists():
        pytest.skip(f"{PYKVM_RUNC} is missing: `make venv` installs it")
    return (("pykvm-runc", str(PYKVM_RUNC)), ("runc", RUNC))


def test_preserve_fds_on_run_as_runc(runtimes, runc_bundle, tmp_path):
    """run --preserve-fds 2: the caller's fds 3 and 4 are the process's 3 and 4, and no
    fd of the runtime's own is there beside them."""
    set_process(runc_bundle, ["sh", "-c", FD_PROBE])
    seen = {}
    for name, program in runtimes:
        r = with_fds([program, "--root", tmp_path / name, "run", "--preserve-fds", "2",
                      "--bundle", runc_bundle, f"fds-{os.getpid()}"], tmp_path)
        assert r.returncode == 0, (name, r.stderr)
        seen[name] = r.stdout
    assert seen["pykvm-runc"] == seen["runc"]
    assert seen["runc"] == "0 1 2 3 4 5 \nfrom fd 3\nfrom fd 4\n"


def test_preserve_fds_on_create_and_exec_as_runc(runtimes, runc_bundle, tmp_path):
    """create --preserve-fds 2 (the fds travel to the process that waits for `start`), and
    exec --preserve-fds 2 into the running container."""
    set_process(runc_bundle, ["sh", "-c", f"{FD_PROBE}; exec sleep 100"])
    cid = f"fds-{os.getpid()}"
    seen = {}
    for name, program in runtimes:
        call = Runtime(program, tmp_path / name)
        r = with_fds([program, "--root", call.root, "create", "--preserve-fds", "2", "--bundle",
                      runc_bundle, cid], tmp_path / name)
        assert r.returncode == 0, (name, r.stderr)
        created_out = tmp_path / name / f"{os.getpid()}.out"
        try:
            call("start", cid, check=True)
            wait_for(lambda: "from fd 4" in created_out.read_text(), timeout=30)
            ran = with_fds([program, "--root", call.root, "exec", "--preserve-fds", "2", cid,
                            "sh", "-c", FD_PROBE], tmp_path / name)
            seen[name] = (created_out.read_text(), ran.returncode, ran.stdout)
        finally:
            call("delete", "--force", cid)
    assert seen["pykvm-runc"] == seen["runc"]
    assert seen["runc"][0] == "0 1 2 3 4 5 \nfrom fd 3\nfrom fd 4\n"


@pytest.mark.parametrize("value, message", [
    ("abc", 'invalid value "abc" for flag -preserve-fds: parse error'),
    ("-1", 'invalid value "-1" for flag -preserve-fds: want 0 or more fds'),
    ("3", "unable to stat preserved-fd 2 (of 3): fd 5 is not open"),
])
def test_a_bad_preserve_fds_is_one_error_line(runc_bundle, tmp_path, value, message):
    """Checked before anything of the runtime's own is opened: runc 1.1 checks later, and
    for a fd its caller did not open passes on one of its own."""
    if not PYKVM_RUNC.exists():
        pytest.skip(f"{PYKVM_RUNC} is missing: `make venv` installs it")
    for tail in (["run", "--preserve-fds", value, "--bundle", runc_bundle, "bad"],
                 ["create", "--preserve-fds", value, "--bundle", runc_bundle, "bad"],
                 ["exec", "--preserve-fds", value, "bad", "true"]):
        log = tmp_path / "log.json"
        r = with_fds([PYKVM_RUNC, "--root", tmp_path / "root", "--log", log, "--log-format", "json",
                      *tail], tmp_path)
        assert (r.returncode, r.stderr) == (1, message + "\n") or \
            r.returncode == 1 and r.stderr.startswith(message) and r.stderr.count("\n") == 1, (tail, r.stderr)
        assert json.loads(log.read_text().splitlines()[-1])["msg"] == r.stderr.strip()
    assert not (tmp_path / "root").exists(), "nothing was made before the check"


# With CAP_SYS_ADMIN and CAP_SYS_CHROOT, nsenter into its own mount namespace sets the process's
# root to that namespace's root (setns(2)): after a bare chroot(2) that is the host's "/", after
# pivot_root or a move onto "/" it is the container's.
ROOT_PROBE = ("ls / | tr '\\n' ' '; echo; nsenter -m/proc/self/ns/mnt ls / | tr '\\n' ' '; echo; "
              "cut -d' ' -f5 /proc/self/mountinfo | sort | tr '\\n' ' '")


def test_no_pivot_as_runc(runtimes, runc_bundle, tmp_path):
    """run --no-pivot: the same "/" and the same mounts as under runc, and setns(2) into the
    container's own mount namespace finds the container's root, not the host's."""
    set_process(runc_bundle, ["sh", "-c", ROOT_PROBE])
    spec = json.loads((runc_bundle / "config.json").read_text())
    for kind in ("bounding", "effective", "permitted"):
        spec["process"]["capabilities"][kind] += ["CAP_SYS_ADMIN", "CAP_SYS_CHROOT"]
    (runc_bundle / "config.json").write_text(json.dumps(spec))
    seen = {}
    for name, program in runtimes:
        r = subprocess.run([program, "--root", tmp_path / name, "run", "--no-pivot", "--bundle", runc_bundle,
                            f"nopivot-{os.getpid()}"], stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, (name, r.stderr)
        seen[name] = r.stdout.splitlines()
    assert seen["pykvm-runc"] == seen["runc"]
    listing, after_setns, mounts = seen["runc"]
    assert listing.split() == after_setns.split() == sorted(os.listdir(runc_bundle / "rootfs"))
    assert {"/", "/proc", "/dev", "/sys"} <= set(mounts.split())


def test_no_pivot_takes_the_hosts_proc_and_sysfs_away(tmp_path):
    """What stays of the host in a --no-pivot container's mount namespace has no whole
    proc or sysfs left (rootfs.hide_host_views: the kernel would count them when the
    container mounts its own); the container's /proc is kept."""
    from pykvm.container.runtime import namespaces as ns
    from pykvm.container.runtime import rootfs as fs
    from pykvm.container.runtime.syscalls import mount
    root = tmp_path / "root"
    root.mkdir()
    before = {m.mount_point for m in fs.read_mountinfo() if m.fstype in fs.HOST_VIEW_TYPES}
    assert {"/proc", "/sys"} <= before, "the host has its proc and sysfs mounted"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            ns.unshare(ns.CLONE_FLAGS["mount"])
            fs.make_private()
            mount("tmpfs", str(root), "tmpfs", 0, None)
            os.mkdir(root / "proc")
            mount("proc", str(root / "proc"), "proc", 0, None)
            fs.hide_host_views(str(root))
            left = sorted(m.mount_point for m in fs.read_mountinfo(f"{root}/proc/self/mountinfo")
                          if m.fstype in fs.HOST_VIEW_TYPES)
            os.write(w, json.dumps(left).encode())
            code = 0
        except BaseException as e:                     # noqa: BLE001 - the test's report, not a crash
            os.write(w, repr(e).encode())
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        left = f.read()
    assert os.waitpid(pid, 0)[1] == 0, left
    assert json.loads(left) == [str(root / "proc")]


# What an engine's `start` and `delete` calls must not import: each is a Python start of
# its own, three per container, and these cost ~4-9 ms apiece (json with re, enum, and
# the dataclasses and pathlib the runtime's hot path was written without).
HEAVY = {"json", "re", "enum", "signal", "dataclasses", "inspect", "pathlib", "subprocess"}
CALL_REPORTING_IMPORTS = (
    "import sys\nbefore = set(sys.modules)\nfrom pykvm.commands.runc import main\n"
    "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    status = e.code\n"
    f"print(status, sorted((set(sys.modules) - before) & set({sorted(HEAVY)!r})))")


def test_start_and_delete_of_a_real_container_import_nothing_heavy(runc_bundle, tmp_path):
    """The calls themselves on a real container, not a list of modules: an import that
    some code path of `start` or `delete` still reaches shows up here."""
    set_process(runc_bundle, ["true"])
    root = tmp_path / "state"
    log = tmp_path / "create.log"              # not a pipe: the container's process inherits it
    with open(log, "w") as err:
        create = subprocess.run([PYKVM_RUNC, "--root", root, "create", "--bundle", runc_bundle, "imports"],
                                stdin=subprocess.DEVNULL, stdout=err, stderr=err, timeout=60)
    assert create.returncode == 0, log.read_text()

    def call(*args: str) -> str:
        r = subprocess.run([sys.executable, "-c", CALL_REPORTING_IMPORTS, "--root", str(root), *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    assert call("start", "imports") == "0 []"
    wait_for(lambda: '"stopped"' in runtime_state(root, "imports"), timeout=10)
    assert call("delete", "imports") == "0 []"
    assert not (root / "imports").exists()


def runtime_state(root: Path, cid: str) -> str:
    return subprocess.run([PYKVM_RUNC, "--root", root, "state", cid], capture_output=True, text=True,
                          timeout=30).stdout
