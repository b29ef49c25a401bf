"""init: PID 1 of the container's PID namespace, forked by the monitor (monitor.py).

    init      (PID 1 inside; Python)
      |  join the cgroup (cgroups.py: Cgroup.join_files says why init moves itself),
      |  unshare mount/uts/ipc/net/cgroup namespaces, bring `lo` up, set the
      |  hostname, join a session keyring of its own, build the root filesystem
      |  (with linux.sysctl) and pivot_root into it (rootfs.py), with -t make the
      |  pty from the container's own devpts (terminal.py), then either
      |    - execve the command (command.py): it *is* PID 1, as with runc and
      |      `docker run` (RunConfig.init false, the default), or
      |    - with --init (RunConfig.init, Docker's --init): fork the command, drop to its
      |      credentials, forward every signal to it and reap every zombie
      v
    command   (PID 1 inside, or PID 2 under pykvm-init)

PID 1 is special (pid_namespaces(7)): orphans are re-parented to it, so it must wait()
for them, and the kernel drops every signal it has no handler for that comes from inside
the namespace (even SIGKILL).  A command written to be PID 1 (an init system, tini,
catatonit) wants to be exactly that; for one that is not, --init puts pykvm-init in front.
exec.py's joiner plays init's part for an `exec`'d command: it uses new_session_keyring
and reap from here.
"""
from __future__ import annotations

import errno
import os
import signal
from functools import partial

from pykvm.container.runtime import namespaces as ns
from pykvm.container.runtime import rootfs as fs
from pykvm.container.runtime.cgroups import join
from pykvm.container.runtime.command import (become_container_process, exec_command, fork_command,
                                             set_oom_score_adj, set_rlimits)
from pykvm.container.runtime.config import DEFAULT_UMASK
from pykvm.container.runtime.hooks import run_hooks
from pykvm.container.runtime.process import (CREATED, EventPipe, child_main, close_other_fds,
                                             detach_stdio, exit_code, kill_quietly)
from pykvm.container.runtime.state import oci_state_json, stat_field, stat_fields
from pykvm.container.runtime.syscalls import (join_session_keyring, key_permissions, lib, prctl,
                                              set_key_permissions, setdomainname, sethostname)
from pykvm.errors import ContainerError, SyscallError

TYPE_CHECKING = False              # typing.TYPE_CHECKING, without importing typing (3 ms)
if TYPE_CHECKING:
    from pykvm.container.runtime.launcher import Container

__all__ = ["run_init", "enter_namespaces", "build_root", "new_session_keyring", "reap",
           "FORWARDED_SIGNALS", "INIT_NAME"]

# What pykvm-init passes on to the command: every signal a process can catch (SIGCHLD
# is init's own), real-time ones too, as tini and Docker's --init do.
FORWARDED_SIGNALS = tuple(sorted(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD}))
INIT_NAME = "pykvm-init"          # init's name in ps, /proc/1/comm and /proc/1/cmdline inside
OOM_SCORE_INIT = -1000            # proc(5): never pick init; the command starts again from 0
KEY_USR_SEARCH = 0x00080000       # keyctl(2) KEYCTL_SETPERM: the owner may search (and join) it


def run_init(container: Container, pipe: EventPipe, stdio: dict) -> int:
    """init's whole life, in order; returns the command's exit status (init's own)."""
    cfg = container.cfg
    if not container.hand_over:                          # an engine's subreaper adopts us instead
        prctl(lib.PR_SET_PDEATHSIG, signal.SIGKILL)      # monitor gone -> container gone
    close_other_fds({pipe.events_w, pipe.ack_r, container.exit_fd, *container.join_fds,
                     *container.console_fds()}, preserved=cfg.preserve_fds)
    prctl(lib.PR_SET_DUMPABLE, 0)                        # /proc/1/{exe,fd,mem} closed to the container
    os.umask(DEFAULT_UMASK)                              # not the caller's: /dev and mount targets
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS + (signal.SIGCHLD,))
    join(container.join_fds)                             # our cgroup, before ...
    enter_namespaces(container, ("network", "ipc", "uts", "mount", "cgroup"))   # ... it becomes the ns's "/"
    if cfg.new_keyring:
        new_session_keyring(container.id)
    if cfg.network == "bridge":                          # the launcher plugs in our veth
        pipe.send(network=1)
        pipe.wait_ack()
    container.close_console_sockets(keep_inside=True)
    os.close(container.exit_fd)                          # the monitor's, not the container's
    fifo = _open_fifo(container)
    build_root(container, pipe)
    if cfg.tty:
        stdio = _open_terminal(container)
    if cfg.readonly:
        fs.remount_root_readonly()
    set_rlimits(cfg.rlimits)
    start_hooks = partial(run_hooks, cfg.hooks, ("startContainer",),
                          oci_state_json(container.state, "created", os.getpid()))
    if fifo is not None:
        pipe.send(ready=1)
        _wait_for_start(fifo, start_hooks)
    else:
        start_hooks()
    if not cfg.init:                                     # the command itself is PID 1 (runc)
        return exec_command(cfg, pipe, stdio)
    prctl(lib.PR_SET_NAME, _c_string(INIT_NAME))
    _set_command_line(INIT_NAME)
    set_oom_score_adj(OOM_SCORE_INIT)                    # the OOM killer picks the command, not us
    # The command starts only once init holds no more than it will: it waits for the end of
    # this pipe, which init closes last.  Without the wait, a command that looks at PID 1
    # at once (/proc/1/status) could find it still privileged.
    held_r, held_w = os.pipe()
    child = fork_command(cfg)
    if child == 0:
        os.close(held_w)
        child_main(lambda: _when_closed(held_r, lambda: exec_command(cfg, pipe, stdio)), pipe)
    os.close(held_r)
    detach_stdio()                                       # init keeps no host fd (CVE-2024-21626)
    close_other_fds({held_w})
    become_container_process(cfg)                        # ... nor any host privilege (tini's way)
    os.close(held_w)                                     # now the command may run
    return reap(child)


def _when_closed(fd: int, then):
    """Read the pipe `fd` until every write end is closed (end of file), then call `then`."""
    while os.read(fd, 1):
        pass
    os.close(fd)
    return then()


def enter_namespaces(container: Container, kinds: tuple[str, ...]) -> None:
    """Join (setns) or create (unshare) these namespaces; set up lo and the hostname."""
    cfg = container.cfg
    new = 0
    for kind in ns.ORDER:
        if kind not in kinds or kind not in cfg.namespaces:
            continue
        if cfg.namespaces[kind]:
            ns.setns(cfg.namespaces[kind], kind)
        else:
            new |= ns.CLONE_FLAGS[kind]
    ns.unshare(new)
    if new & ns.CLONE_FLAGS["network"]:
        ns.loopback_up()
    hostname = cfg.hostname_for(container.id)
    if hostname and "uts" in kinds:
        sethostname(hostname)
    if cfg.domainname is not None and "uts" in kinds:
        setdomainname(cfg.domainname)


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


def _open_fifo(container: Container) -> int | None:
    if container.mode != CREATED:
        return None
    return os.open(os.path.join(container.dir, "exec.fifo"), os.O_PATH | os.O_CLOEXEC)


def build_root(container: Container, pipe: EventPipe) -> None:
    """rootfs.py's recipe, steps 1-5 (step 6, read-only, comes after the terminal);
    before pivot_root (or, with no_pivot, the move onto "/"), the hooks of the runtime's
    and then the container's namespaces."""
    cfg = container.cfg
    fs.make_private()
    if cfg.lower_dirs:
        upper, work, target = (os.path.join(container.dir, d) for d in ("upper", "work", "rootfs"))
        for d in (upper, work, target):
            os.makedirs(d, exist_ok=True)
        root = fs.mount_root(target, lower=cfg.lower_dirs, upper=upper, work=work)
    else:
        root = fs.mount_root(None, rootfs=cfg.rootfs)
    host_sys = "network" not in cfg.namespaces and "user" in cfg.namespaces
    fs.mount_all(root, cfg.mounts, host_sys=host_sys,
                 cgroupns="cgroup" in cfg.namespaces and not cfg.namespaces["cgroup"])
    fs.make_device_nodes(root, cfg.device_nodes)
    _write_sysctls(root, cfg.sysctl)                     # through the container's /proc, before it is ro
    fs.mask_paths(root, cfg.masked_paths)
    fs.readonly_paths(root, cfg.readonly_paths)
    _create_hooks(container, pipe)
    if cfg.no_pivot:
        fs.move_into(root)
    else:
        fs.pivot_into(root)
    _make_cwd(cfg.cwd)


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


def _create_hooks(container: Container, pipe: EventPipe) -> None:
    """prestart and createRuntime run in the launcher while we wait (runtime namespaces);
    createContainer runs here, in the container's namespaces, still on the host's root."""
    hooks = container.cfg.hooks
    if hooks.get("prestart") or hooks.get("createRuntime"):
        pipe.send(hooks=1)
        pipe.wait_ack(launcher_reports=True)
    run_hooks(hooks, ("createContainer",), oci_state_json(container.state, "creating", os.getpid()))


def _make_cwd(cwd: str) -> None:
    """Create a missing working directory (image WORKDIRs, as Docker and runc do)."""
    try:
        os.makedirs(cwd, mode=0o755, exist_ok=True)
    except OSError:
        pass                              # chdir() will say what is wrong, as the command's error


def _open_terminal(container: Container) -> dict:
    """runc's setupConsole, after pivot_root: a pty from the container's own devpts;
    the master goes out over the console socket, the slave becomes the command's stdio
    and /dev/console."""
    from pykvm.container.runtime import terminal
    try:
        slave = terminal.new_console(container.tty_inside, container.winsize, fs.mount_console)
    finally:
        container.close_console_sockets()
    return {"in": slave, "out": slave, "err": slave, "close": [slave]}


def _wait_for_start(fifo_path_fd: int, then) -> None:
    """`oci start` opens exec.fifo for reading; our open for writing blocks until then (runc's
    trick).  `then` (the startContainer hooks) runs before our byte tells `start` to go on,
    so that its poststart hooks come after them."""
    fd = os.open(f"/proc/self/fd/{fifo_path_fd}", os.O_WRONLY | os.O_CLOEXEC)
    then()
    os.write(fd, b"0")
    os.close(fd)
    os.close(fifo_path_fd)


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


def reap(child: int, kill_on: tuple[int, ...] = ()) -> int:
    """PID 1's loop: forward signals to the command, reap every zombie, exit with the command.

    A signal in `kill_on` (blocked by the caller, like the others) SIGKILLs the command.
    """
    wanted = set(FORWARDED_SIGNALS) | {signal.SIGCHLD} | set(kill_on)
    code = None
    while True:
        info = signal.sigwaitinfo(wanted)
        if info.si_signo in kill_on:
            kill_quietly(child)
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
                code = exit_code(status)
        if code is not None:
            return code
