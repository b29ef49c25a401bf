"""The container runtime's launcher: a RunConfig (or an OCI bundle) -> a running container.

Four processes, each with one job and one module (the arrows are fork(2)):

    launcher  (the pykvm command or your Python program; host namespaces): this module
      |  creates the state dir and the cgroup, writes uid/gid maps, records
      |  init's PID, forwards Ctrl-C, reports the exit status
      v
    monitor   (outside the container, except its user+PID namespaces): monitor.py
      |  unshare(CLONE_NEWUSER) if asked, unshare(CLONE_NEWPID): its *next*
      |  child is PID 1 of a new PID namespace; then waits for that child,
      |  records the exit status (exit.json), removes the cgroup
      v
    init      (PID 1 inside; Python): init.py
      |  join the cgroup, unshare mount/uts/ipc/net/cgroup namespaces, bring `lo`
      |  up, set the hostname, join a session keyring of its own, build the root
      |  filesystem and pivot_root into it, with -t make the pty; then it execs the
      |  command, which is PID 1 (runc, docker run); or with --init it forks the command,
      |  drops to the command's credentials, then forwards every signal and reaps
      v
    command   (PID 1 inside; PID 2 under --init): command.py
         oom_score_adj, umask, setsid, chdir, no_new_privs, capabilities, uid/gid,
         only fds 0-2 (and --preserve-fds'), the seccomp filter, execve(2)

What they share (the event pipe, forking a child, stdio and fds) is in process.py.
Nothing of this starts before the whole config is checked (validate.py).

A pipe from the children to the launcher carries one JSON line per event
({"user": 1} "please write my id maps", {"pid": N}, {"hooks": 1} "my mounts
are made: run the prestart and createRuntime hooks", {"network": 1} "plug in my
veth", {"ready": 1}, {"error": msg, "code": N}); it is close-on-exec, so when the
command's execve succeeds the launcher reads end-of-file.  A second pipe carries
the launcher's one-byte acknowledgements back.  With -t a unix socketpair carries
the pty master (SCM_RIGHTS) from init out to the launcher, which connects it to
your terminal; with -d -t to the monitor, which copies it to container.log; for
`oci create` to the --console-socket the caller listens on.

Under an engine (pykvm-runc, called by conmon or containerd-shim) the monitor leaves as
soon as init is forked: init's parent becomes the caller's subreaper (prctl(2)
PR_SET_CHILD_SUBREAPER), which waits for the PID in --pid-file and reads its exit status
itself, as it does with runc's.  `state` then tells a stopped container by that PID
(gone, or a zombie) and `delete` removes the cgroup.

Library users call `run_container(RunConfig) -> int`, or `launch(RunConfig, mode)`
and then `Container.wait()`.  An image becomes a RunConfig on the image side
(pykvm.container.image.runconfig), which the runtime never imports; the OCI
operations and Docker's stop/kill/rm are in lifecycle.py.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, replace

from pykvm.container.runtime import namespaces as ns
from pykvm.container.runtime.cgroups import Cgroup, close_all, open_cgroup
from pykvm.container.runtime.config import RunConfig, process_defaults
from pykvm.container.runtime.hooks import hooks_to_json, run_hooks
from pykvm.container.runtime.monitor import run_monitor
from pykvm.container.runtime.process import (CREATED, DETACHED, EXIT_CANNOT_EXEC, EXIT_NOT_FOUND,
                                             EXIT_SETUP_FAILED, FOREGROUND, EventPipe,
                                             SignalForwarder, child_main, exit_code, waitpid_retry)
from pykvm.container.runtime.state import (ContainerState, StateStore, new_id, oci_state_json, owned_by,
                                           process_start_time)
from pykvm.errors import ConfigError, ContainerError, PyKvmError

TYPE_CHECKING = False              # typing.TYPE_CHECKING, without importing typing (3 ms)
if TYPE_CHECKING:
    import socket  # annotations only: the -t code imports it (and terminal.py) when used

__all__ = ["RunResult", "Container", "launch", "run_container",
           "FOREGROUND", "DETACHED", "CREATED"]


@dataclass
class RunResult:
    """How a container ended."""

    id: str
    exit_code: int
    oom_killed: bool = False


class Container:
    """One container being launched, and then waited for.

    The monitor and init are forked from the launcher and run on their own copy of it:
    run_monitor(container, ...) and run_init(container, ...) read its config, its
    state and the fds the launcher opened for them (exit_fd, join_fds, the console
    sockets), and call back into the few methods below that every process needs
    (close_console_sockets, open_log, cleanup).
    """

    def __init__(self, config: RunConfig, mode: str = FOREGROUND, store: StateStore | None = None,
                 warn=None, console: socket.socket | None = None, hand_over: bool = False):
        self.cfg = config.finalized()
        self.mode = mode
        # An engine's runtime program (pykvm-runc): init is handed to the caller's subreaper
        # (conmon, containerd-shim), which waits for it; the monitor leaves once init is forked.
        self.hand_over = hand_over
        self.store = store or StateStore()
        self.warn = warn or (lambda msg: print(f"pykvm: warning: {msg}", file=sys.stderr))
        if self.cfg.seccomp is not None and self.cfg.seccomp_filter is None:     # compiled once, here
            from pykvm.container.runtime.seccomp_cache import cached_compile
            self.cfg = replace(self.cfg, seccomp_filter=cached_compile(
                self.cfg.seccomp, self.store.cache_dir("seccomp"), self.warn))
        self.id = self.cfg.id or new_id()
        self.state = ContainerState(
            id=self.id, name=self.cfg.name or self.id, bundle=self.cfg.bundle,
            rootfs=self.cfg.rootfs or "", command=list(self.cfg.args), created=time.time(),
            auto_remove=self.cfg.remove, detached=mode != FOREGROUND,
            annotations=self.cfg.annotations, image=self.cfg.image, layers=list(self.cfg.lower_dirs),
            process=process_defaults(self.cfg), hooks=hooks_to_json(self.cfg.hooks),
            network=self.cfg.network,
            launcher_pid=os.getpid(), launcher_start=process_start_time(os.getpid()))
        self.dir = None
        self.cgroup: Cgroup | None = None
        self.monitor_pid = 0
        self.init_pid = 0
        self.exit_fd = -1
        # -t: init sends the pty master over tty_inside to tty_host (terminal.py).  `oci
        # create` has no host end of ours: `console` is the connected --console-socket.
        self.tty_host, self.tty_inside = None, console
        self.winsize = None
        self.join_fds: list[int] = []         # init joins its cgroup through these (cgroups.join)
        self.pid_namespace: tuple[int, int] | None = None   # init's: whose processes are ours
        self.lease = None                      # --network bridge: network.Lease (address, ports)

    # --- start: set up, hand over to the monitor, follow the children's set-up -----
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
        """The launcher's part, then the hand-over: what the monitor needs is made here (the
        cgroup, exit.json, stdio, the console socket, the event pipe), the monitor forked,
        and the launcher's copies closed before it serves the children's requests."""
        self._make_cgroup()
        if self.cfg.etc_files:
            self._add_etc_files()
        if self.cfg.network == "bridge":
            self._reserve_network()
        if self.mode == CREATED:
            os.mkfifo(os.path.join(self.dir, "exec.fifo"), 0o600)
        self.exit_fd = os.open(os.path.join(self.dir, "exit.json"),
                               os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        stdio = self._stdio()
        self._make_console_socket()
        pipe = EventPipe()
        pid = os.fork()
        if pid == 0:                              # monitor.py -> init.py -> command.py
            child_main(lambda: run_monitor(self, pipe, stdio))
        self.monitor_pid = pid
        pipe.launcher_side()
        os.close(self.exit_fd)
        close_all(self.join_fds)
        self.join_fds = []
        self._close_stdio(stdio)
        self.close_console_sockets(keep_host=self.mode == FOREGROUND)
        self._follow_setup(pipe)
        if self.hand_over:
            waitpid_retry(self.monitor_pid)       # it left once init was forked

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
            self.join_fds = self.cgroup.join_files()
        except OSError as e:
            self._cgroup_failed(ContainerError(f"cannot set up {self.cgroup.describe()}: {e.strerror}"))
        except ContainerError as e:
            self._cgroup_failed(e)

    def _cgroup_failed(self, error: ContainerError) -> None:
        self.cgroup = self._without_cgroup(error)
        self.state.cgroup = {}
        self.store.save(self.state)

    def _check_shared_cgroup(self) -> None:
        """A cgroupsPath that already holds processes.  Shared, with runc 1.1's warning, when
        every one of them is a pykvm container's that named the same cgroupsPath and the new
        container has a PID namespace of its own to tell its processes from theirs.  Refused
        otherwise, and nothing of the cgroup is touched then, not even on the way out: its
        limits and device rules are someone else's (runc would rewrite them)."""
        others = self.cgroup.pids()
        if not others:
            return
        foreign = [pid for pid in others if not self._in_sharing_container(pid)]
        if foreign:
            where, self.cgroup = self.cgroup.describe(), None
            raise ContainerError(f"{where} already holds {len(foreign)} process(es) that are no pykvm "
                                 f"container's (PID {foreign[0]}): pykvm neither limits nor joins a cgroup "
                                 f"it did not make; give the container a cgroupsPath of its own")
        if "pid" not in self.cfg.namespaces or self.cfg.namespaces["pid"]:
            where, self.cgroup = self.cgroup.describe(), None
            raise ContainerError(f"{where} already holds {len(others)} process(es) and the "
                                 f"container has no PID namespace of its own to tell its processes "
                                 f"from theirs: give it its own cgroupsPath")
        self.warn(f"{self.cgroup.describe()} is not empty: {len(others)} process(es) found; the "
                  f"container shares it (and its limits) with them")

    def _in_sharing_container(self, pid: int) -> bool:
        """Is `pid` a process of a pykvm container (in this state store) in the same cgroup?"""
        dirs = set(self.state.cgroup["dirs"])
        return any(owned_by(other.pid_namespace, True)(pid) for other in self.store.list()
                   if other.id != self.id and other.cgroup.get("named")
                   and dirs & set(other.cgroup.get("dirs", [])))

    def _mine(self, pid: int) -> bool:
        return owned_by(self.pid_namespace, self.cfg.cgroups_path is not None)(pid)

    def _without_cgroup(self, error: Exception) -> None:
        """Root must have a cgroup; rootless goes on without one, warning if limits were asked for.
        Rootless is also root inside a user namespace (as rootless Podman calls the runtime),
        as runc's rootless cgroup manager decides."""
        if not self.cfg.rootless and not ns.in_user_namespace():
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
            log = self.open_log()
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

    def open_log(self) -> int:
        """container.log: a detached container's output (`pykvm container logs`)."""
        return os.open(os.path.join(self.dir, "container.log"),
                       os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)

    def _make_console_socket(self) -> None:
        """-t: the socket the pty master comes out by, and the size to give the pty."""
        if not self.cfg.tty:
            if self.tty_inside is not None:
                raise ConfigError("a console socket is only used with a terminal "
                                  "(process.terminal: true in config.json)")
            return
        from pykvm.container.runtime import terminal     # only with -t: it and socket cost ~4 ms to import
        self.winsize = self.cfg.console_size or terminal.get_winsize(terminal.our_terminal())
        if self.mode == CREATED:
            if self.tty_inside is None:
                raise ConfigError("process.terminal is true: `oci create` needs --console-socket "
                                  "PATH, a unix socket to send the terminal's master to (as runc)")
            return
        import socket
        self.tty_host, self.tty_inside = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def console_fds(self) -> list[int]:
        return [sock.fileno() for sock in (self.tty_host, self.tty_inside) if sock is not None]

    def close_console_sockets(self, keep_host: bool = False, keep_inside: bool = False) -> None:
        """Each process closes the ends it has no use for (so EOF means "no master is coming")."""
        if self.tty_host is not None and not keep_host:
            self.tty_host.close()
            self.tty_host = None
        if self.tty_inside is not None and not keep_inside:
            self.tty_inside.close()
            self.tty_inside = None

    def _follow_setup(self, pipe: EventPipe) -> None:
        """Serve the children's requests until the command is exec'd (EOF), or init is
        ready and its PID known.

        The monitor and init write to the pipe independently: on a busy machine the monitor
        may get the CPU back only after init has asked for its hooks or its veth, or made its
        whole root and said {"ready"}.  So those wait for the monitor's {"pid"}: stopping at
        {"ready"} without it would leave init's PID unknown (0 in state.json and in an
        engine's --pid-file), and `start` would call the waiting container stopped."""
        error = None
        hooks_asked = network_asked = ready = False
        try:
            while not (ready and self.init_pid) and (event := pipe.receive()) is not None:
                if "user" in event:
                    ns.write_id_maps(self.monitor_pid, self.cfg.uid_mappings, self.cfg.gid_mappings)
                    pipe.ack()
                elif "pid" in event:
                    self._adopt_init(event["pid"])
                elif "hooks" in event:                   # init's mounts are made: runtime-side hooks
                    hooks_asked = True
                elif "network" in event:
                    network_asked = True
                elif "ready" in event:
                    ready = True
                elif "error" in event:
                    error = event
                    break
                if hooks_asked and self.init_pid:
                    hooks_asked = False
                    run_hooks(self.cfg.hooks, ("prestart", "createRuntime"),
                              oci_state_json(self.state, "creating", self.init_pid))
                    pipe.ack()
                if network_asked and self.init_pid:
                    network_asked = False
                    self._connect_network()
                    pipe.ack()
        finally:
            os.close(pipe.events_r)
            os.close(pipe.ack_w)
        if error:
            self._fail(error)

    def _adopt_init(self, pid: int) -> None:
        """Record init's PID (init moves itself into the cgroup: see init.run_init)."""
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
            self.cleanup(remove_state=True)
        exc = ContainerError(error["error"])
        exc.exit_code = error.get("code", EXIT_SETUP_FAILED)
        raise exc

    def _abort(self) -> None:
        """Undo a half-made container (launcher-side failure)."""
        close_all(self.join_fds)
        self.join_fds = []
        if self.monitor_pid:
            try:
                os.kill(self.monitor_pid, signal.SIGKILL)
                os.waitpid(self.monitor_pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self.cleanup(remove_state=True)

    def cleanup(self, remove_state: bool) -> None:
        """Give back the network, destroy the cgroup, remove the state if asked: the
        launcher's last step, or the monitor's when no launcher waits (-d, or it died)."""
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
        forward = SignalForwarder(lambda: self.init_pid)
        try:
            self._attach_terminal()
            _, status = waitpid_retry(self.monitor_pid)
        finally:
            forward.restore()
            self.close_console_sockets()
        info = self.store.exit_info(self.id) or {"exit_code": exit_code(status)}
        code = info["exit_code"]
        result = RunResult(self.id, code, bool(info.get("oom_killed")))
        self.cleanup(remove_state=self.cfg.remove)
        return result

    def _attach_terminal(self) -> None:
        """-t: our terminal (raw) <-> the container's pty master, until the container ends."""
        if self.tty_host is None:
            return
        from pykvm.container.runtime import terminal
        try:
            terminal.attach(self.tty_host, self.monitor_pid, self.cfg.interactive)
        finally:
            self.close_console_sockets()


# --- entry points -------------------------------------------------------------------

def launch(config: RunConfig, mode: str = FOREGROUND, store: StateStore | None = None,
           warn=None, console: socket.socket | None = None, hand_over: bool = False) -> Container:
    """Start a container in one of FOREGROUND, DETACHED or CREATED mode; returns it running.

    `console`: for CREATED with a terminal, the connected socket its pty master is sent to.
    `hand_over`: no monitor stays; init's parent becomes the caller's nearest subreaper.
    """
    return Container(config, mode, store, warn, console, hand_over).start()


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

