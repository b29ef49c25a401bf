"""`pykvm container run --rootfs`: each isolation property checked from inside the container.

Real namespaces, real mounts, real cgroups: these run as root (marker `root`).
"""
from __future__ import annotations

import os
import re

import pytest
from clitools import containers_in, wait_for

pytestmark = pytest.mark.root


def sh(pykvm, rootfs, script, *opts, **kw):
    return pykvm("container", "run", "--rm", *opts, "--rootfs", rootfs, "sh", "-c", script, **kw)


def test_the_command_is_pid_1(pykvm, busybox_rootfs):
    """As with `docker run` and runc: the container's own process is PID 1 of its namespace."""
    r = sh(pykvm, busybox_rootfs, "echo $$; cat /proc/1/comm; ls /proc | grep -c '^[0-9]'")
    pid, comm, nprocs = r.stdout.split()
    assert r.returncode == 0, r.stderr
    assert (pid, comm) == ("1", "sh"), r.stdout
    assert int(nprocs) <= 3, f"only the container's processes are visible, saw {nprocs}"


def test_init_option_makes_pykvm_init_pid_1(pykvm, busybox_rootfs):
    """--init (docker run --init): pykvm-init is PID 1 and the command PID 2."""
    r = sh(pykvm, busybox_rootfs, "echo $$; cat /proc/1/comm", "--init")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2", "pykvm-init"], r.stdout


def test_pid_1_signal_semantics_are_runcs(pykvm, runc_bundle, busybox_rootfs, tmp_path):
    """The kernel drops a signal PID 1 has no handler for when it comes from inside its PID
    namespace (pid_namespaces(7)), even SIGKILL: a container's `kill -9 1` does nothing,
    under runc as under pykvm."""
    from escape_tools import edit, runc_run
    script = "kill -9 $$; kill -TERM $$; echo alive; exit 3"
    edit(runc_bundle, process__args=["sh", "-c", script])
    ours = pykvm("container", "oci", "run", "--bundle", runc_bundle, "sigs")
    theirs = runc_run(runc_bundle, tmp_path)
    assert (ours.stdout, ours.returncode) == (theirs.stdout, theirs.returncode) == ("alive\n", 3)
    r = sh(pykvm, busybox_rootfs, script)
    assert (r.stdout, r.returncode) == ("alive\n", 3), (r.stdout, r.stderr)


def test_orphans_are_reaped_only_with_init(pykvm, busybox_rootfs):
    """An orphan is re-parented to PID 1.  A command that never wait()s (here `sleep`) leaves it
    a zombie, as under Docker; pykvm-init (--init) reaps it."""
    script = "sh -c 'usleep 100000 &'; exec sleep 1000"
    # `sleep` runs once the orphan is born; then the orphan's state, if it is still there
    orphan = ("for f in /proc/[0-9]*/stat; do read -r p c s rest < $f; [ $c = '(sleep)' ] && echo sleep; "
              "[ $c = '(usleep)' ] && echo $s; done; true")
    for options, left in (([], "sleep\nZ\n"), (["--init"], "sleep\n")):
        cid = pykvm("container", "run", "-d", *options, "--rootfs", busybox_rootfs, "sh", "-c", script).stdout.strip()
        try:
            wait_for(lambda: sorted(pykvm("container", "exec", cid, "sh", "-c", orphan).stdout.split())
                     in (["Z", "sleep"], ["sleep"]))
            assert "".join(sorted(pykvm("container", "exec", cid, "sh", "-c", orphan).stdout.splitlines(True),
                                  reverse=True)) == left, options
        finally:
            pykvm("container", "rm", "-f", cid)


@pytest.mark.parametrize("name, why", [
    ("bad host name with spaces and way too long " + "a" * 48, "at most 64 (HOST_NAME_MAX)"),
    ("-box", "RFC 1123"), ("a..b", "RFC 1123"), ("a" * 64 + ".b", "at most 64")])
def test_bad_hostname_is_one_line_before_anything_starts(pykvm, busybox_rootfs, state_root, name, why):
    r = sh(pykvm, busybox_rootfs, "hostname", "--hostname", name)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("pykvm: error: ") and why in r.stderr, r.stderr
    assert containers_in(state_root) == [], "no container was created"


@pytest.mark.parametrize("var", ["=x", "=", "A\0B=1"])
def test_bad_environment_variable_is_a_usage_error(pykvm, busybox_rootfs, state_root, var):
    if "\0" in var:                                     # argv cannot carry a NUL: the library
        from pykvm.container.runtime.config import RunConfig
        from pykvm.errors import ConfigError
        with pytest.raises(ConfigError, match="bad environment variable 'A.x00B=1'"):
            RunConfig(args=["env"], rootfs=str(busybox_rootfs), env=[var]).finalized()
        return
    r = sh(pykvm, busybox_rootfs, "env", "-e", var)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"pykvm: error: bad environment variable {var!r}: "), r.stderr
    assert containers_in(state_root) == [], "no container was created"


def test_early_init_failure_is_init_s_own_message(busybox_rootfs, state_root):
    """init dies before the launcher moved it into its cgroup (here: setns into a UTS namespace
    through a network namespace's file): the launcher reports init's error, never ESRCH."""
    from pykvm.container.runtime.config import RunConfig
    from pykvm.container.runtime.launcher import run_container
    from pykvm.errors import ContainerError
    for _ in range(15):                                  # it was a race: lose it often enough
        namespaces = dict(RunConfig(args=["true"]).namespaces, uts="/proc/self/ns/net")
        with pytest.raises(ContainerError, match=r"^setns failed: EINVAL.*/proc/self/ns/net"):
            run_container(RunConfig(args=["true"], rootfs=str(busybox_rootfs), namespaces=namespaces))
    assert containers_in(state_root) == [], "nothing left behind"


def test_only_loopback_and_it_is_up(pykvm, busybox_rootfs):
    r = sh(pykvm, busybox_rootfs, "ls /sys/class/net; ip -o link show lo")
    lines = r.stdout.splitlines()
    assert lines[0] == "lo", r.stdout
    assert "UP" in lines[1].split("<")[1].split(">")[0], lines[1]
    host = sh(pykvm, busybox_rootfs, "ls /sys/class/net", "--network", "host").stdout.split()
    assert sorted(host) == sorted(os.listdir("/sys/class/net"))


def test_host_mounts_invisible(pykvm, busybox_rootfs):
    r = sh(pykvm, busybox_rootfs, "cat /proc/self/mountinfo")
    points = [line.split()[4] for line in r.stdout.splitlines()]
    assert points[0] == "/"
    assert not [p for p in points if p.startswith(("/run", "/work", "/home"))], points
    assert len(points) < 40


def test_dev_is_minimal(pykvm, busybox_rootfs):
    r = sh(pykvm, busybox_rootfs, "ls /dev; echo x > /dev/null && head -c 4 /dev/zero | wc -c")
    names = set(r.stdout.split()[:-1])
    assert names == {"fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm",
                     "stderr", "stdin", "stdout", "tty", "urandom", "zero"}, names
    assert r.stdout.split()[-1] == "4"


def test_proc_and_sys_protections(pykvm, busybox_rootfs):
    script = ("cat /proc/keys | wc -c; ls /proc/acpi 2>/dev/null | wc -l; "
              "echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null && echo WROTE-PROC-SYS; "
              "touch /sys/x 2>/dev/null && echo WROTE-SYS; echo done")
    r = sh(pykvm, busybox_rootfs, script)
    assert r.stdout.split() == ["0", "0", "done"], r.stdout


def test_read_only_root(pykvm, fresh_rootfs):
    assert sh(pykvm, fresh_rootfs, "touch /f && echo ok").stdout == "ok\n"
    r = sh(pykvm, fresh_rootfs, "touch /g 2>&1; touch /tmp/h 2>&1", "--read-only")
    assert "Read-only file system" in r.stdout
    assert not (fresh_rootfs / "g").exists()


def test_env_cwd_user(pykvm, busybox_rootfs):
    r = sh(pykvm, busybox_rootfs, 'echo "$FOO|$(pwd)|$(id -u):$(id -g)"',
           "-e", "FOO=bar baz", "-w", "/tmp", "-u", "1000:1000")
    assert r.stdout == "bar baz|/tmp|1000:1000\n", r.stderr
    assert sh(pykvm, busybox_rootfs, "id -u", "-u", "user").stdout == "1000\n"


def test_environment_as_docker_gives_it(pykvm, busybox_rootfs):
    """PATH, HOSTNAME (the container's hostname), HOME (from the container's /etc/passwd,
    "/" for a user it lacks), in Docker's order; -e overrides each."""
    def env(*opts):
        r = pykvm("container", "run", "--rm", *opts, "--rootfs", busybox_rootfs, "env")
        assert r.returncode == 0, r.stderr
        return r.stdout.splitlines()
    lines = env()
    assert [line.split("=")[0] for line in lines] == ["PATH", "HOSTNAME", "HOME"], lines
    assert re.fullmatch(r"HOSTNAME=[0-9a-f]{12}", lines[1]) and lines[2] == "HOME=/root", lines
    hostname = sh(pykvm, busybox_rootfs, 'echo "$HOSTNAME $(hostname)"').stdout.split()
    assert hostname[0] == hostname[1], "HOSTNAME is the container's hostname"
    assert env("--hostname", "box", "-u", "1000")[1:] == ["HOSTNAME=box", "HOME=/tmp"]
    assert env("-u", "4242", "-e", "HOSTNAME=x")[1:] == ["HOSTNAME=x", "HOME=/"]
    assert env("-e", "HOME=/mine")[2] == "HOME=/mine"


def test_etc_hostname_hosts_resolv_conf_as_docker_writes_them(pykvm, fresh_rootfs):
    from pykvm.container.runtime.etcfiles import LOCALHOST_HOSTS
    (fresh_rootfs / "etc/hosts").write_text("10.0.0.1 image-says\n")          # the image's is hidden
    cat = "cat /etc/hostname; echo --; cat /etc/hosts; echo --; cat /etc/resolv.conf"
    host_resolv = open("/etc/resolv.conf").read() if os.path.exists("/etc/resolv.conf") else ""
    own_net = "".join(line for line in host_resolv.splitlines(keepends=True)
                      if not re.match(r"nameserver\s+(127\.|::1\b)", line))
    r = sh(pykvm, fresh_rootfs, cat, "--hostname", "box")
    assert r.stdout == f"box\n--\n{LOCALHOST_HOSTS}--\n{own_net}", r.stdout + r.stderr
    r = sh(pykvm, fresh_rootfs, cat + "; echo 1.2.3.4 x >> /etc/hosts && echo writable; touch /f",
           "--hostname", "box", "--network", "host", "--read-only")
    assert r.stdout == f"box\n--\n{open('/etc/hosts').read()}--\n{host_resolv}writable\n", r.stdout
    assert "Read-only file system" in r.stderr, "--read-only still holds for the rest"
    assert (fresh_rootfs / "etc/hosts").read_text() == "10.0.0.1 image-says\n", "the rootfs's copy is untouched"


def test_capabilities_no_new_privs(pykvm, busybox_rootfs):
    from pykvm.container.runtime.capabilities import DEFAULT_CAPS, cap_numbers
    default = sum(1 << c for c in cap_numbers(DEFAULT_CAPS))
    r = sh(pykvm, busybox_rootfs, "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status")
    status = dict(line.split(":\t") for line in r.stdout.splitlines())
    assert int(status["CapEff"], 16) == default
    assert int(status["CapBnd"], 16) == default
    assert status["NoNewPrivs"] == "1"
    r = sh(pykvm, busybox_rootfs, "grep ^CapEff /proc/self/status", "-u", "1000")
    assert int(r.stdout.split()[1], 16) == 0, "a non-root user has no effective capabilities"


def test_only_stdio_is_passed_in(pykvm, busybox_rootfs, tmp_path):
    leaked = os.open(tmp_path / "secret", os.O_CREAT | os.O_RDWR)
    os.set_inheritable(leaked, True)
    try:
        r = pykvm("container", "run", "--rm", "--rootfs", busybox_rootfs, "ls", "/proc/self/fd",
                  pass_fds=(leaked,))
    finally:
        os.close(leaked)
    # 3 is ls's own handle on /proc/self/fd
    assert set(r.stdout.split()) <= {"0", "1", "2", "3"}, r.stdout


@pytest.mark.parametrize("script,code", [("exit 0", 0), ("exit 3", 3), ("sh -c 'kill -9 $$'; exit $?", 137),
                                         ("sh -c 'kill -TERM $$'; exit $?", 143)])
def test_exit_status_propagates(pykvm, busybox_rootfs, script, code):
    """A child killed by signal N: 128 + N, passed on by the shell (PID 1) as its own status."""
    assert sh(pykvm, busybox_rootfs, script).returncode == code


@pytest.mark.parametrize("script,code", [("kill -9 $$", 137), ("kill -TERM $$", 143)])
def test_exit_status_of_a_command_under_init(pykvm, busybox_rootfs, script, code):
    """Under pykvm-init the command is PID 2, an ordinary process: its own signal kills it."""
    assert sh(pykvm, busybox_rootfs, script, "--init").returncode == code


def test_command_not_found_is_127_with_a_message(pykvm, busybox_rootfs, state_root):
    r = pykvm("container", "run", "--rm", "--rootfs", busybox_rootfs, "no-such-command")
    assert r.returncode == 127
    assert r.stderr.strip() == ("pykvm: error: no-such-command: command not found in the container "
                                "(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)")
    assert containers_in(state_root) == []


def test_stdin_interactive(pykvm, busybox_rootfs):
    r = pykvm("container", "run", "--rm", "-i", "--rootfs", busybox_rootfs, "cat", input="piped\n")
    assert r.stdout == "piped\n"
    r = pykvm("container", "run", "--rm", "--rootfs", busybox_rootfs, "cat", input="piped\n")
    assert r.stdout == "", "without -i stdin is /dev/null"


def test_tty(pykvm, busybox_rootfs, state_root):
    import pty
    import subprocess
    import sys
    main, sub = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "pykvm", "container", "run", "--rm", "-it",
                             "--rootfs", str(busybox_rootfs), "sh", "-c",
                             "test -t 0 && test -t 1 && echo TTY-OK"],
                            stdin=sub, stdout=sub, stderr=sub,
                            env={**os.environ, "PYKVM_STATE_ROOT": str(state_root)})
    os.close(sub)
    out = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=30) == 0
    os.close(main)
    assert b"TTY-OK" in out, out


@pytest.mark.parametrize("init", [[], ["--init"]])
def test_pid1_forwards_sigterm_and_reaps(pykvm, busybox_rootfs, init):
    # The command orphans a child (reaped by PID 1) and traps TERM sent to PID 1: itself, or
    # pykvm-init, which forwards it.
    script = ("(sleep 0.1 &) ; trap 'echo got-TERM; exit 5' TERM; "
              "kill -TERM 1; sleep 5 & wait; echo not-reached")
    r = sh(pykvm, busybox_rootfs, script, *init)
    assert r.stdout == "got-TERM\n" and r.returncode == 5, (r.stdout, r.returncode)


def test_detached_logs_stop_rm(pykvm, busybox_rootfs, state_root):
    r = pykvm("container", "run", "-d", "--name", "web", "--rootfs", busybox_rootfs,
              "sh", "-c", "echo hello-log; trap 'echo bye; exit 0' TERM; while :; do sleep 1; done")
    cid = r.stdout.strip()
    assert r.returncode == 0 and re.fullmatch(r"[0-9a-f]{12}", cid), r.stderr
    ps = pykvm("container", "ps").stdout
    assert cid in ps and "web" in ps and "running" in ps, ps
    header, row = ps.splitlines()
    assert row.split()[1:4] == ["web", "running", "container"] and "ISOLATION" in header.split(), ps
    wait_for(lambda: "hello-log" in pykvm("container", "logs", "web").stdout)
    assert pykvm("container", "stop", "-t", "5", "web").stdout.strip() == cid
    assert "exited (0)" in pykvm("container", "ps", "-a").stdout
    assert pykvm("container", "logs", cid).stdout == "hello-log\nbye\n"
    assert pykvm("container", "rm", "web").returncode == 0
    assert pykvm("container", "ps", "-a", "-q").stdout == ""
    assert containers_in(state_root) == []


@pytest.mark.parametrize("init,status", [([], "exited (137)"), (["--init"], "exited (143)")])
def test_stop_a_command_without_a_sigterm_handler(pykvm, busybox_rootfs, state_root, init, status):
    """`sleep` as PID 1 has no SIGTERM handler, so the kernel drops stop's SIGTERM and the
    grace period ends in SIGKILL, as with `docker stop`; under --init, pykvm-init forwards
    SIGTERM to `sleep` (PID 2), which dies of it."""
    cid = pykvm("container", "run", "-d", *init, "--rootfs", busybox_rootfs, "sleep", "1000").stdout.strip()
    assert pykvm("container", "stop", "-t", "1", cid).stdout.strip() == cid
    assert status in pykvm("container", "ps", "-a").stdout
    assert pykvm("container", "rm", cid).returncode == 0


def test_kill_and_rm_force(pykvm, busybox_rootfs, state_root):
    cid = pykvm("container", "run", "-d", "--rootfs", busybox_rootfs, "sleep", "1000").stdout.strip()
    r = pykvm("container", "rm", cid)
    assert r.returncode == 1 and "stop it first or use --force" in r.stderr
    assert pykvm("container", "kill", "-s", "KILL", cid).returncode == 0
    wait_for(lambda: "exited (137)" in pykvm("container", "ps", "-a").stdout)
    cid2 = pykvm("container", "run", "-d", "--rootfs", busybox_rootfs, "sleep", "1000").stdout.strip()
    assert pykvm("container", "rm", "-f", cid, cid2).returncode == 0
    assert containers_in(state_root) == []


def test_name_in_use(pykvm, busybox_rootfs):
    cid = pykvm("container", "run", "-d", "--name", "dup", "--rootfs", busybox_rootfs, "sleep", "1000").stdout.strip()
    try:
        r = pykvm("container", "run", "--name", "dup", "--rootfs", busybox_rootfs, "true")
        assert r.returncode == 2 and "already in use" in r.stderr
    finally:
        pykvm("container", "rm", "-f", cid)


def _cap_eff(pykvm, rootfs, *options) -> int:
    r = pykvm("container", "run", "--rm", *options, "--rootfs", rootfs, "grep", "CapEff", "/proc/self/status")
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split()[1], 16)


@pytest.mark.root
def test_cap_add_and_cap_drop_as_docker_applies_them(pykvm, busybox_rootfs):
    from pykvm.container.runtime.capabilities import ALL_CAPS, DEFAULT_CAPS, bounding_set
    bit = {name: 1 << number for name, number in ALL_CAPS.items()}
    default = sum(bit[name] for name in DEFAULT_CAPS)
    assert _cap_eff(pykvm, busybox_rootfs) == default
    assert _cap_eff(pykvm, busybox_rootfs, "--cap-drop", "ALL", "--cap-add", "chown") == bit["CAP_CHOWN"]
    assert _cap_eff(pykvm, busybox_rootfs, "--cap-add", "SYS_ADMIN", "--cap-drop", "CAP_KILL") == \
        default - bit["CAP_KILL"] + bit["CAP_SYS_ADMIN"]
    ours = sum(1 << cap for cap in bounding_set() if 1 << cap in bit.values())
    assert _cap_eff(pykvm, busybox_rootfs, "--cap-add", "ALL", "--cap-drop", "NET_RAW") == \
        ours - bit["CAP_NET_RAW"]


@pytest.mark.root
def test_an_unknown_capability_is_one_line_and_nothing_is_created(pykvm, busybox_rootfs):
    before = pykvm("container", "ps", "-a").stdout
    r = pykvm("container", "run", "--cap-add", "BOGUS", "--rootfs", busybox_rootfs, "true")
    assert r.returncode == 2 and r.stderr.startswith("pykvm: error: --cap-add BOGUS: unknown capability")
    assert r.stderr.count("\n") == 1
    assert pykvm("container", "ps", "-a").stdout == before
