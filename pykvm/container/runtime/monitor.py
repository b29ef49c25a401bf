"""The monitor: the launcher's child, which outlives a detached launcher and records how
the container ended.

    monitor   (outside the container, except its user+PID namespaces)
      |  unshare(CLONE_NEWUSER) if asked, unshare(CLONE_NEWPID): its *next*
      |  child is PID 1 of a new PID namespace; then waits for that child,
      |  records the exit status (exit.json), removes the cgroup
      v
    init      (PID 1 inside: init.py; it becomes the command, or with --init forks it)

Under an engine (Container.hand_over) the monitor exits as soon as init is forked, so that
init's parent becomes the engine's subreaper (conmon, containerd-shim), which waits for it.
With -d -t the monitor also holds the pty master and copies the container's output to
container.log.  In the foreground, if the launcher dies, the monitor kills the container
and cleans up as the launcher would have.
"""
from __future__ import annotations

import json
import os
import signal
import time

from pykvm.container.runtime import namespaces as ns
from pykvm.container.runtime.cgroups import close_all
from pykvm.container.runtime.config import RunConfig
from pykvm.container.runtime.init import run_init
from pykvm.container.runtime.process import (DETACHED, EXIT_SETUP_FAILED, FOREGROUND, EventPipe,
                                             child_main, detach_stdio, exit_code, install_stdio,
                                             kill_quietly, waitpid_retry)
from pykvm.container.runtime.syscalls import lib, prctl

TYPE_CHECKING = False              # typing.TYPE_CHECKING, without importing typing (3 ms)
if TYPE_CHECKING:
    from pykvm.container.runtime.launcher import Container

__all__ = ["run_monitor", "join_user_and_pid", "LAUNCHER_GONE"]

LAUNCHER_GONE = signal.SIGUSR2    # PR_SET_PDEATHSIG: what the monitor gets when the launcher dies


def run_monitor(container: Container, pipe: EventPipe, stdio: dict) -> int:
    """The monitor's whole life: fork init into new user+PID namespaces, wait for it,
    write exit.json; returns init's exit status (the monitor's own)."""
    pipe.child_side()
    launcher_gone = []
    if container.mode == FOREGROUND:
        # Launcher killed -> kill the container, then clean up as the launcher would have.
        def on_launcher_gone(*_):
            launcher_gone.append(True)
            kill_quietly(container.init_pid)
        signal.signal(LAUNCHER_GONE, on_launcher_gone)
        prctl(lib.PR_SET_PDEATHSIG, LAUNCHER_GONE)
        if os.getppid() == 1:                           # it died before prctl() took effect
            os._exit(EXIT_SETUP_FAILED)
    else:
        os.setsid()
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP):
        signal.signal(sig, signal.SIG_IGN)              # the launcher forwards these
    stdio = install_stdio(stdio)                        # the launcher's own stdio stays out
    container.close_console_sockets(keep_host=container.mode == DETACHED, keep_inside=True)
    join_user_and_pid(container.cfg, pipe)
    pid = os.fork()
    if pid == 0:
        child_main(lambda: run_init(container, pipe, stdio), pipe)
    container.init_pid = pid
    container.pid_namespace = ns.namespace_id(pid)
    pipe.send(pid=pid)
    os.close(pipe.events_w)
    os.close(pipe.ack_r)
    close_all(container.join_fds)
    if container.hand_over:             # an engine's subreaper adopts init and waits for it
        return 0
    detach_stdio()
    container.close_console_sockets(keep_host=True)
    if container.tty_host is not None:
        _log_terminal(container, pid)
    _, status = waitpid_retry(pid)
    code = exit_code(status)
    oom = container.cgroup is not None and container.cgroup.oom_kills() > 0
    os.write(container.exit_fd, json.dumps({"exit_code": code, "oom_killed": oom,
                                            "finished": time.time()}).encode())
    if container.mode == DETACHED or launcher_gone:
        container.cleanup(remove_state=container.cfg.remove)
    return code


def join_user_and_pid(cfg: RunConfig, pipe: EventPipe) -> None:
    """The user namespace first (it owns the rest), then the PID namespace for our child."""
    for kind in ("user", "pid"):
        if kind not in cfg.namespaces:
            continue
        path = cfg.namespaces[kind]
        if path:
            ns.setns(path, kind)
            continue
        ns.unshare(ns.CLONE_FLAGS[kind])
        if kind == "user":
            # /proc/PID/uid_map belongs to root when we are not dumpable (as after a
            # setuid()); the launcher, maybe not root, must be able to write it.
            prctl(lib.PR_SET_DUMPABLE, 1)
            pipe.send(user=1)
            pipe.wait_ack()
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)


def _log_terminal(container: Container, init_pid: int) -> None:
    """-d -t: the monitor holds the pty master and copies what the container writes to
    container.log (Docker keeps a detached terminal's output the same way)."""
    from pykvm.container.runtime import terminal
    received = terminal.receive_master(container.tty_host)
    container.close_console_sockets()
    if received is None:
        return
    log = container.open_log()
    try:
        terminal.relay(received[0], log, init_pid)
    finally:
        os.close(log)
        os.close(received[0])
