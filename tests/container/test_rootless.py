"""Rootless: an ordinary user runs a container in a user namespace (marker `root`:
root is needed only to become that ordinary user, with setpriv(1)).

Inside, uid 0 is the caller outside; cgroups work only where delegated, and
where they are not the launcher says which limits it could not apply.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from clitools import containers_in
from rootless_fixtures import (NOBODY, nobody_interpreter, nobody_pythonpath, public_dir,  # noqa: F401  (fixtures)
                               rootless_problem)

pytestmark = pytest.mark.root


@pytest.fixture
def rootless_rootfs(public_dir, rootfs_factory):
    return rootfs_factory(public_dir / "rootfs")


@pytest.fixture
def as_nobody(public_dir, nobody_pythonpath):
    """Run the CLI as uid/gid 65534 with an interpreter and packages that user can read."""
    if problem := rootless_problem():
        pytest.skip(problem)
    python = nobody_interpreter()
    if python is None:
        pytest.skip(f"no Python {sys.version_info.major}.{sys.version_info.minor} that uid {NOBODY} "
                    f"may run (this one is {sys.executable})")
    home = public_dir / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)

    def command(*args) -> tuple[list[str], dict]:
        """argv and environment; -P: never import from the working directory (the checkout)."""
        env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(nobody_pythonpath),
               "XDG_RUNTIME_DIR": str(home)}
        return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                str(python), "-P", "-m", "pykvm", "container", *map(str, args)], env

    def run(*args, **env):
        argv, base = command(*args)
        return subprocess.run(argv, capture_output=True, text=True, env={**base, **env}, cwd=home,
                              timeout=60)
    run.home = home
    run.command = command
    return run


def test_nobody_imports_the_public_copy(as_nobody):
    """The rootless tests run pykvm from the copy, never from the checkout."""
    r = as_nobody("--help")
    assert r.returncode == 0, r.stderr
    argv, env = as_nobody.command()
    probe = subprocess.run([*argv[:argv.index("-m")], "-c", "import pykvm; print(pykvm.__file__)"],
                           capture_output=True, text=True, env=env, cwd=as_nobody.home)
    assert probe.stdout.startswith(env["PYTHONPATH"]), probe.stdout + probe.stderr


def test_rootless_run_maps_root_to_the_caller(as_nobody, rootless_rootfs):
    r = as_nobody("run", "--rm", "--hostname", "rl", "--rootfs", rootless_rootfs, "sh", "-c",
                  "id -u; hostname; echo $$; cat /proc/self/uid_map; ls /sys/class/net; "
                  "touch /bin/x 2>&1 | grep -c 'Permission denied'")
    assert r.returncode == 0, r.stderr
    uid, host, pid, *uid_map_and_rest = r.stdout.split("\n")
    assert (uid, host, pid) == ("0", "rl", "1")        # the command is PID 1
    assert uid_map_and_rest[0].split() == ["0", str(NOBODY), "1"]
    assert uid_map_and_rest[1] == "lo"
    assert uid_map_and_rest[2] == "1", "root inside cannot write the host's root-owned files"
    assert (as_nobody.home / "pykvm" / "containers").is_dir()
    assert containers_in(as_nobody.home / "pykvm" / "containers") == []


def test_rootless_says_which_limits_it_cannot_apply(as_nobody, rootless_rootfs):
    r = as_nobody("run", "--rm", "--memory", "64M", "--pids-limit", "10", "--rootfs", rootless_rootfs, "true")
    assert r.returncode == 0
    assert "rootless: memory, pids limits NOT applied" in r.stderr, r.stderr


def test_rootless_cannot_become_another_user(as_nobody, rootless_rootfs):
    r = as_nobody("run", "--rm", "-u", "1000", "--rootfs", rootless_rootfs, "id")
    assert r.returncode == 2
    assert "only uid/gid 0 exists inside" in r.stderr


def test_rootless_host_network_binds_the_hosts_sys(as_nobody, rootless_rootfs):
    """sysfs cannot be mounted for a network namespace we do not own: /sys is bound instead."""
    r = as_nobody("run", "--rm", "--network", "host", "--rootfs", rootless_rootfs, "ls", "/sys/class/net")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted(os.listdir("/sys/class/net"))


def test_rootless_state_dir_problem_is_one_line(as_nobody, rootless_rootfs):
    r = as_nobody("run", "--rootfs", rootless_rootfs, "true", PYKVM_STATE_ROOT="/root/forbidden")
    assert r.returncode == 1
    assert r.stderr.startswith("pykvm: error: cannot create the state directory /root/forbidden")


def test_rootless_terminal_is_pts_0_of_its_own_devpts(as_nobody, rootless_rootfs):
    """-it in a user namespace: devpts, ptmx and the console socket need no privilege."""
    from ptyrun import lines, run_on_pty
    argv, env = as_nobody.command("run", "--rm", "-it", "--rootfs", rootless_rootfs, "sh", "-c",
                                  "tty; stty size; id -u; ls /proc/self/fd; exit 2")
    r = run_on_pty(argv, env, size=(30, 90))
    assert lines(r.output)[:4] == ["/dev/pts/0", "30 90", "0", "0  1  2  3"], r.output
    assert r.status == 2
    assert r.mode_after == r.mode_before


def test_rootless_exec_joins_the_user_namespace_first(as_nobody, rootless_rootfs):
    """exec as the same ordinary user: setns(user) first gives the rights to join the rest."""
    r = as_nobody("run", "-d", "--init", "--hostname", "rl", "--rootfs", rootless_rootfs, "sleep", "1000")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    try:
        r = as_nobody("exec", cid, "sh", "-c", "id -u; hostname; cat /proc/self/uid_map; cat /proc/1/comm; "
                      "touch /tmp/by-exec && echo wrote")
        assert r.returncode == 0, r.stderr
        uid, host, uid_map, comm, wrote = r.stdout.splitlines()
        assert (uid, host, comm, wrote) == ("0", "rl", "pykvm-init", "wrote")
        assert uid_map.split() == ["0", str(NOBODY), "1"]
        assert (rootless_rootfs / "tmp" / "by-exec").stat().st_uid == NOBODY
    finally:
        assert as_nobody("rm", "-f", cid).returncode == 0


def test_rootless_has_no_bridge(as_nobody, rootless_rootfs):
    """A veth into the host's network namespace needs root there: rootless defaults to `none`."""
    r = as_nobody("run", "--rm", "--rootfs", rootless_rootfs, "ls", "/sys/class/net")
    assert r.returncode == 0 and r.stdout.split() == ["lo"], r.stdout + r.stderr
    r = as_nobody("run", "--rm", "--network", "bridge", "--rootfs", rootless_rootfs, "true")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("pykvm: error: --network bridge needs root"), r.stderr
