"""The container runtime: a RunConfig (or an OCI bundle) -> a running container.

Four processes, each with one job (the arrows are fork(2)):

    launcher  (the pykvm command or your Python program; host namespaces)
      |  creates the state dir and the cgroup, writes uid/gid maps, records
      |  init's PID, forwards Ctrl-C, reports the exit status
      v
    monitor   (outside the container, except its user+PID namespaces)
      |  unshare(CLONE_NEWUSER) if asked, unshare(CLONE_NEWPID): its *next*
      |  child is PID 1 of a new PID namespace; then waits for that child,
      |  records the exit status (exit.json), removes the cgroup
      v
    init      (PID 1 inside; Python)
      |  join the cgroup (cgroups.py: Cgroup.join_files says why init moves itself),
      |  unshare mount/uts/ipc/net/cgroup namespaces, bring `lo` up, set the
      |  hostname, join a session keyring of its own, build the root filesystem
      |  (with linux.sysctl) and pivot_root into it (rootfs.py), with -t make the
      |  pty from the container's own devpts (terminal.py), fork the command, drop
      |  to the command's credentials, then forward every signal to it and reap
      |  every zombie
      v
    command   (PID 2 inside)
         oom_score_adj, umask, setsid, chdir, no_new_privs, capabilities, uid/gid,
         only fds 0-2, execve(2)

Nothing of this starts before the whole config is checked (validate.py).

A pipe from the children to the launcher carries one JSON line per event
({"user": 1} "please write my id maps", {"pid": N}, {"hooks": 1} "my mounts
are made: run the prestart and createRuntime hooks", {"ready": 1},
{"error": msg, "code": N}); it is close-on-exec, so when the command's execve
succeeds the launcher reads end-of-file.  A second pipe carries the launcher's
one-byte acknowledgements back.  With -t a unix socketpair carries the pty
master (SCM_RIGHTS) from init out to the launcher, which connects it to your
terminal; with -d -t to the monitor, which copies it to container.log; for
`oci create` to the --console-socket the caller listens on.

Library users call `run_container(RunConfig) -> int`; an image becomes a RunConfig on the
image side (pykvm.container.image.runconfig), which the runtime never imports.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import resource
import select
import signal
import sys
import time
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING

from pykvm.container.runtime import capabilities as caps
from pykvm.container.runtime import namespaces as ns
from pykvm.container.runtime import rootfs as fs
from pykvm.container.runtime.cgroups import Cgroup, close_all, join, open_cgroup
from pykvm.container.runtime.config import (DEFAULT_ENV, DEFAULT_UMASK, RunConfig, check_env, merge_env,
                                            process_defaults)
from pykvm.container.runtime.hooks import hooks_from_json, hooks_to_json, run_hooks
from pykvm.container.runtime.state import (ContainerState, StateStore, new_id, oci_state_json,
                                           process_start_time, stat_field, stat_fields)
from pykvm.container.runtime.syscalls import (join_session_keyring, key_permissions, lib, prctl,
                                              set_key_permissions, sethostname)
from pykvm.container.runtime.users import ExecUser, parse_user, resolve_user
from pykvm.container.runtime.validate import RLIM_INFINITY
from pykvm.errors import ConfigError, ContainerError, PyKvmError, SyscallError

if TYPE_CHECKING:
    import socket  # annotations only: the -t code imports it (and terminal.py) when used

__all__ = ["RunConfig", "RunResult", "Container", "run_container", "launch", "parse_user", "resolve_user", "ExecUser", "DEFAULT_ENV", "FOREGROUND",
           "DETACHED", "CREATED", "become_container_process", "fork_command", "new_session_keyring",
           "owned_by", "oci_create", "oci_run", "oci_start", "kill_container", "stop_container",
           "remove_container", "wait_stopped", "process_defaults",
           "merge_env", "check_env"]

# What pykvm-init passes on to the command: every signal a process can catch (SIGCHLD
# is init's own), real-time ones too, as tini and Docker's --init do.
FORWARDED_SIGNALS = tuple(sorted(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD}))
EXIT_NOT_FOUND = 127              # a shell's "command not found" (and Docker's)
EXIT_CANNOT_EXEC = 126            # found but not executable
EXIT_SETUP_FAILED = 125           # the runtime itself failed (Docker's convention)
LAUNCHER_GONE = signal.SIGUSR2    # PR_SET_PDEATHSIG: what the monitor gets when the launcher dies
MAX_FD = 1 << 20                  # fs.nr_open's default: no fd number is above it
INIT_NAME = "pykvm-init"          # init's name in ps, /proc/1/comm and /proc/1/cmdline inside
OOM_SCORE_INIT = -1000            # proc(5): never pick init; the command starts again from 0
KEY_USR_SEARCH = 0x00080000       # keyctl(2) KEYCTL_SETPERM: the owner may search (and join) it

# The launcher's three modes.
FOREGROUND = "foreground"         # `run`: wait for the container, stdio passed through
DETACHED = "detached"             # `run -d`: output to container.log, return at once
CREATED = "created"               # `oci create`: set up, then wait for `oci start`


@dataclass
class RunResult:
    """How a container ended."""

    id: str
    exit_code: int
    oom_killed: bool = False


class _Pipe:
    """The child -> launcher event pipe (one JSON object per line) and its ack pipe."""

    def __init__(self):
        self.events_r, self.events_w = os.pipe2(os.O_CLOEXEC)
        self.ack_r, self.ack_w = os.pipe2(os.O_CLOEXEC)
        self._buffer = b""

    def send(self, **event) -> None:
        os.write(self.events_w, json.dumps(event).encode() + b"\n")

    def receive(self) -> dict | None:
        while b"\n" not in self._buffer:
            chunk = os.read(self.events_r, 4096)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def wait_ack(self, launcher_reports: bool = False) -> None:
        """Wait for the launcher's go-ahead.  `launcher_reports`: no go-ahead means the
        launcher failed at something it reports itself (a hook): leave without a word."""
        if os.read(self.ack_r, 1) != b"1":
            if launcher_reports:
                os._exit(EXIT_SETUP_FAILED)
            raise ContainerError("the launcher went away during setup")

    def ack(self) -> None:
        try:
            os.write(self.ack_w, b"1")
        except BrokenPipeError:
            pass                          # the child died: its error, if any, is next in the event pipe

    def child_side(self) -> None:
        os.close(self.events_r)
        os.close(self.ack_w)

    def launcher_side(self) -> None:
        os.close(self.events_w)
        os.close(self.ack_r)


class Container:
    """One container being launched, and then waited for."""

    def __init__(self, config: RunConfig, mode: str = FOREGROUND, store: StateStore | None = None,
                 warn=None, console: socket.socket | None = None):
        self.cfg = config.finalized()
        self.mode = mode
        self.store = store or StateStore()
        self.warn = warn or (lambda msg: print(f"pykvm: warning: {msg}", file=sys.stderr))
        self.id = self.cfg.id or new_id()
        self.state = ContainerState(
            id=self.id, name=self.cfg.name or self.id, bundle=self.cfg.bundle,
            rootfs=self.cfg.rootfs or "", command=list(self.cfg.args), created=time.time(),
            auto_remove=self.cfg.remove, detached=mode != FOREGROUND,
            annotations=self.cfg.annotations, image=self.cfg.image, layers=list(self.cfg.lower_dirs),
            process=process_defaults(self.cfg), hooks=hooks_to_json(self.cfg.hooks))
        self.dir = None
        self.cgroup: Cgroup | None = None
        self.monitor_pid = 0
        self.init_pid = 0
        self._exit_fd = -1
        # -t: init sends the pty master over _tty_inside to _tty_host (terminal.py).  `oci
        # create` has no host end of ours: `console` is the connected --console-socket.
        self._tty_host, self._tty_inside = None, console
        self.winsize = None
        self._join_fds: list[int] = []         # init joins its cgroup through these (cgroups.join)
        self.pid_namespace: tuple[int, int] | None = None   # init's: whose processes are ours
        self.lease = None                      # --network bridge: network.Lease (address, ports)

    # --- launcher side ---------------------------------------------------------
    def start(self) -> Container:
        """Create everything, fork the monitor, wait until the command runs (or is ready)."""
        self.cgroup = self._find_cgroup()         # recorded in the first state.json, made next
        self.dir = str(self.store.create(self.state))
        try:
            self._start()
        except BaseException:
            self._abort()
            raise
        return self

    def _start(self) -> None:
        self._make_cgroup()
        if self.cfg.etc_files:
            self._add_etc_files()
        if self.cfg.network == "bridge":
            self._reserve_network()
        if self.mode == CREATED:
            os.mkfifo(os.path.join(self.dir, "exec.fifo"), 0o600)
        self._exit_fd = os.open(os.path.join(self.dir, "exit.json"),
                                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        stdio = self._stdio()
        self._make_console_socket()
        pipe = _Pipe()
        pid = os.fork()
        if pid == 0:
            _child_main(lambda: self._monitor(pipe, stdio))
        self.monitor_pid = pid
        pipe.launcher_side()
        os.close(self._exit_fd)
        close_all(self._join_fds)
        self._join_fds = []
        self._close_stdio(stdio)
        self._close_console_sockets(keep_host=self.mode == FOREGROUND)
        self._follow_setup(pipe)

    def _add_etc_files(self) -> None:
        """Write the container's hostname, hosts and resolv.conf; init binds them over /etc's."""
        from pykvm.container.runtime.etcfiles import write_etc_files
        mounts = write_etc_files(self.dir, self.cfg.hostname_for(self.id), "network" not in self.cfg.namespaces,
                                 None if self.cfg.lower_dirs else self.cfg.rootfs)
        self.cfg = replace(self.cfg, mounts=self.cfg.mounts + mounts)

    # --- --network bridge: network.py does the work, in three calls --------------
    def _reserve_network(self) -> None:
        """Before any fork: an address and the host ports (a taken port fails here)."""
        from pykvm.container.runtime import network
        self.lease = network.reserve(self.id, self.state.name, self.cfg.hostname_for(self.id) or "",
                                     self.cfg.publish, os.path.join(self.dir, "hosts"))

    def _connect_network(self) -> None:
        """init has its network namespace and waits: the veth, address, route, ports."""
        from pykvm.container.runtime import network
        network.connect(self.lease, self.init_pid)

    def _release_network(self) -> None:
        """Give the address and ports back.  In the monitor, children are born in the
        container's PID namespace, whose init is dead (fork(2): ENOMEM), and `ip`/`nft`
        are children: point pid_for_children back at our own namespace first."""
        if self.lease is None:
            return
        from pykvm.container.runtime import network
        ns.setns("/proc/self/ns/pid", "pid")
        network.release(self.id)
        self.lease = None

    def _find_cgroup(self) -> Cgroup | None:
        """Where the container's cgroup will be (nothing is created yet), noted in self.state.

        Noting it before StateStore.create writes state.json saves a second write
        (a launch is ~12 ms; each state.json write is ~0.3 ms): `rm` finds the
        directories even if the launcher dies half-way.
        """
        try:
            cg = open_cgroup(self.id, self.cfg.cgroups_path)
            if cg is None:
                raise ContainerError("no cgroup filesystem at /sys/fs/cgroup")
        except (ContainerError, OSError) as e:
            return self._without_cgroup(e)
        self.state.cgroup = {"version": cg.version, "dirs": [str(d) for d in cg.dirs()],
                             "named": self.cfg.cgroups_path is not None}
        return cg

    def _make_cgroup(self) -> None:
        """Create the cgroup with its limits, and open the files init joins it through."""
        if self.cgroup is None:
            return
        try:
            if self.cfg.cgroups_path is not None:       # pykvm/<id> is new: no one else's
                self._check_shared_cgroup()
            self.cgroup.create(self.cfg.limits)
            self._join_fds = self.cgroup.join_files()
        except OSError as e:
            self._cgroup_failed(ContainerError(f"cannot set up {self.cgroup.describe()}: {e.strerror}"))
        except ContainerError as e:
            self._cgroup_failed(e)

    def _cgroup_failed(self, error: ContainerError) -> None:
        self.cgroup = self._without_cgroup(error)
        self.state.cgroup = {}
        self.store.save(self.state)

    def _check_shared_cgroup(self) -> None:
        """A cgroupsPath that already holds processes: shared, with runc 1.1's warning, when
        the container's own PID namespace tells its processes from the others'; refused when
        it has none (destroying the container would then kill the others too)."""
        others = self.cgroup.pids()
        if not others:
            return
        if "pid" not in self.cfg.namespaces or self.cfg.namespaces["pid"]:
            raise ContainerError(f"{self.cgroup.describe()} already holds {len(others)} process(es) and the "
                                 f"container has no PID namespace of its own to tell its processes "
                                 f"from theirs: give it its own cgroupsPath")
        self.warn(f"{self.cgroup.describe()} is not empty: {len(others)} process(es) found; the "
                  f"container shares it (and its limits) with them")

    def _mine(self, pid: int) -> bool:
        return owned_by(self.pid_namespace, self.cfg.cgroups_path is not None)(pid)

    def _without_cgroup(self, error: Exception) -> None:
        """Root must have a cgroup; rootless goes on without one, warning if limits were asked for."""
        if not self.cfg.rootless:
            raise error
        limits = self.cfg.limits
        if limits.wanted():
            self.warn(f"rootless: {', '.join(limits.wanted())} limits NOT applied: {error}")
        return None

    def _stdio(self) -> dict:
        """The fds that become the container's 0, 1, 2 (with -t: init's, until its pty exists)."""
        if self.cfg.tty:
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            return {"in": null, "out": null, "err": null, "close": [null]}
        if self.mode == DETACHED:
            log = self._open_log()
            null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            return {"in": null, "out": log, "err": log, "close": [log, null]}
        if self.cfg.interactive or self.mode == CREATED:
            return {"in": 0, "out": 1, "err": 2, "close": []}
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        return {"in": null, "out": 1, "err": 2, "close": [null]}

    @staticmethod
    def _close_stdio(stdio: dict) -> None:
        for fd in stdio["close"]:
            os.close(fd)

    def _open_log(self) -> int:
        """container.log: a detached container's output (`pykvm container logs`)."""
        return os.open(os.path.join(self.dir, "container.log"),
                       os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)

    def _make_console_socket(self) -> None:
        """-t: the socket the pty master comes out by, and the size to give the pty."""
        if not self.cfg.tty:
            if self._tty_inside is not None:
                raise ConfigError("a console socket is only used with a terminal "
                                  "(process.terminal: true in config.json)")
            return
        from pykvm.container.runtime import terminal     # only with -t: it and socket cost ~4 ms to import
        self.winsize = terminal.get_winsize(terminal.our_terminal())
        if self.mode == CREATED:
            if self._tty_inside is None:
                raise ConfigError("process.terminal is true: `oci create` needs --console-socket "
                                  "PATH, a unix socket to send the terminal's master to (as runc)")
            return
        import socket
        self._tty_host, self._tty_inside = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def _console_fds(self) -> list[int]:
        return [sock.fileno() for sock in (self._tty_host, self._tty_inside) if sock is not None]

    def _close_console_sockets(self, keep_host: bool = False, keep_inside: bool = False) -> None:
        """Each process closes the ends it has no use for (so EOF means "no master is coming")."""
        if self._tty_host is not None and not keep_host:
            self._tty_host.close()
            self._tty_host = None
        if self._tty_inside is not None and not keep_inside:
            self._tty_inside.close()
            self._tty_inside = None

    def _follow_setup(self, pipe: _Pipe) -> None:
        """Serve the children's requests until the command is exec'd (EOF) or ready."""
        error = None
        network_asked = False          # init asks for its veth; the monitor's {"pid"} may come after
        try:
            while (event := pipe.receive()) is not None:
                if "user" in event:
                    ns.write_id_maps(self.monitor_pid, self.cfg.uid_mappings, self.cfg.gid_mappings)
                    pipe.ack()
                elif "pid" in event:
                    self._adopt_init(event["pid"])
                elif "hooks" in event:                   # init's mounts are made: runtime-side hooks
                    run_hooks(self.cfg.hooks, ("prestart", "createRuntime"),
                              oci_state_json(self.state, "creating", self.init_pid))
                    pipe.ack()
                elif "network" in event:
                    network_asked = True
                if network_asked and self.init_pid:
                    network_asked = False
                    self._connect_network()
                    pipe.ack()
                elif "ready" in event:
                    break
                elif "error" in event:
                    error = event
                    break
        finally:
            os.close(pipe.events_r)
            os.close(pipe.ack_w)
        if error:
            self._fail(error)

    def _adopt_init(self, pid: int) -> None:
        """Record init's PID (init moves itself into the cgroup: see Container._init)."""
        self.init_pid = pid
        self.state.pid = pid
        self.state.pid_start = process_start_time(pid)
        self.state.monitor_pid = self.monitor_pid
        self.pid_namespace = ns.namespace_id(pid)
        self.state.pid_namespace = list(self.pid_namespace or [])
        self.store.save(self.state)

    def _fail(self, error: dict) -> None:
        """A child reported an error: wait for the container to end, clean up, raise."""
        if self.mode != FOREGROUND:
            os.waitpid(self.monitor_pid, 0)
        else:
            self.wait()
        if self.mode != FOREGROUND or not self.cfg.remove:
            self._cleanup(remove_state=True)
        exc = ContainerError(error["error"])
        exc.exit_code = error.get("code", EXIT_SETUP_FAILED)
        raise exc

    def _abort(self) -> None:
        """Undo a half-made container (launcher-side failure)."""
        close_all(self._join_fds)
        self._join_fds = []
        if self.monitor_pid:
            try:
                os.kill(self.monitor_pid, signal.SIGKILL)
                os.waitpid(self.monitor_pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self._cleanup(remove_state=True)

    def _cleanup(self, remove_state: bool) -> None:
        try:
            self._release_network()
        except PyKvmError as e:
            self.warn(f"{e} (`pykvm container network prune` removes what is left)")
        if self.cgroup is not None:
            try:
                self.cgroup.destroy(self._mine)
            except ContainerError as e:
                self.warn(str(e))
        if remove_state:
            self.store.remove(self.id)

    def wait(self) -> RunResult:
        """Foreground: forward signals (and the TTY) until the monitor exits; clean up."""
        forward = _SignalForwarder(lambda: self.init_pid)
        try:
            self._attach_terminal()
            _, status = _waitpid_retry(self.monitor_pid)
        finally:
            forward.restore()
            self._close_console_sockets()
        info = self.store.exit_info(self.id) or {"exit_code": _exit_code(status)}
        code = info["exit_code"]
        result = RunResult(self.id, code, bool(info.get("oom_killed")))
        self._cleanup(remove_state=self.cfg.remove)
        return result

    def _attach_terminal(self) -> None:
        """-t: our terminal (raw) <-> the container's pty master, until the container ends."""
        if self._tty_host is None:
            return
        from pykvm.container.runtime import terminal
        try:
            terminal.attach(self._tty_host, self.monitor_pid, self.cfg.interactive)
        finally:
            self._close_console_sockets()

    # --- monitor (child of the launcher) ----------------------------------------
    def _monitor(self, pipe: _Pipe, stdio: dict) -> int:
        pipe.child_side()
        launcher_gone = []
        if self.mode == FOREGROUND:
            # Launcher killed -> kill the container, then clean up as the launcher would have.
            def on_launcher_gone(*_):
                launcher_gone.append(True)
                _kill_quietly(self.init_pid)
            signal.signal(LAUNCHER_GONE, on_launcher_gone)
            prctl(lib.PR_SET_PDEATHSIG, LAUNCHER_GONE)
            if os.getppid() == 1:                           # it died before prctl() took effect
                os._exit(EXIT_SETUP_FAILED)
        else:
            os.setsid()
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP):
            signal.signal(sig, signal.SIG_IGN)              # the launcher forwards these
        stdio = _install_stdio(stdio)                       # the launcher's own stdio stays out
        self._close_console_sockets(keep_host=self.mode == DETACHED, keep_inside=True)
        self._join_user_and_pid(pipe)
        pid = os.fork()
        if pid == 0:
            _child_main(lambda: self._init(pipe, stdio), pipe)
        self.init_pid = pid
        self.pid_namespace = ns.namespace_id(pid)
        pipe.send(pid=pid)
        os.close(pipe.events_w)
        os.close(pipe.ack_r)
        close_all(self._join_fds)
        _detach_stdio()
        self._close_console_sockets(keep_host=True)
        if self._tty_host is not None:
            self._log_terminal(pid)
        _, status = _waitpid_retry(pid)
        code = _exit_code(status)
        oom = self.cgroup is not None and self.cgroup.oom_kills() > 0
        os.write(self._exit_fd, json.dumps({"exit_code": code, "oom_killed": oom,
                                            "finished": time.time()}).encode())
        if self.mode == DETACHED or launcher_gone:
            self._cleanup(remove_state=self.cfg.remove)
        return code

    def _log_terminal(self, init_pid: int) -> None:
        """-d -t: the monitor holds the pty master and copies what the container writes to
        container.log (Docker keeps a detached terminal's output the same way)."""
        from pykvm.container.runtime import terminal
        received = terminal.receive_master(self._tty_host)
        self._close_console_sockets()
        if received is None:
            return
        log = self._open_log()
        try:
            terminal.relay(received[0], log, init_pid)
        finally:
            os.close(log)
            os.close(received[0])

    def _join_user_and_pid(self, pipe: _Pipe) -> None:
        """The user namespace first (it owns the rest), then the PID namespace for our child."""
        for kind in ("user", "pid"):
            if kind not in self.cfg.namespaces:
                continue
            path = self.cfg.namespaces[kind]
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

    # --- init (PID 1 in the container) -----------------------------------------
    def _init(self, pipe: _Pipe, stdio: dict) -> int:
        prctl(lib.PR_SET_PDEATHSIG, signal.SIGKILL)          # monitor gone -> container gone
        _close_other_fds({pipe.events_w, pipe.ack_r, self._exit_fd, *self._join_fds,
                          *self._console_fds()})
        prctl(lib.PR_SET_DUMPABLE, 0)                        # /proc/1/{exe,fd,mem} closed to the container
        os.umask(DEFAULT_UMASK)                              # not the caller's: /dev and mount targets
        signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS + (signal.SIGCHLD,))
        join(self._join_fds)                                 # our cgroup, before ...
        self._enter_namespaces(("network", "ipc", "uts", "mount", "cgroup"))   # ... it becomes the ns's "/"
        if self.cfg.new_keyring:
            new_session_keyring(self.id)
        if self.cfg.network == "bridge":                    # the launcher plugs in our veth
            pipe.send(network=1)
            pipe.wait_ack()
        self._close_console_sockets(keep_inside=True)
        os.close(self._exit_fd)                              # the monitor's, not the container's
        fifo = self._open_fifo()
        self._build_root(pipe)
        if self.cfg.tty:
            stdio = self._open_terminal()
        if self.cfg.readonly:
            fs.remount_root_readonly()
        _set_rlimits(self.cfg.rlimits)
        start_hooks = partial(run_hooks, self.cfg.hooks, ("startContainer",),
                              oci_state_json(self.state, "created", os.getpid()))
        if fifo is not None:
            pipe.send(ready=1)
            _wait_for_start(fifo, start_hooks)
        else:
            start_hooks()
        if not self.cfg.init:                                # the command itself is PID 1 (runc)
            return _exec_command(self.cfg, pipe, stdio)
        prctl(lib.PR_SET_NAME, _c_string(INIT_NAME))
        _set_command_line(INIT_NAME)
        _set_oom_score_adj(OOM_SCORE_INIT)                  # the OOM killer picks the command, not us
        child = fork_command(self.cfg)
        if child == 0:
            _child_main(lambda: _exec_command(self.cfg, pipe, stdio), pipe)
        _detach_stdio()                                      # init keeps no host fd (CVE-2024-21626)
        _close_other_fds(set())
        become_container_process(self.cfg)                   # ... nor any host privilege (tini's way)
        return _reap(child)

    def _enter_namespaces(self, kinds: tuple[str, ...]) -> None:
        """Join (setns) or create (unshare) these namespaces; set up lo and the hostname."""
        new = 0
        for kind in ns.ORDER:
            if kind not in kinds or kind not in self.cfg.namespaces:
                continue
            if self.cfg.namespaces[kind]:
                ns.setns(self.cfg.namespaces[kind], kind)
            else:
                new |= ns.CLONE_FLAGS[kind]
        ns.unshare(new)
        if new & ns.CLONE_FLAGS["network"]:
            ns.loopback_up()
        hostname = self.cfg.hostname_for(self.id)
        if hostname and "uts" in kinds:
            sethostname(hostname)

    def _open_fifo(self) -> int | None:
        if self.mode != CREATED:
            return None
        return os.open(os.path.join(self.dir, "exec.fifo"), os.O_PATH | os.O_CLOEXEC)

    def _build_root(self, pipe: _Pipe) -> None:
        """rootfs.py's recipe, steps 1-5 (step 6, read-only, comes after the terminal);
        before pivot_root, the hooks of the runtime's and then the container's namespaces."""
        cfg = self.cfg
        fs.make_private()
        if cfg.lower_dirs:
            upper, work, target = (os.path.join(self.dir, d) for d in ("upper", "work", "rootfs"))
            for d in (upper, work, target):
                os.makedirs(d, exist_ok=True)
            root = fs.mount_root(target, lower=cfg.lower_dirs, upper=upper, work=work)
        else:
            root = fs.mount_root(None, rootfs=cfg.rootfs)
        host_sys = "network" not in cfg.namespaces and "user" in cfg.namespaces
        fs.mount_all(root, cfg.mounts, host_sys=host_sys,
                     cgroupns="cgroup" in cfg.namespaces and not cfg.namespaces["cgroup"])
        _write_sysctls(root, cfg.sysctl)                     # through the container's /proc, before it is ro
        fs.mask_paths(root, cfg.masked_paths)
        fs.readonly_paths(root, cfg.readonly_paths)
        self._create_hooks(pipe)
        fs.pivot_into(root)
        _make_cwd(cfg.cwd)

    def _create_hooks(self, pipe: _Pipe) -> None:
        """prestart and createRuntime run in the launcher while we wait (runtime namespaces);
        createContainer runs here, in the container's namespaces, still on the host's root."""
        hooks = self.cfg.hooks
        if hooks.get("prestart") or hooks.get("createRuntime"):
            pipe.send(hooks=1)
            pipe.wait_ack(launcher_reports=True)
        run_hooks(hooks, ("createContainer",), oci_state_json(self.state, "creating", os.getpid()))

    def _open_terminal(self) -> dict:
        """runc's setupConsole, after pivot_root: a pty from the container's own devpts;
        the master goes out over the console socket, the slave becomes the command's stdio
        and /dev/console."""
        from pykvm.container.runtime import terminal
        try:
            slave = terminal.new_console(self._tty_inside, self.winsize, fs.mount_console)
        finally:
            self._close_console_sockets()
        return {"in": slave, "out": slave, "err": slave, "close": [slave]}


# --- the command (PID 2 in the container) ------------------------------------

def _exec_command(cfg: RunConfig, pipe: _Pipe, stdio: dict) -> int:
    """Become the user's command: stdio, session, cwd, privileges, then execve(2)."""
    for sig in range(1, signal.NSIG):
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for target, fd in enumerate((stdio["in"], stdio["out"], stdio["err"])):
        if fd != target:
            os.dup2(fd, target)
    _set_oom_score_adj(cfg.oom_score_adj or 0, required=cfg.oom_score_adj is not None)
    os.umask(cfg.umask)
    os.setsid()
    if cfg.tty:
        from pykvm.container.runtime import terminal
        fcntl.ioctl(0, lib.TIOCSCTTY, 0)                # tty_ioctl(4): our controlling terminal
        terminal.give_to_user(0, cfg.uid)
    try:
        os.chdir(cfg.cwd)
    except OSError as e:
        raise _ExecFailed(EXIT_SETUP_FAILED, f"cannot enter working directory {cfg.cwd}: {e.strerror}")
    env = dict(e.split("=", 1) if "=" in e else (e, "") for e in cfg.env)
    env.setdefault("HOME", _home_dir(cfg.uid))      # runc's rule: HOME when the config has none
    _drop_privileges(cfg)
    _close_other_fds({pipe.events_w})
    try:
        os.execvpe(cfg.args[0], cfg.args, env)
    except FileNotFoundError:
        raise _ExecFailed(EXIT_NOT_FOUND, f"{cfg.args[0]}: command not found in the container "
                                          f"(PATH={env.get('PATH', '')})") from None
    except PermissionError:
        raise _ExecFailed(EXIT_CANNOT_EXEC, f"{cfg.args[0]}: permission denied") from None
    except OSError as e:
        raise _ExecFailed(EXIT_CANNOT_EXEC, f"{cfg.args[0]}: cannot execute: {e.strerror}") from None


def _home_dir(uid: int) -> str:
    """The user's home from the container's /etc/passwd (field 6), else "/" (as runc)."""
    try:
        with open("/etc/passwd") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")       # name:x:uid:gid:gecos:home:shell
                if len(fields) >= 6 and fields[2] == str(uid):
                    return fields[5] or "/"
    except OSError:
        pass
    return "/"


def _drop_privileges(cfg: RunConfig) -> None:
    """no_new_privs, bounding set, user and groups, then the capability sets (capabilities.py)."""
    c = cfg.capabilities
    if cfg.no_new_privileges:
        prctl(lib.PR_SET_NO_NEW_PRIVS, 1)
    caps.drop_bounding(caps.cap_numbers(c.get("bounding")))
    if cfg.uid != 0:
        prctl(lib.PR_SET_KEEPCAPS, 1)                 # setuid() away from 0 keeps "permitted"
    if "user" not in cfg.namespaces or _may_setgroups():
        os.setgroups(cfg.additional_gids)
    os.setresgid(cfg.gid, cfg.gid, cfg.gid)
    os.setresuid(cfg.uid, cfg.uid, cfg.uid)
    caps.set_caps(caps.cap_numbers(c.get("effective")), caps.cap_numbers(c.get("permitted")),
                  caps.cap_numbers(c.get("inheritable")), caps.cap_numbers(c.get("ambient")))


def owned_by(pid_namespace, named: bool):
    """Which processes in a container's cgroup are the container's: those in its PID
    namespace.  When that is unknown (rootless: init's /proc/PID/ns is closed to us),
    everything in a cgroup pykvm made for this container alone, nothing in one a
    config named (cgroupsPath), where others may be."""
    if not pid_namespace:
        return lambda pid: not named
    return lambda pid: ns.in_pid_namespace(pid, tuple(pid_namespace))


def become_container_process(cfg: RunConfig) -> None:
    """pykvm-init, once the command runs, keeps no more than the command has: its user,
    groups, capability sets and no_new_privs (Docker's --init, tini, is the container's
    process too).  Signalling the command needs no privilege then: it is the same user."""
    _drop_privileges(replace(cfg, capabilities=caps.after_execve(cfg.capabilities, cfg.uid)))
    prctl(lib.PR_SET_DUMPABLE, 0)                     # a uid change resets it to suid_dumpable


def fork_command(cfg: RunConfig) -> int:
    """fork(2) the command, with a clear word when the pids limit leaves no room for it."""
    try:
        return os.fork()
    except BlockingIOError:
        raise ContainerError(f"cannot start the command: fork() failed with EAGAIN (pids limit "
                             f"{cfg.limits.pids}, or RLIMIT_NPROC, reached)") from None


def new_session_keyring(cid: str) -> None:
    """A session keyring of the container's own (runc's "_ses.<id>"), so that no key of the
    caller's session is in reach; made searchable for its user so `exec` can join it.
    keyrings(7), session-keyring(7).  Without keyrings (ENOSYS) or where a seccomp filter
    forbids keyctl (EPERM) there is nothing to leak, as runc reasons."""
    try:
        key = join_session_keyring(f"_ses.{cid}")
        set_key_permissions(key, key_permissions(key) | KEY_USR_SEARCH)
    except SyscallError as e:
        if e.errno not in (errno.ENOSYS, errno.EPERM):
            raise


def _write_sysctls(root: str, sysctl: dict[str, str]) -> None:
    """linux.sysctl: write each (validated, namespaced) parameter to /proc/sys/a/b/c of the
    container's own /proc; sysctl(8) spells it a.b.c."""
    for key, value in sysctl.items():
        inside = "/proc/sys/" + key.replace(".", "/")
        try:
            with open(fs.secure_join(root, inside), "w") as f:
                f.write(value)
        except OSError as e:
            raise ContainerError(f"linux.sysctl {key}={value!r}: cannot write {inside}: {e.strerror}") from None


def _set_command_line(name: str) -> None:
    """Make /proc/self/cmdline say `name`, as setproctitle(3) does: inside the container,
    /proc/1/cmdline would otherwise show the launcher's own command line (the host's
    Python, its paths, the arguments of `pykvm container run`).

    The kernel reads a process's arguments from its own memory, between arg_start and
    arg_end (proc(5) /proc/PID/stat fields 48 and 49): the strings execve(2) put on the
    stack, which CPython copied at startup and no longer uses.  We overwrite them with
    `name` and a NUL, and fill the rest with a non-NUL byte: a last byte that is not NUL
    tells the kernel the arguments were rewritten, and it then reads only up to the
    first NUL (fs/proc/base.c, get_mm_cmdline).  No privilege needed, unlike prctl's
    PR_SET_MM_ARG_START, which wants CAP_SYS_RESOURCE on the host.
    """
    from pykvm.container.runtime.syscalls import ffi
    fields = stat_fields()
    arg_start, arg_end = int(stat_field(fields, 48)), int(stat_field(fields, 49))
    size = arg_end - arg_start
    if size < 2:
        return
    text = name.encode()[:size - 1] + b"\0"
    ffi.memmove(ffi.cast("char *", arg_start), text + b"\x01" * (size - len(text)), size)


def _c_string(text: str) -> int:
    """A pointer to a NUL-terminated copy of text, as an integer (prctl's argument type)."""
    from pykvm.container.runtime.syscalls import ffi
    buf = ffi.new("char[]", text.encode())
    _c_string.keep = buf                              # keep it alive until the call returns
    return int(ffi.cast("unsigned long", buf))


def _may_setgroups() -> bool:
    try:
        with open("/proc/self/setgroups") as f:
            return f.read().strip() == "allow"
    except OSError:
        return False


class _ExecFailed(Exception):
    """The command could not be started: an exit code and a message for the user."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


# --- helpers shared by the children -------------------------------------------

def _child_main(body, pipe: _Pipe | None = None) -> None:
    """Run a forked child's body and _exit with its status: never return into the parent's code."""
    code = EXIT_SETUP_FAILED
    try:
        code = body()
    except _ExecFailed as e:
        code = e.code
        _report(pipe, str(e), code)
    except PyKvmError as e:
        _report(pipe, str(e), code)
    except BrokenPipeError:
        pass            # the launcher stopped reading: it has reported the first error already
    except BaseException as e:                                  # noqa: BLE001 - must not escape a child
        _report(pipe, f"container setup failed: {type(e).__name__}: {e}", code)
    finally:
        os._exit(code if isinstance(code, int) else EXIT_SETUP_FAILED)


def _report(pipe: _Pipe | None, message: str, code: int) -> None:
    try:
        if pipe is not None:
            pipe.send(error=message, code=code)
        else:
            os.write(2, f"pykvm: error: {message}\n".encode())
    except OSError:
        os.write(2, f"pykvm: error: {message}\n".encode())


def _install_stdio(stdio: dict) -> dict:
    """Make the container's stdio our 0, 1, 2 (so no child inherits the launcher's)."""
    for target, fd in enumerate((stdio["in"], stdio["out"], stdio["err"])):
        if fd != target:
            os.dup2(fd, target)
    for fd in stdio["close"]:
        if fd > 2:
            os.close(fd)
    return {"in": 0, "out": 1, "err": 2, "close": []}


def _close_other_fds(keep: set[int]) -> None:
    """Close every fd above 2 except `keep`: a host fd left open in the container is a way
    out (CVE-2024-21626, runc's leaked cgroup directory fd)."""
    low = 3
    for fd in sorted(fd for fd in keep if fd >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, MAX_FD)


def _detach_stdio() -> None:
    """0, 1, 2 to /dev/null.  The monitor keeps no terminal or pipe open (the command's output
    ends with the command); nor does init once the command has its copies."""
    try:
        null = os.open(os.devnull, os.O_RDWR)
    except OSError:                                      # a container without /dev/null
        os.closerange(0, 3)
        return
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def _kill_quietly(pid: int) -> None:
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _exit_code(status: int) -> int:
    """A wait status as a shell shows it: the exit code, or 128 + the signal number."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _waitpid_retry(pid: int) -> tuple[int, int]:
    while True:
        try:
            return os.waitpid(pid, 0)
        except InterruptedError:
            continue


def _reap(child: int, kill_on: tuple[int, ...] = ()) -> int:
    """PID 1's loop: forward signals to the command, reap every zombie, exit with the command.

    A signal in `kill_on` (blocked by the caller, like the others) SIGKILLs the command.
    """
    wanted = set(FORWARDED_SIGNALS) | {signal.SIGCHLD} | set(kill_on)
    code = None
    while True:
        info = signal.sigwaitinfo(wanted)
        if info.si_signo in kill_on:
            _kill_quietly(child)
            continue
        if info.si_signo != signal.SIGCHLD:
            try:
                os.kill(child, info.si_signo)
            except ProcessLookupError:
                pass
            continue
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return code if code is not None else 0
            if pid == 0:
                break
            if pid == child:
                code = _exit_code(status)
        if code is not None:
            return code


def _make_cwd(cwd: str) -> None:
    """Create a missing working directory (image WORKDIRs, as Docker and runc do)."""
    try:
        os.makedirs(cwd, mode=0o755, exist_ok=True)
    except OSError:
        pass                              # chdir() will say what is wrong, as the command's error


def _set_oom_score_adj(value: int, required: bool = False) -> None:
    """proc(5) /proc/self/oom_score_adj; lowering it needs CAP_SYS_RESOURCE (not rootless).
    `required` (process.oomScoreAdj): failing is an error, not something to skip quietly."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(f"{value}\n")
    except OSError as e:
        if required:
            raise ContainerError(f"process.oomScoreAdj {value}: {e.strerror}") from None


def _set_rlimits(rlimits) -> None:
    for name, soft, hard in rlimits:
        if not hasattr(resource, name):
            raise ConfigError(f"unknown rlimit {name}")
        # Python spells the C RLIM_INFINITY (2**64 - 1) as -1
        soft, hard = (resource.RLIM_INFINITY if v == RLIM_INFINITY else v for v in (soft, hard))
        try:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        except (ValueError, OSError) as e:
            raise ContainerError(f"rlimit {name} ({soft}, {hard}): {e}") from None


def _wait_for_start(fifo_path_fd: int, then) -> None:
    """`oci start` opens exec.fifo for reading; our open for writing blocks until then (runc's
    trick).  `then` (the startContainer hooks) runs before our byte tells `start` to go on,
    so that its poststart hooks come after them."""
    fd = os.open(f"/proc/self/fd/{fifo_path_fd}", os.O_WRONLY | os.O_CLOEXEC)
    then()
    os.write(fd, b"0")
    os.close(fd)
    os.close(fifo_path_fd)


class _SignalForwarder:
    """While the launcher waits: SIGINT/SIGTERM/SIGHUP go to the container's init instead."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)

    def __init__(self, target):
        self.target = target
        self.saved = {}
        for sig in self.SIGNALS:
            try:
                self.saved[sig] = signal.signal(sig, self._forward)
            except ValueError:                         # not the main thread: leave signals alone
                break

    def _forward(self, signo, _frame) -> None:
        pid = self.target()
        if pid:
            try:
                os.kill(pid, signo)
            except ProcessLookupError:
                pass

    def restore(self) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


# --- entry points -------------------------------------------------------------------

def launch(config: RunConfig, mode: str = FOREGROUND, store: StateStore | None = None,
           warn=None, console: socket.socket | None = None) -> Container:
    """Start a container in one of FOREGROUND, DETACHED or CREATED mode; returns it running.

    `console`: for CREATED with a terminal, the connected socket its pty master is sent to.
    """
    return Container(config, mode, store, warn, console).start()


def run_container(config: RunConfig, store: StateStore | None = None) -> int:
    """Run a container to completion in the foreground; return its exit status.

    127: command not found in the container; 137: killed by SIGKILL (for
    instance by the OOM killer); 125: the runtime itself failed.
    """
    try:
        container = launch(config, FOREGROUND, store)
    except ContainerError as e:
        if getattr(e, "exit_code", 1) in (EXIT_NOT_FOUND, EXIT_CANNOT_EXEC):
            print(f"pykvm: error: {e}", file=sys.stderr)
            return e.exit_code
        raise
    return container.wait().exit_code


# --- the lifecycle: OCI (runtime.md "Operations") and Docker's ps/stop/kill/rm ----------

def oci_create(cid: str, bundle: str, store: StateStore | None = None,
               console_socket: str | None = None, new_keyring: bool = True) -> Container:
    """`create`: everything set up, the process waiting on exec.fifo; status "created".

    With process.terminal, the pty master is sent (SCM_RIGHTS) to the unix socket at
    `console_socket`, as runc's --console-socket does; whoever listens there owns the terminal.
    """
    from pykvm.container.runtime.bundle import load_bundle
    cfg = replace(load_bundle(bundle), id=cid, name=cid, new_keyring=new_keyring)
    console = _connect_console(console_socket) if console_socket else None
    try:
        return launch(cfg, CREATED, store, console=console)
    finally:
        if console is not None:
            console.close()


def _connect_console(path: str) -> socket.socket:
    import socket
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        sock.close()
        raise ContainerError(f"cannot connect to the console socket {path}: {e.strerror}") from None
    return sock


def oci_run(cid: str, bundle: str, store: StateStore | None = None, new_keyring: bool = True) -> RunResult:
    """`runc run`'s equivalent: create + start + wait, in the foreground, then delete."""
    from pykvm.container.runtime.bundle import load_bundle
    cfg = replace(load_bundle(bundle), id=cid, name=cid, remove=True, interactive=True,
                  new_keyring=new_keyring)
    container = launch(cfg, FOREGROUND, store)
    _warn_if_fails(cfg.hooks, "poststart", oci_state_json(container.state, "running", container.init_pid))
    result = container.wait()
    _warn_if_fails(cfg.hooks, "poststop", oci_state_json(container.state, "stopped", None))
    return result


def _warn_if_fails(hooks: dict, kind: str, state: dict) -> None:
    """poststart and poststop: a failure is logged, and the lifecycle goes on (config.md)."""
    try:
        run_hooks(hooks, (kind,), state)
    except ContainerError as e:
        print(f"pykvm: warning: {e}", file=sys.stderr)


def oci_start(ref: str, store: StateStore | None = None, timeout: float = 10.0) -> None:
    """`start`: open exec.fifo for reading; the waiting init writes one byte and execs."""
    store = store or StateStore()
    state = store.resolve(ref)
    fifo = store.dir(state.id) / "exec.fifo"
    if store.status(state) != "created":
        raise ContainerError(f"container {state.id} is {store.status(state)}, not created: cannot start it")
    hooks = hooks_from_json(state.hooks)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        # startContainer hooks run before init's byte comes: they have timeouts of their own
        ready, _, _ = select.select([fd], [], [], None if hooks.get("startContainer") else timeout)
        if not ready:
            raise ContainerError(f"container {state.id} did not start within {timeout} s")
        if os.read(fd, 1) != b"0":
            raise ContainerError(f"container {state.id} failed to start (a startContainer hook or "
                                 f"its set-up failed: its stderr says which)")
    finally:
        os.close(fd)
        fifo.unlink(missing_ok=True)
    _warn_if_fails(hooks, "poststart", oci_state_json(state, "running", state.pid))


def kill_container(ref: str, sig: int = signal.SIGTERM, store: StateStore | None = None) -> ContainerState:
    """`kill`: send a signal to the container's init (which forwards it to the command)."""
    store = store or StateStore()
    state = store.resolve(ref)
    if store.status(state) == "stopped":
        raise ContainerError(f"container {state.id} is not running")
    try:
        os.kill(state.pid, sig)
    except ProcessLookupError:
        pass
    return state


def wait_stopped(state: ContainerState, store: StateStore, timeout: float) -> bool:
    """Poll until the container has stopped (True) or the timeout passed (False)."""
    deadline = time.monotonic() + timeout
    while store.status(state) != "stopped":
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def stop_container(ref: str, timeout: float = 10.0, store: StateStore | None = None) -> ContainerState:
    """`stop`: SIGTERM, then SIGKILL if it is still running after `timeout` seconds (Docker's rule)."""
    store = store or StateStore()
    state = store.resolve(ref)
    if store.status(state) == "stopped":
        return state
    kill_container(state.id, signal.SIGTERM, store)
    if not wait_stopped(state, store, timeout):
        kill_container(state.id, signal.SIGKILL, store)
        wait_stopped(state, store, 5.0)
    return state


def remove_container(ref: str, force: bool = False, store: StateStore | None = None) -> ContainerState:
    """`rm` / `oci delete`: a stopped container's cgroup and state go; --force kills it first."""
    store = store or StateStore()
    state = store.resolve(ref)
    if store.status(state) != "stopped":
        if not force:
            raise ContainerError(f"container {state.id} is {store.status(state)}: stop it first or use --force")
        kill_container(state.id, signal.SIGKILL, store)
        if not wait_stopped(state, store, 5.0):
            raise ContainerError(f"container {state.id} did not die after SIGKILL")
    if state.cgroup:
        Cgroup.from_dirs(state.cgroup.get("version", "?"), state.cgroup.get("dirs", [])).destroy(
            owned_by(state.pid_namespace, state.cgroup.get("named", True)))
    from pykvm.container.runtime.network import release
    release(state.id)                      # a crashed monitor's address and ports
    store.remove(state.id)
    _warn_if_fails(hooks_from_json(state.hooks), "poststop", oci_state_json(state, "stopped", None))
    return state
