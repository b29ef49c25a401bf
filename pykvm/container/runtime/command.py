"""The command: the last process of the tree (PID 1 inside, or PID 2 under pykvm-init),
and the steps by which it becomes the user's program.

    command   (forked by init, or by exec's joiner)
         signals back to their defaults, stdio, oom_score_adj, personality,
         I/O priority, umask, setsid,
         with -t the controlling terminal, chdir, HOME, then the credentials
         (no_new_privs, bounding set, groups, uid/gid, capability sets),
         only fds 0-2 (and those of --preserve-fds), the seccomp filter, execve(2)

The seccomp filter (seccomp.py) goes on where runc's standard_init puts it: right
before execve when no_new_privs is set (so the profile has to allow as few of the
runtime's own calls as possible), else before the capabilities are dropped, since
loading a filter without no_new_privs needs CAP_SYS_ADMIN.

When the execve succeeds the event pipe (close-on-exec) closes and the launcher reads
end-of-file; when it fails, the error and an exit code go up the pipe (ExecFailed).
"""
from __future__ import annotations

import fcntl
import os
import resource
import signal
from dataclasses import replace

from pykvm.container.runtime import capabilities as caps
from pykvm.container.runtime import namespaces as ns
from pykvm.container.runtime.config import RunConfig
from pykvm.container.runtime.process import (EXIT_CANNOT_EXEC, EXIT_NOT_FOUND, EXIT_SETUP_FAILED,
                                             EventPipe, ExecFailed, close_other_fds,
                                             inherit_preserved_fds)
from pykvm.container.runtime.syscalls import lib, prctl, set_io_priority, set_personality
from pykvm.container.runtime.validate import RLIM_INFINITY
from pykvm.errors import ConfigError, ContainerError

__all__ = ["exec_command", "drop_privileges", "become_container_process", "fork_command",
           "set_rlimits", "set_oom_score_adj"]


def exec_command(cfg: RunConfig, pipe: EventPipe, stdio: dict) -> int:
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
    set_oom_score_adj(cfg.oom_score_adj or 0, required=cfg.oom_score_adj is not None)
    if cfg.personality is not None:
        set_personality(cfg.personality)
    if cfg.io_priority is not None:
        set_io_priority(*cfg.io_priority)                # the RT class needs CAP_SYS_ADMIN: before the drop
    os.umask(cfg.umask)
    os.setsid()
    if cfg.tty:
        from pykvm.container.runtime import terminal
        fcntl.ioctl(0, lib.TIOCSCTTY, 0)                # tty_ioctl(4): our controlling terminal
        terminal.give_to_user(0, cfg.uid)
    try:
        os.chdir(cfg.cwd)
    except OSError as e:
        raise ExecFailed(EXIT_SETUP_FAILED, f"cannot enter working directory {cfg.cwd}: {e.strerror}")
    env = dict(e.split("=", 1) if "=" in e else (e, "") for e in cfg.env)
    env.setdefault("HOME", _home_dir(cfg.uid))      # runc's rule: HOME when the config has none
    if cfg.seccomp_filter is not None and not cfg.no_new_privileges:
        cfg.seccomp_filter.load()              # without no_new_privs this needs CAP_SYS_ADMIN: before it goes
    drop_privileges(cfg)
    close_other_fds({pipe.events_w}, preserved=cfg.preserve_fds)
    inherit_preserved_fds(cfg.preserve_fds)
    if cfg.seccomp_filter is not None and cfg.no_new_privileges:
        cfg.seccomp_filter.load()              # as late as runc: the profile need allow little of ours
    try:
        os.execvpe(cfg.args[0], cfg.args, env)
    except FileNotFoundError:
        raise ExecFailed(EXIT_NOT_FOUND, f"{cfg.args[0]}: command not found in the container "
                                         f"(PATH={env.get('PATH', '')})") from None
    except PermissionError:
        raise ExecFailed(EXIT_CANNOT_EXEC, f"{cfg.args[0]}: permission denied") from None
    except OSError as e:
        raise ExecFailed(EXIT_CANNOT_EXEC, f"{cfg.args[0]}: cannot execute: {e.strerror}") from None


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


def drop_privileges(cfg: RunConfig) -> None:
    """no_new_privs, bounding set, user and groups, then the capability sets (capabilities.py)."""
    c = cfg.capabilities
    if cfg.no_new_privileges:
        prctl(lib.PR_SET_NO_NEW_PRIVS, 1)
    caps.drop_bounding(caps.cap_numbers(c.get("bounding")))
    if cfg.uid != 0:
        prctl(lib.PR_SET_KEEPCAPS, 1)                 # setuid() away from 0 keeps "permitted"
    if _may_setgroups(cfg):
        os.setgroups(cfg.additional_gids)
    os.setresgid(cfg.gid, cfg.gid, cfg.gid)
    os.setresuid(cfg.uid, cfg.uid, cfg.uid)
    caps.set_caps(caps.cap_numbers(c.get("effective")), caps.cap_numbers(c.get("permitted")),
                  caps.cap_numbers(c.get("inheritable")), caps.cap_numbers(c.get("ambient")))


def _may_setgroups(cfg: RunConfig) -> bool:
    """setgroups(2) is refused for good in a user namespace that denies it: pykvm's own
    rootless one, or the one rootless Podman runs its runtime in.  runc reads the same
    file and then leaves the groups as they are.  Where /proc/self cannot tell, a user
    namespace of the container's may deny it."""
    denied = ns.setgroups_denied()
    return "user" not in cfg.namespaces if denied is None else not denied


def become_container_process(cfg: RunConfig) -> None:
    """pykvm-init, once the command runs, keeps no more than the command has: its user,
    groups, capability sets and no_new_privs (Docker's --init, tini, is the container's
    process too).  Signalling the command needs no privilege then: it is the same user."""
    drop_privileges(replace(cfg, capabilities=caps.after_execve(cfg.capabilities, cfg.uid)))
    prctl(lib.PR_SET_DUMPABLE, 0)                     # a uid change resets it to suid_dumpable


def fork_command(cfg: RunConfig) -> int:
    """fork(2) the command, with a clear word when the pids limit leaves no room for it."""
    try:
        return os.fork()
    except BlockingIOError:
        raise ContainerError(f"cannot start the command: fork() failed with EAGAIN (pids limit "
                             f"{cfg.limits.pids}, or RLIMIT_NPROC, reached)") from None


def set_rlimits(rlimits) -> None:
    """process.rlimits, set before the command is forked: it inherits them."""
    for name, soft, hard in rlimits:
        if not hasattr(resource, name):
            raise ConfigError(f"unknown rlimit {name}")
        # Python spells the C RLIM_INFINITY (2**64 - 1) as -1
        soft, hard = (resource.RLIM_INFINITY if v == RLIM_INFINITY else v for v in (soft, hard))
        try:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        except (ValueError, OSError) as e:
            raise ContainerError(f"rlimit {name} ({soft}, {hard}): {e}") from None


def set_oom_score_adj(value: int, required: bool = False) -> None:
    """proc(5) /proc/self/oom_score_adj; lowering it needs CAP_SYS_RESOURCE (not rootless).
    `required` (process.oomScoreAdj): failing is an error, not something to skip quietly."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(f"{value}\n")
    except OSError as e:
        if required:
            raise ContainerError(f"process.oomScoreAdj {value}: {e.strerror}") from None
