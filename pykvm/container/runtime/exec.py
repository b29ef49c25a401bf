"""`pykvm container exec`: a new process in a running container (docker exec, runc exec).

A running container is a set of namespaces and cgroups that its init holds.
A new process enters them as nsenter(1) does, then becomes the command the way
the container's own command did (command.exec_command), starting from the
same process settings (state.json "process", as runc exec copies config.json's
`process`): environment, working directory, user, capability bounding set,
no_new_privs, rlimits, the seccomp filter (compiled once, at the launch).

    exec      (the pykvm command; host namespaces)
      |  finds the container, forwards Ctrl-C, with -t relays the pty,
      |  exits with the command's status
      v
    joiner    (host PID namespace; every other namespace the container's)
      |  1. opens /proc/<init>/ns/* (all before joining any: after setns(mnt)
      |     the host's /proc is out of sight), then checks init is still the
      |     process state.json recorded (its start time: no reused PID)
      |  2. joins the container's cgroups (before its cgroup namespace: cgroup v2
      |     moves a process only within the mover's cgroup-namespace root)
      |  3. setns(2) in namespaces.ORDER: user first (it owns the others), mount
      |     last; setns(mnt) also moves root and cwd to the container's "/"
      |  4. joins the container's session keyring (runc exec's "_ses.<id>")
      |  5. -t: a pty from the container's devpts; its master goes out over a socketpair
      |  6. fork(): setns(pid) applies to children only (pid_namespaces(7))
      v  then drops to the command's credentials, forwards signals and reaps,
         exiting with the command's status
    command   (a new PID inside the container)
         setsid, cwd, no_new_privs, bounding set, uid/gid, only fds 0-2 (and
         those of --preserve-fds), the container's seccomp filter, execve(2)

The command lives as long as the `exec` command: if that is killed, the joiner
gets a parent-death signal and SIGKILLs the command (Docker's daemon would keep
it; we have no daemon to report its end to).  The event pipe is process.py's, as
for `run`: the launcher reads end-of-file when the command's execve succeeds, or its
error.
"""
from __future__ import annotations

import os
import signal
from dataclasses import replace

from pykvm.container.runtime import namespaces as ns
from pykvm.container.runtime.cgroups import Cgroup, close_all, join
from pykvm.container.runtime.command import become_container_process, exec_command, fork_command, set_rlimits
from pykvm.container.runtime.config import RunConfig, check_env, merge_env
from pykvm.container.runtime.init import FORWARDED_SIGNALS, new_session_keyring, reap
from pykvm.container.runtime.process import (EXIT_SETUP_FAILED, EventPipe, SignalForwarder, child_main,
                                             close_other_fds, detach_stdio, exit_code, install_stdio,
                                             waitpid_retry)
from pykvm.container.runtime.seccomp import Filter
from pykvm.container.runtime.state import StateStore, pid_alive, stat_field, stat_fields
from pykvm.container.runtime.syscalls import lib, prctl
from pykvm.container.runtime.users import ExecUser, resolve_user
from pykvm.container.runtime.validate import validate
from pykvm.errors import ConfigError, ContainerError, SyscallError

__all__ = ["exec_config", "exec_in", "check_not_a_vm", "exec_process_spec", "exec_program", "LAUNCHER_GONE"]

LAUNCHER_GONE = signal.SIGRTMIN   # the joiner's PR_SET_PDEATHSIG: not one init forwards


def check_not_a_vm(state) -> None:
    """A `run -d --isolation vm` container's pid is the pykvm process on the host: joining its
    namespaces would run the command on the host, not in the guest.  Refused."""
    if state.isolation == "vm":
        raise ContainerError(f"container {state.id} runs in a VM (--isolation vm): exec cannot "
                             "enter it (its process is pykvm, on the host; the command runs in the guest)")


def exec_config(state, args: list[str], env: list[str] = (), cwd: str | None = None,
                user: str | None = None, tty: bool = False, interactive: bool = False) -> RunConfig:
    """The command's RunConfig: the container's process settings, then exec's own options.

    Docker's rules: the container's environment, TERM=xterm with -t, then -e;
    -w and -u replace the container's; a user name is looked up in the
    container's /etc/passwd (through /proc/<init>/root: the root init sees).
    """
    check_not_a_vm(state)
    if not args:
        raise ConfigError("give the command to run in the container")
    p = state.process
    base = RunConfig(args=list(args))
    who = ExecUser(p.get("uid", 0), p.get("gid", 0), p.get("additional_gids", []))
    if user:
        try:
            who = resolve_user(user, f"/proc/{state.pid}/root")
        except OSError as e:
            raise ContainerError(f"cannot look up user {user!r} in container {state.id}: {e.strerror} "
                                 f"(give a number: -u UID[:GID])") from None
    cfg = replace(base, env=merge_env(merge_env(p.get("env") or base.env,
                                                      ["TERM=xterm"] if tty else []), list(env)),
                  cwd=cwd or p.get("cwd", "/"), uid=who.uid, gid=who.gid, additional_gids=who.groups,
                  capabilities=p.get("capabilities") or base.capabilities,
                  personality=p.get("personality"), io_priority=p.get("io_priority"),
                  no_new_privileges=p.get("no_new_privileges", True),
                  rlimits=[tuple(r) for r in p.get("rlimits", base.rlimits)],
                  umask=p.get("umask", base.umask), new_keyring=p.get("new_keyring", True),
                  seccomp_filter=Filter.from_json(p.get("seccomp")),
                  tty=tty, interactive=interactive, id=state.id, namespaces={})
    for entry in cfg.env:
        check_env(entry)
    validate(cfg)
    return cfg


def exec_in(ref: str, cfg: RunConfig, store: StateStore | None = None, detach: bool = False) -> int:
    """Run cfg.args in running container `ref`; return its exit status (128+N for signal N).

    `detach` (exec -d): return 0 as soon as the command runs; it lives on in the
    background, its output discarded, until it ends or the container stops.
    """
    if detach and (cfg.tty or cfg.interactive):
        raise ConfigError("exec -d runs the command in the background: it cannot have -i or -t")
    store = store or StateStore()
    state = store.resolve(ref)
    _check_running(store, state)
    return _Exec(state, cfg, detach).run()


def exec_process_spec(state, process: dict) -> RunConfig:
    """runc exec --process FILE: an OCI process object (config.md "Process"), read as
    config.json's `process` is (bundle.py) and checked whole, for the running `state`."""
    from pykvm.container.runtime.bundle import config_from_spec
    from pykvm.container.runtime.state import OCI_VERSION
    check_not_a_vm(state)
    spec = {"ociVersion": OCI_VERSION, "process": process, "root": {"path": state.rootfs or "/"}}
    cfg = replace(config_from_spec(spec, state.bundle or "/"), id=state.id, namespaces={},
                  new_keyring=state.process.get("new_keyring", True))
    validate(cfg)
    return cfg


def exec_program(state, cfg: RunConfig, detach: bool = False, console_socket: str | None = None,
                 on_started=None) -> int:
    """runc exec as an engine calls it: the caller's stdio is the process's, the pty master
    (process.terminal) goes to `console_socket`, `on_started(pid)` gets the PID the caller
    waits for.  `detach`: return 0 once the process runs; its parent becomes the caller's
    subreaper (conmon, containerd-shim), as after `create`.  Else its exit status."""
    console = None
    if cfg.tty:
        if not console_socket:
            raise ConfigError("process.terminal is true: exec needs --console-socket PATH (as runc)")
        from pykvm.container.runtime.terminal import connect_console_socket
        console = connect_console_socket(console_socket)
    return _Exec(state, cfg, detach, keep_stdio=True, console=console, on_started=on_started).run()


def _check_running(store: StateStore, state) -> None:
    status = store.status(state)
    if status != "running":
        raise ContainerError(f"container {state.id} is {status}, not running: cannot exec in it")


def _parent(pid: int) -> int:
    """Field 4 of /proc/PID/stat (ppid); 0 if there is no such process."""
    try:
        return int(stat_field(stat_fields(pid), 4))
    except OSError:
        return 0


class _Exec:
    """One `exec`: the launcher's side and (after fork) the joiner's."""

    def __init__(self, state, cfg: RunConfig, detach: bool = False, keep_stdio: bool = False,
                 console=None, on_started=None):
        self.state = state
        self.cfg = cfg
        self.detach = detach
        self.keep_stdio = keep_stdio          # an engine's pipes are the command's stdio, even with -d
        self.console = console                # an engine's --console-socket, connected
        self.on_started = on_started or (lambda pid: None)
        self.launcher_pid = os.getpid()
        self.tty_host = self.tty_inside = None
        self.winsize = None

    # --- launcher side ---------------------------------------------------------
    def run(self) -> int:
        stdio = self._stdio()
        self._make_console_socket()
        pipe = EventPipe()
        joiner, error = 0, None
        forward = SignalForwarder(lambda: joiner)
        try:
            joiner = os.fork()
            if joiner == 0:
                child_main(lambda: self._start_joiner(pipe, stdio), pipe)
            pipe.launcher_side()
            close_all(stdio["close"])
            self._close_inside()
            error, started = self._follow_setup(pipe)
            if error is None:
                self.on_started(started or joiner)       # -d: the joiner, forked by our child
            if error is None and self.tty_host is not None:
                from pykvm.container.runtime import terminal
                terminal.attach(self.tty_host, joiner, self.cfg.interactive)
            _, status = waitpid_retry(joiner)
        finally:
            forward.restore()
            if self.tty_host is not None:
                self.tty_host.close()
        if error is not None:
            exc = ContainerError(error["error"])
            exc.exit_code = error.get("code", EXIT_SETUP_FAILED)
            raise exc
        return 0 if self.detach else exit_code(status)

    def _stdio(self) -> dict:
        """The command's 0, 1, 2: ours (stdin only with -i); with -t the pty, made later;
        with -d nothing of ours."""
        if self.keep_stdio and not self.cfg.tty:
            return {"in": 0, "out": 1, "err": 2, "close": []}
        if self.detach:
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            return {"in": null, "out": null, "err": null, "close": [null]}
        if self.cfg.interactive and not self.cfg.tty:
            return {"in": 0, "out": 1, "err": 2, "close": []}
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        return {"in": null, "out": 1, "err": 2, "close": [null]}

    def _make_console_socket(self) -> None:
        if not self.cfg.tty:
            return
        if self.console is not None:                 # the master goes straight to the engine
            self.tty_inside = self.console
            return
        import socket

        from pykvm.container.runtime import terminal
        self.winsize = terminal.get_winsize(terminal.our_terminal())
        self.tty_host, self.tty_inside = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def _close_inside(self) -> None:
        if self.tty_inside is not None:
            self.tty_inside.close()
            self.tty_inside = None

    @staticmethod
    def _follow_setup(pipe: EventPipe) -> tuple[dict | None, int]:
        """Until the command's execve closes the pipe: (None, or the error a child reported;
        the joiner's PID if it was reported: -d)."""
        started = 0
        try:
            while (event := pipe.receive()) is not None:
                if "error" in event:
                    return event, started
                started = event.get("pid", started)
            return None, started
        finally:
            os.close(pipe.events_r)
            os.close(pipe.ack_w)

    # --- the joiner (child of the launcher) -------------------------------------
    def _start_joiner(self, pipe: EventPipe, stdio: dict) -> int:
        """Be the joiner; with -d, fork it off in a session of its own and return at once
        (its parent gone, the host's init or a subreaper reaps it: a daemon's double fork)."""
        if not self.detach:
            return self._joiner(pipe, stdio)
        os.setsid()                                  # Ctrl-C and hangups of our terminal are not for it
        joiner = os.fork()
        if joiner == 0:
            child_main(lambda: self._joiner(pipe, stdio), pipe)
        pipe.send(pid=joiner)
        return 0

    def _joiner(self, pipe: EventPipe, stdio: dict) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS + (signal.SIGCHLD, LAUNCHER_GONE))
        if not self.detach:
            prctl(lib.PR_SET_PDEATHSIG, LAUNCHER_GONE)
            if os.getppid() != self.launcher_pid:           # it died before prctl() took effect
                return EXIT_SETUP_FAILED
        prctl(lib.PR_SET_DUMPABLE, 0)       # no /proc/<us>/fd for the container while we hold host fds
        pipe.child_side()
        stdio = install_stdio(stdio)
        if self.tty_host is not None:
            self.tty_host.close()
        spaces, cgroup_fds = self._open_container()
        close_other_fds({pipe.events_w, *(fd for _, fd in spaces), *cgroup_fds,
                             *([self.tty_inside.fileno()] if self.tty_inside else [])},
                        preserved=self.cfg.preserve_fds)
        join(cgroup_fds)
        self._enter(spaces)
        if self.cfg.new_keyring:
            new_session_keyring(self.state.id)         # the container's own, as runc exec joins it
        set_rlimits(self.cfg.rlimits)
        if self.cfg.tty:
            stdio = self._open_terminal()
        child = fork_command(self.cfg)
        if child == 0:
            child_main(lambda: exec_command(self.cfg, pipe, stdio), pipe)
        os.close(pipe.events_w)
        close_all(stdio["close"])                          # the pty's slave is the command's alone
        detach_stdio()                                 # the container's /dev/null now
        close_other_fds(set())                         # the preserved fds are the command's alone
        become_container_process(self.cfg)              # no more privilege than the command's
        return reap(child, kill_on=() if self.detach else (LAUNCHER_GONE,))

    def _open_cgroup_files(self) -> list[int]:
        """The files through which the command joins the container's own cgroup (the
        directories its state.json recorded), as runc exec does; none for a container
        without one (rootless).  Never any other cgroup init happens to be in."""
        recorded = self.state.cgroup or {}
        if not recorded.get("dirs"):
            return []
        return Cgroup.from_dirs(recorded["version"], recorded["dirs"]).join_files()

    def _open_container(self) -> tuple[list[tuple[str, int]], list[int]]:
        """The container's namespaces and cgroups, opened while we still see the host's /proc."""
        pid = self.state.pid
        try:
            spaces = self._open_namespaces(pid)
            cgroup_fds = self._open_cgroup_files()
        except FileNotFoundError:
            raise ContainerError(f"container {self.state.id} is not running (its init is gone)") from None
        except OSError as e:
            raise ContainerError(f"cannot open the namespaces or cgroups of container "
                                 f"{self.state.id} (init PID {pid}): {e.strerror}") from None
        if not pid_alive(pid, self.state.pid_start):        # the PID now names another process
            raise ContainerError(f"container {self.state.id} is not running (its init is gone)")
        if "mount" not in dict(spaces):
            raise ContainerError(f"container {self.state.id} shares our mount namespace: "
                                 f"nothing to exec into")
        return spaces, cgroup_fds

    @staticmethod
    def _open_namespaces(init: int) -> list[tuple[str, int]]:
        """init's namespaces; rootless, its first child's (the command's).

        /proc/PID/ns of a non-dumpable process (our init) opens only with
        CAP_SYS_PTRACE in the user namespace its memory belongs to (ptrace(2),
        "Ptrace access mode checking").  pykvm-init never execve()s, so its memory
        is still the host's, where a rootless user has no such capability.  The
        command execve()d inside, so its memory belongs to the container's user
        namespace, which that user owns: its namespaces (the same ones) open.
        """
        try:
            return ns.open_other(init)
        except PermissionError:
            if os.geteuid() == 0:
                raise
        try:
            with open(f"/proc/{init}/task/{init}/children") as f:      # proc(5), Linux 3.5
                children = f.read().split()
        except FileNotFoundError:
            children = []
        if not children:
            raise ContainerError(f"cannot open the namespaces of init (PID {init}) and it has no "
                                 f"child to open them through")
        child = int(children[0])
        spaces = ns.open_other(child)
        if _parent(child) != init:                       # it exited and its PID went elsewhere
            close_all([fd for _, fd in spaces])
            raise ContainerError(f"the container's command (PID {child}) exited while we looked")
        return spaces

    def _enter(self, spaces: list[tuple[str, int]]) -> None:
        """setns(2) into each, in namespaces.ORDER; then stand at the container's "/"."""
        denied = ns.setgroups_denied()              # asked now: inside, /proc/self is not ours
        for kind, fd in spaces:
            try:
                ns.setns(fd, kind)
            except SyscallError as e:
                raise ContainerError(f"cannot join container {self.state.id}'s {kind} namespace: "
                                     f"{os.strerror(e.errno)}") from None
            os.close(fd)
        if "user" in dict(spaces) or denied:
            self.cfg = replace(self.cfg, namespaces={"user": "joined"})   # setgroups may be denied
        os.chdir("/")

    def _open_terminal(self) -> dict:
        """A pty from the container's devpts (runc exec -t); the master goes to the launcher."""
        from pykvm.container.runtime import terminal
        try:
            slave = terminal.new_console(self.tty_inside, self.winsize)
        finally:
            self._close_inside()
        return {"in": slave, "out": slave, "err": slave, "close": [slave]}
