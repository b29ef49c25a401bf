"""OCI hooks: programs a bundle asks the runtime to run at points of the container's life.

runtime-spec config.md "POSIX-platform Hooks" and runtime.md "Lifecycle".  Each
hook is {path, args, env, timeout}; it gets the container's state JSON
(runtime.md "State") on its stdin.  Where each kind runs, in pykvm:

    kind             who runs it                  when                              namespaces
    prestart         the launcher                 mounts made, before pivot_root    the runtime's
    createRuntime    the launcher                 (same point, after prestart)      the runtime's
    createContainer  the container's init         right after createRuntime         the container's
    startContainer   the container's init         `start`, before the user process  the container's, new root
    poststart        `oci start` / `oci run`      the process runs, before returning the runtime's
    poststop         `oci delete` / `oci run`     the container is deleted          the runtime's

A failing prestart, createRuntime, createContainer or startContainer hook stops
the container with one line naming it; a failing poststart or poststop hook is a
warning (the spec: "the runtime MUST log a warning").

`oci start` and `oci delete` (each a pykvm-runc call of its own) read the hooks back from
state.json, so Hook is a plain class: dataclasses' import of inspect would cost each
call ~8 ms.  For the same reason `json` and `signal` (which import `re` and `enum`) are
imported only where a hook is run.
"""
from __future__ import annotations

import os

from pykvm.errors import ConfigError, ContainerError

__all__ = ["KINDS", "Hook", "parse_hooks", "run_hooks", "hooks_from_json", "hooks_to_json"]

KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
STDERR_SHOWN = 200                # bytes of a failing hook's stderr quoted in the error


class Hook:
    """One hook: config.md "path" (absolute), "args" (execv's argv), "env", "timeout" (s)."""

    def __init__(self, path: str, args: list[str] | None = None, env: list[str] | None = None,
                 timeout: int | None = None):
        self.path = path
        self.args = list(args or [])
        self.env = list(env or [])
        self.timeout = timeout

    def to_json(self) -> dict:
        """As state.json keeps it (Hook(**data) reads it back)."""
        return {"path": self.path, "args": self.args, "env": self.env, "timeout": self.timeout}

    def __repr__(self) -> str:
        return f"Hook({self.path!r}, args={self.args!r}, env={self.env!r}, timeout={self.timeout!r})"


def parse_hooks(value) -> dict[str, list[Hook]]:
    """config.json "hooks" -> {kind: [Hook]}; a bad field is a ConfigError naming it."""
    if not isinstance(value, dict):
        raise ConfigError("config.json: hooks must be an object")
    out = {}
    for kind, entries in value.items():
        if kind not in KINDS:
            raise ConfigError(f"config.json: hooks.{kind} is not a hook kind ({', '.join(KINDS)})")
        if not isinstance(entries, list):
            raise ConfigError(f"config.json: hooks.{kind} must be a list")
        out[kind] = [_hook(entry, f"hooks.{kind}[{i}]") for i, entry in enumerate(entries)]
    return out


def _hook(entry, where: str) -> Hook:
    if not isinstance(entry, dict):
        raise ConfigError(f"config.json: {where} must be an object")
    path, args, env, timeout = (entry.get(k) for k in ("path", "args", "env", "timeout"))
    if not isinstance(path, str) or not os.path.isabs(path) or "\0" in path:
        raise ConfigError(f"config.json: {where}.path must be an absolute path")
    for name, strings in (("args", args), ("env", env)):
        if strings is not None and (not isinstance(strings, list) or
                                    not all(isinstance(s, str) and "\0" not in s for s in strings)):
            raise ConfigError(f"config.json: {where}.{name} must be a list of strings")
    if any("=" not in e for e in env or []):
        raise ConfigError(f"config.json: {where}.env entries must be NAME=VALUE")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0):
        raise ConfigError(f"config.json: {where}.timeout must be a positive number of seconds")
    return Hook(path, args, env, timeout)


def hooks_from_json(data: dict) -> dict[str, list[Hook]]:
    """The hooks as state.json keeps them (hooks_to_json), for `oci start` and `oci delete`."""
    return {kind: [Hook(**h) for h in entries] for kind, entries in (data or {}).items()}


def hooks_to_json(hooks: dict[str, list[Hook]]) -> dict:
    return {kind: [h.to_json() for h in entries] for kind, entries in hooks.items()}


def run_hooks(hooks: dict[str, list[Hook]], kinds: tuple[str, ...], state: dict) -> None:
    """Run every hook of `kinds`, in order, each with `state` (JSON) on stdin; raise a
    ContainerError naming the first that fails or outlives its timeout."""
    for kind in kinds:
        for i, hook in enumerate(hooks.get(kind, [])):
            import json
            _run_one(hook, f"hooks.{kind}[{i}]", json.dumps(state, separators=(",", ":")).encode())


def _run_one(hook: Hook, where: str, stdin: bytes) -> None:
    import subprocess           # only when there are hooks: its import is ~10% of a launch
    env = dict(e.split("=", 1) for e in hook.env)
    try:
        done = subprocess.run(hook.args or [hook.path], executable=hook.path, env=env, input=stdin,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=hook.timeout,
                              preexec_fn=_unblock_signals)
    except subprocess.TimeoutExpired:
        raise ContainerError(f"{where} {hook.path} did not finish within {hook.timeout} s") from None
    except OSError as e:
        raise ContainerError(f"{where} {hook.path}: {e.strerror}") from None
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip()[-STDERR_SHOWN:].replace("\n", " ")
        raise ContainerError(f"{where} {hook.path} failed with status {done.returncode}"
                             + (f": {said}" if said else ""))


def _unblock_signals() -> None:
    """A hook run by the container's init must not inherit init's blocked signals."""
    import signal                   # already loaded: subprocess imports it
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
