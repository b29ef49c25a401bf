"""The lifecycle of a container after its launch: the OCI runtime's operations (runtime.md
"Operations": create, start, kill, delete; and runc's `run`) and Docker's stop/kill/rm.

Each runs in the caller's process and finds the container by its state (state.py); only
`create` and `run` launch one, and only they import the launcher (launcher.py) and the
modules of the processes it forks: `start`, `kill` and `delete` are programs of their own
under an engine (pykvm-runc), and start faster without them.  For the same reason each
operation imports what only it needs (cgroups for `delete`, the network for a container
on the bridge), and neither `typing` (3 ms) nor `dataclasses` (8 ms, with its import of
inspect) is imported by `start`, `kill` or `delete`; nor `signal` (its `enum` costs ~4 ms)
by a `start`, or by a `delete` of a container that has stopped.
"""
from __future__ import annotations

import os
import select
import sys
import time

from pykvm.container.runtime.hooks import hooks_from_json, run_hooks
from pykvm.container.runtime.state import ContainerState, StateStore, oci_state_json
from pykvm.errors import ContainerError

TYPE_CHECKING = False              # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from pykvm.container.runtime.launcher import Container, RunResult

__all__ = ["oci_create", "oci_run", "oci_start", "kill_container", "stop_container",
           "remove_container", "wait_stopped"]


def oci_create(cid: str, bundle: str, store: StateStore | None = None,
               console_socket: str | None = None, new_keyring: bool = True,
               hand_over: bool = False, preserve_fds: int = 0, no_pivot: bool = False) -> Container:
    """`create`: everything set up, the process waiting on exec.fifo; status "created".

    With process.terminal, the pty master is sent (SCM_RIGHTS) to the unix socket at
    `console_socket`, as runc's --console-socket does; whoever listens there owns the terminal.
    `hand_over` (pykvm-runc): the container's process becomes the child of the caller's
    subreaper, which waits for it (launcher.py says how).  `preserve_fds` and `no_pivot`:
    runc's --preserve-fds N and --no-pivot (RunConfig says what they do).
    """
    from dataclasses import replace

    from pykvm.container.runtime.bundle import load_bundle
    from pykvm.container.runtime.launcher import CREATED, launch
    cfg = replace(load_bundle(bundle), id=cid, name=cid, new_keyring=new_keyring,
                  preserve_fds=preserve_fds, no_pivot=no_pivot)
    console = None
    if console_socket:
        from pykvm.container.runtime.terminal import connect_console_socket
        console = connect_console_socket(console_socket)
    try:
        return launch(cfg, CREATED, store, console=console, hand_over=hand_over)
    finally:
        if console is not None:
            console.close()


def oci_run(cid: str, bundle: str, store: StateStore | None = None, new_keyring: bool = True,
            preserve_fds: int = 0, no_pivot: bool = False) -> RunResult:
    """`runc run`'s equivalent: create + start + wait, in the foreground, then delete."""
    from dataclasses import replace

    from pykvm.container.runtime.bundle import load_bundle
    from pykvm.container.runtime.launcher import FOREGROUND, launch
    cfg = replace(load_bundle(bundle), id=cid, name=cid, remove=True, interactive=True,
                  new_keyring=new_keyring, preserve_fds=preserve_fds, no_pivot=no_pivot)
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
    fifo = os.path.join(store.dir(state.id), "exec.fifo")
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
        try:
            os.unlink(fifo)
        except FileNotFoundError:
            pass
    _warn_if_fails(hooks, "poststart", oci_state_json(state, "running", state.pid))


def kill_container(ref: str, sig: int | None = None, store: StateStore | None = None) -> ContainerState:
    """`kill`: send a signal (SIGTERM if none is named) to the container's init."""
    import signal
    sig = signal.SIGTERM if sig is None else sig
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
    import signal
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
        import signal
        kill_container(state.id, signal.SIGKILL, store)
        if not wait_stopped(state, store, 5.0):
            raise ContainerError(f"container {state.id} did not die after SIGKILL")
    if state.cgroup:
        from pykvm.container.runtime.cgroups import Cgroup
        from pykvm.container.runtime.state import owned_by
        Cgroup.from_dirs(state.cgroup.get("version", "?"), state.cgroup.get("dirs", [])).destroy(
            owned_by(state.pid_namespace, state.cgroup.get("named", True)))
    if state.network == "bridge":
        from pykvm.container.runtime.network import release
        release(state.id)                  # a crashed monitor's address and ports
    store.remove(state.id)
    _warn_if_fails(hooks_from_json(state.hooks), "poststop", oci_state_json(state, "stopped", None))
    return state
