"""One image, two isolation levels: `pykvm container run --isolation vm` (the L1 lane, `make test-hw`).

The same image runs as a container (the host's kernel) and as a VM (Debian's kernel from
`make linux-guest`, pykvm's container-init as PID 1, the image's layers as a read-only
ext4 disk under a tmpfs overlay).  Docker's rules for the command, environment, working
directory and user are checked with one table against both isolations; the kernel, the
exit status, the two output streams and the throw-away root are checked on the VM.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest

from linux_guest import guest_file

pytestmark = [pytest.mark.linux, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_TIMEOUT = 600                   # one VM boot and command, on a slow L1; a safety net, not a speed goal
# An image whose ENTRYPOINT prints what Docker's rules decided: Env, WorkingDir, User, argv.
SHOW_IMAGE = """FROM busybox
ENV GREETING=hello
WORKDIR /app
USER nobody
ENTRYPOINT ["/bin/sh", "-c", "echo \\"$GREETING $(pwd) $(id -u) $0 $*\\"", "first"]
CMD ["default"]
"""


def pykvm(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pykvm", *args], capture_output=True, text=True,
                          env=env, timeout=RUN_TIMEOUT, cwd=ROOT)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A private image store holding `busybox` and `show`, and a private state root."""
    guest_file("initramfs.cpio", "initramfs")
    top = tmp_path_factory.mktemp("isolation")
    env = {**os.environ, "PYKVM_STORE": str(top / "store"), "PYKVM_STATE_ROOT": str(top / "state")}
    subprocess.run(["make", "-s", "-C", os.path.join(ROOT, "guests", "containers")], check=True)
    built = pykvm("container", "build", "-q", "-t", "busybox",
                  os.path.join(ROOT, "guests", "containers", "busybox"), env=env)
    assert built.returncode == 0, built.stderr
    show = top / "show"
    show.mkdir()
    (show / "Dockerfile").write_text(SHOW_IMAGE)
    built = pykvm("container", "build", "-q", "-t", "show", str(show), env=env)
    assert built.returncode == 0, built.stderr
    return env


def run(env: dict, isolation: str, *args: str) -> subprocess.CompletedProcess:
    return pykvm("container", "run", "--rm", "--network", "none", "--isolation", isolation, *args, env=env)


def host_boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def test_the_vm_has_its_own_kernel_and_keeps_the_streams_apart(env):
    """The kernel is another one: another boot (boot_id, new at each kernel boot, random(4)),
    Debian's from `make linux-guest` (its release; the lane's L1 may run the very same
    package, so the release alone cannot tell them apart), and the guest's RAM."""
    guest_release = guest_file("release", "kernel").read_text().strip()
    result = run(env, "vm", "--hostname", "box", "--memory", "200M", "busybox", "sh", "-c",
                 "uname -r; cat /proc/sys/kernel/random/boot_id; echo to-stderr >&2; hostname; "
                 "echo $HOME; grep MemTotal /proc/meminfo")
    assert result.returncode == 0, result.stderr
    release, boot_id, hostname, home, memtotal = result.stdout.splitlines()
    assert (release, hostname, home) == (guest_release, "box", "/root")
    assert boot_id != host_boot_id()
    assert 100 << 10 < int(memtotal.split()[1]) <= 200 << 10, memtotal
    assert result.stderr == "to-stderr\n", "the kernel's log or stdout leaked into stderr"
    container = run(env, "container", "busybox", "cat", "/proc/sys/kernel/random/boot_id")
    assert (container.returncode, container.stdout) == (0, host_boot_id() + "\n"), container.stderr


@pytest.mark.parametrize("status", [1, 42])
def test_exit_status_propagates(env, status):
    result = run(env, "vm", "busybox", "sh", "-c", f"exit {status}")
    assert (result.returncode, result.stdout) == (status, ""), result.stderr


def test_the_guest_kernel_s_oom_kill_is_137(env):
    """--memory is the guest's RAM: `tail /dev/zero` (no newline ever, so its last line grows
    without end) is killed by the guest kernel's OOM killer (SIGKILL): 128 + 9 comes back,
    as from a container's cgroup limit."""
    result = run(env, "vm", "--memory", "96M", "busybox", "tail", "/dev/zero")
    assert (result.returncode, result.stdout) == (137, ""), result.stderr


def test_a_command_that_computes_for_seconds_leaves_stderr_alone(env):
    """A busy loop in the guest makes no VM exit for seconds (the guest kernel takes its timer
    interrupts inside KVM): `pykvm boot` would report the quiet vCPU, but under --isolation vm
    stderr is the command's alone."""
    busy = "end=$(($(date +%s) + 8)); while [ $(date +%s) -lt $end ]; do :; done; echo done"
    result = run(env, "vm", "busybox", "sh", "-c", busy)
    assert (result.returncode, result.stdout, result.stderr) == (0, "done\n", "")


def test_cpus_is_how_many_processors_the_guest_kernel_sees(env):
    """--cpus 2: two vCPUs in the MADT, both brought up by the guest kernel (nproc counts the
    online ones, sched_getaffinity(2))."""
    result = run(env, "vm", "--cpus", "2", "busybox", "sh", "-c", "nproc; grep -c ^processor /proc/cpuinfo")
    assert (result.returncode, result.stdout) == (0, "2\n2\n"), result.stderr


def test_i_pipes_stdin_to_the_command_byte_for_byte_and_ends_it(env):
    """-i: every byte value (NUL, ^C, ^D, \\r included) reaches the command, and our end of
    input is its end of file: md5sum prints only after it."""
    data = bytes(range(256)) * 64 + b"no newline at the end\r"
    result = subprocess.run([sys.executable, "-m", "pykvm", "container", "run", "--rm", "--network", "none",
                             "--isolation", "vm", "-i", "busybox", "md5sum"], input=data, capture_output=True,
                            env=env, timeout=RUN_TIMEOUT, cwd=ROOT)
    assert (result.returncode, result.stdout.decode()) == (0, hashlib.md5(data).hexdigest() + "  -\n"), \
        result.stderr.decode()


def test_without_i_stdin_is_empty(env):
    result = subprocess.run([sys.executable, "-m", "pykvm", "container", "run", "--rm", "--network", "none",
                             "--isolation", "vm", "busybox", "wc", "-c"], input=b"not sent",
                            capture_output=True, env=env, timeout=RUN_TIMEOUT, cwd=ROOT)
    assert (result.returncode, result.stdout.split()) == (0, [b"0"]), result.stderr.decode()


def test_it_gives_the_command_a_terminal(env):
    """-it: the command's stdin, stdout and stderr are hvc0, a terminal in cooked mode: what we
    type is echoed and arrives as a line (\\r -> \\n), and its exit status comes back."""
    primary, secondary = pty.openpty()
    argv = [sys.executable, "-m", "pykvm", "container", "run", "--rm", "--network", "none",
            "--isolation", "vm", "-it", "busybox", "sh", "-c",
            "tty; [ -t 2 ] && echo stderr-too; read line; echo got:$line; exit 3"]
    with subprocess.Popen(argv, stdin=secondary, stdout=secondary, stderr=secondary, env=env, cwd=ROOT) as vm:
        os.close(secondary)
        seen = read_until(primary, b"stderr-too")
        os.write(primary, b"typed\r")
        seen += read_until(primary, b"got:typed")
        status = vm.wait(timeout=RUN_TIMEOUT)
    os.close(primary)
    assert b"/dev/hvc0" in seen and seen.count(b"typed") == 2, seen    # echoed by the guest's tty, then read
    assert status == 3, seen


def read_until(fd: int, wanted: bytes) -> bytes:
    """What the terminal shows, up to `wanted`; bounded by RUN_TIMEOUT of silence."""
    seen = b""
    while wanted not in seen:
        ready, _, _ = select.select([fd], [], [], RUN_TIMEOUT)
        assert ready, f"nothing for {RUN_TIMEOUT} s; saw {seen!r}"
        try:
            seen += os.read(fd, 4096)
        except OSError:                 # EIO: every process with the terminal open has gone
            raise AssertionError(f"the terminal closed before {wanted!r}; saw {seen!r}") from None
    return seen


LOG_POLL_S = 2.0        # between `container logs` runs: each is a Python start, heavy on a TCG L1


def wait_for_log(env: dict, cid: str, *wanted: str) -> str:
    """`container logs CID` once it holds every one of `wanted`; bounded by RUN_TIMEOUT."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        logs = pykvm("container", "logs", cid, env=env)
        if all(w in logs.stdout for w in wanted) or time.monotonic() > deadline:
            return logs.stdout
        time.sleep(LOG_POLL_S)


def command_lines(log: str) -> list[str]:
    """The command's lines of a detached VM's log, without pykvm's own notes ("pykvm: ...",
    which go to the same stderr)."""
    return [line for line in log.splitlines() if not line.startswith("pykvm: ")]


@contextlib.contextmanager
def removed_at_the_end(env: dict, cid: str):
    """`rm -f` the detached VM however the test ends: one left running slows every later
    VM of the lane (its guest's timer ticks cost the TCG-emulated L1 dearly)."""
    try:
        yield
    finally:
        pykvm("container", "rm", "-f", cid, env=env)


def ps_row(env: dict, cid: str) -> str:
    listing = pykvm("container", "ps", "-a", env=env).stdout
    return next((line for line in listing.splitlines() if line.startswith(cid)), f"{cid} not in:\n{listing}")


def test_detached_vm_has_logs_ps_and_stops_with_sigterm_to_its_command(env):
    """-d: the id at once; `ps` says vm and running; `logs` has the output; `stop` is SIGTERM
    to the command in the guest (passed on by pykvm), so it exits 128 + 15."""
    started = pykvm("container", "run", "-d", "--network", "none", "--isolation", "vm", "--name", "vm-d",
                    "busybox", "sh", "-c", "echo started; echo to-stderr >&2; exec sleep 1000", env=env)
    assert started.returncode == 0, started.stderr
    cid = started.stdout.strip()
    with removed_at_the_end(env, cid):
        log = wait_for_log(env, cid, "started", "to-stderr")    # two consoles, one log: either order
        assert sorted(command_lines(log)) == ["started", "to-stderr"], log
        row = ps_row(env, cid).split()
        assert row[1:3] == ["vm-d", "running"] and row[3] == "vm", row
        stopped = pykvm("container", "stop", "-t", "120", "vm-d", env=env)
        assert (stopped.returncode, stopped.stdout) == (0, cid + "\n"), stopped.stderr
        assert "exited (143)" in ps_row(env, cid)
        assert pykvm("container", "rm", cid, env=env).returncode == 0
        assert cid not in pykvm("container", "ps", "-a", "-q", env=env).stdout


def test_kill_passes_a_signal_on_and_stop_forces_a_command_that_ignores_sigterm(env):
    script = 'trap "echo got-hup" HUP; trap "" TERM; echo ready; while :; do sleep 1; done'
    started = pykvm("container", "run", "-d", "--rm", "--network", "none", "--isolation", "vm",
                    "busybox", "sh", "-c", script, env=env)
    assert started.returncode == 0, started.stderr
    cid = started.stdout.strip()
    with removed_at_the_end(env, cid):
        wait_for_log(env, cid, "ready")
        assert pykvm("container", "kill", "-s", "HUP", cid, env=env).returncode == 0
        assert "got-hup" in wait_for_log(env, cid, "got-hup")
        stopped = pykvm("container", "stop", "-t", "5", cid, env=env)    # TERM ignored: then SIGKILL
        assert stopped.returncode == 0, stopped.stderr
        assert "running" not in ps_row(env, cid)


def test_ctrl_c_in_the_foreground_reaches_the_command(env):
    argv = [sys.executable, "-m", "pykvm", "container", "run", "--rm", "--network", "none",
            "--isolation", "vm", "busybox", "sh", "-c", "echo ready; exec sleep 1000"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT) as vm:
        assert vm.stdout.readline() == b"ready\n"
        vm.send_signal(signal.SIGINT)
        status = vm.wait(timeout=RUN_TIMEOUT)
        stderr = vm.stderr.read().decode()
    assert (status, stderr) == (128 + signal.SIGINT, "")


def test_a_reader_that_goes_away_stops_the_vm(env):
    """`pykvm container run --isolation vm busybox yes | head -1`: the VM is stopped, pykvm
    exits with 128 + SIGPIPE and says nothing (as a shell pipeline's writer would)."""
    argv = [sys.executable, "-m", "pykvm", "container", "run", "--rm", "--network", "none",
            "--isolation", "vm", "busybox", "yes"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT) as vm:
        assert vm.stdout.readline() == b"y\n"
        vm.stdout.close()
        status = vm.wait(timeout=RUN_TIMEOUT)
        stderr = vm.stderr.read().decode()
    assert (status, stderr) == (141, "")


def test_a_missing_image_is_one_line(env):
    result = run(env, "vm", "no-such-image", "true")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "no-such-image" in result.stderr, result.stderr


# options -> what SHOW_IMAGE prints: "$GREETING $(pwd) $(id -u) $0 $*"
DOCKER_RULES = [
    ([], "hello /app 65534 first default"),                                 # the image's config
    (["-e", "GREETING=bye", "-w", "/tmp", "-u", "0", "show", "x", "y z"],     # options and arguments win
     "bye /tmp 0 first x y z"),
    (["--entrypoint", "/bin/echo", "show", "plain", "args"], "plain args"),  # CMD dropped too
]


@pytest.mark.parametrize("isolation", ["container", "vm"])
@pytest.mark.parametrize("options, expected", DOCKER_RULES)
def test_docker_rules_are_the_same_under_both_isolations(env, isolation, options, expected):
    result = run(env, isolation, *(options or ["show"]))
    assert (result.returncode, result.stdout, result.stderr) == (0, expected + "\n", "")


def test_what_the_command_writes_to_root_is_gone_on_the_next_run(env):
    script = "test ! -e /written || exit 3; echo data > /written && cat /written"
    for attempt in ("first", "second"):
        result = run(env, "vm", "busybox", "sh", "-c", script)
        assert (result.returncode, result.stdout) == (0, "data\n"), f"{attempt} run: {result.stderr}"


def test_compare_runs_the_same_image_both_ways(env):
    """`pykvm compare --guest image`: the busybox image as a VM and as a container, every row
    of the table filled for both from what each side printed."""
    result = pykvm("compare", "--json", "--runs", "1", "--guest", "image", "--image", "busybox",
                   "--mem", "160M", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    vm, box = report["vm"], report["container"]
    assert "--isolation vm --memory 160M busybox sh -c" in vm["command"], vm["command"]
    assert vm["command"].replace(" --isolation vm --memory 160M", "").split(" sh -c")[0] == \
        box["command"].split(" sh -c")[0]
    assert (vm["name"], box["name"]) == ("busybox", "busybox")
    # kernel seen: another boot for the VM, this very one for the container
    assert vm["os"]["same_as_host"] is False and box["os"]["same_as_host"] is True
    assert vm["os"]["kernel"] == "Linux " + guest_file("release", "kernel").read_text().strip()
    # image and memory size: the VM loads kernel, initrd and the image's root disk
    assert set(vm["size"]["parts"]) == {"kernel", "initrd", "root disk"}
    assert vm["size"]["memory_given_bytes"] == 160 << 20
    assert 100 << 20 < vm["size"]["memory_seen_bytes"] <= 160 << 20, vm["size"]
    assert box["size"]["memory_seen_bytes"] == report["host"]["memory_bytes"]
    # isolation evidence: the guest's hypervisor, and the container's own namespaces
    assert vm["isolation"]["boundary"]["hypervisor"] == "KVM", vm["isolation"]["boundary"]
    assert box["isolation"]["boundary"]["namespaces_own"], box["isolation"]["boundary"]
    assert "lo" in vm["isolation"]["interfaces"]["inside"], vm["isolation"]["interfaces"]
    assert "eth0" not in vm["isolation"]["interfaces"]["inside"], "the VM was given no network card"
    # startup and resources, measured on both
    for side in (vm, box):
        assert 0 < side["startup"]["first_line_s"]["median"] <= side["startup"]["exit_s"]["median"]
        assert side["resources"]["peak_rss_bytes"]["median"] > 0
