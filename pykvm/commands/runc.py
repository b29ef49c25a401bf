"""`pykvm-runc`: pykvm's container runtime as a program an engine can call, speaking runc's
command line (runc 1.1's `runc --help`, and what the engines send it).

    podman --runtime /path/to/pykvm-runc run ...       (conmon calls it)
    ctr run --runc-binary /path/to/pykvm-runc ...      (containerd-shim calls it, via go-runc)

    pykvm-runc [--root DIR] [--log FILE] [--log-format text|json] [--debug] COMMAND ...
      create --bundle DIR --pid-file FILE [--console-socket SOCK] [--preserve-fds N] [--no-pivot] ID
      start ID | state ID | kill [--all] ID [SIGNAL] | delete [--force] ID
      exec --process FILE [--detach] [--pid-file FILE] [--console-socket SOCK] [--tty]
           [--preserve-fds N] ID
      ps [--format table|json] ID | pause ID | resume ID | list | features | --version

A bundle whose config.json has the annotation "org.pykvm.isolation": "vm" (`podman run
--annotation org.pykvm.isolation=vm ...` writes it) runs in a Linux VM instead, with the same
operations and state (pykvm/commands/container/oci_vm.py).

What an engine relies on besides the operations themselves:
  - `create` writes the container process's host PID to --pid-file and exits; that process
    is then the child of the engine's subreaper (conmon and containerd-shim call
    prctl(PR_SET_CHILD_SUBREAPER)), which waits for it and so learns its exit status.
  - `exec --detach` does the same for the exec'd process (its PID in --pid-file).
  - errors: exit status 1, and runc's words where engines match them ("container does
    not exist", "container not running"), as one log entry: to --log if given (a JSON line
    {"level":"error","msg":...,"time":...} with --log-format json, which conmon and
    containerd-shim read back), and the bare message on stderr.

No click here, and every pykvm module is imported by the command that needs it: an
engine runs this program several times per container, and `--version` or `state` should
cost little more than Python's own start.  For the same reason `json` (which imports `re`
and `enum`: ~9 ms) is imported only by the commands that print JSON or read a file
besides state.json (`state`, `list`, `ps`, `features`, `exec`, `update`) and by a JSON log entry;
`start` and `delete` go without it.
"""
from __future__ import annotations

import os
import sys
import time

__all__ = ["main", "RuncError", "parse_args", "VERSION_LINES", "features"]

SPEC_VERSION = "1.0.2"             # the runtime-spec version whose state and config we speak
NO_SUCH_CONTAINER = "container does not exist"      # runc's libcontainer.ErrNotExist
NOT_RUNNING = "container not running"               # runc's ErrNotRunning: containerd matches it

# Each command's options: name -> takes a value.  Aliases map to these names.
COMMANDS = {
    "create": {"bundle": True, "pid-file": True, "console-socket": True, "no-pivot": False,
               "no-new-keyring": False, "preserve-fds": True},
    "run": {"bundle": True, "pid-file": True, "console-socket": True, "no-pivot": False,
            "no-new-keyring": False, "preserve-fds": True, "detach": False},
    "start": {}, "state": {}, "pause": {}, "resume": {}, "features": {},
    "kill": {"all": False},
    "delete": {"force": False},
    "exec": {"process": True, "detach": False, "pid-file": True, "console-socket": True,
             "tty": False, "cwd": True, "env": True, "user": True, "preserve-fds": True},
    "ps": {"format": True},
    "update": {"resources": True},
    "list": {"format": True, "quiet": False},
}
# runc's other commands: refused by name, with what to do instead.
UNSUPPORTED = {"checkpoint": "there is no CRIU support", "restore": "there is no CRIU support",
               "events": "there is no event stream; poll `state`", "spec": "use `runc spec`"}
GLOBAL_OPTIONS = {"root": True, "log": True, "log-format": True, "systemd-cgroup": False,
                  "debug": False, "rootless": True, "criu": True, "help": False, "version": False}
ALIASES = {"b": "bundle", "f": "force", "a": "all", "d": "detach", "t": "tty", "p": "process",
           "q": "quiet", "h": "help", "v": "version", "u": "user", "e": "env"}


def version_lines() -> list[str]:
    """runc --version's first three lines (go-runc parses "runc version", "commit:", "spec:")."""
    from pykvm import __version__
    return [f"runc version {__version__} (pykvm-runc, pykvm's container runtime)",
            f"commit: pykvm-{__version__}", f"spec: {SPEC_VERSION}"]


VERSION_LINES = version_lines


class RuncError(Exception):
    """An error reported the way runc reports it: its message, exit status 1."""


# --- the command line, as urfave/cli (runc's parser) reads it ---------------------------

def parse_args(args: list[str], options: dict[str, bool]) -> tuple[dict, list[str]]:
    """Options (`--name value`, `--name=value`, `-name`; bools without a value) up to the
    first argument that is not one, or `--`; returns (options, the remaining arguments)."""
    found: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, has_value, value = arg.lstrip("-").partition("=")
        name = ALIASES.get(name, name)
        if name not in options:
            raise RuncError(f"flag provided but not defined: -{name}")
        if options[name] and not has_value:
            i += 1
            if i == len(args):
                raise RuncError(f"flag needs an argument: -{name}")
            value = args[i]
        elif not options[name]:
            value = value.lower() not in ("false", "0") if has_value else True
        if name == "env":
            found.setdefault(name, []).append(value)
        else:
            found[name] = value
        i += 1
    return found, args[i:]


# --- errors and the log ---------------------------------------------------------------

class Log:
    """runc's logrus: --log FILE (else stderr), --log-format text|json."""

    def __init__(self, path: str | None, fmt: str):
        if fmt not in ("text", "json"):
            raise RuncError(f"invalid log-format: {fmt}")
        self.path, self.fmt = path, fmt

    def entry(self, level: str, msg: str) -> str:
        import json
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if self.fmt == "json":
            return json.dumps({"level": level, "msg": msg, "time": now}, separators=(",", ":")) + "\n"
        return f'time="{now}" level={level} msg={json.dumps(msg)}\n'

    def error(self, msg: str) -> None:
        """runc's fatal(): the log entry, and the bare message on stderr when the log is a file."""
        line = self.entry("error", msg)
        if self.path is None:
            sys.stderr.write(line)
            return
        try:
            with open(self.path, "a") as f:
                f.write(line)
        except OSError as e:
            sys.stderr.write(f"pykvm-runc: cannot write the log {self.path}: {e.strerror}\n")
        sys.stderr.write(msg + "\n")


def main(argv: list[str] | None = None) -> None:
    """The program's entry point (pyproject [project.scripts] pykvm-runc).

    As the program (argv is None) it ends through exit_now (fast_exit.py), without the
    interpreter's teardown, which an engine would pay at each of its calls; called with an
    argv, from Python, it raises SystemExit as usual.
    """
    try:
        _run(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:
        if argv is not None:
            raise
        from pykvm.commands.fast_exit import exit_now
        exit_now(e.code)


def _run(argv: list[str]) -> None:
    """Parse, dispatch, and exit (sys.exit) with the command's status, or 1 after one
    log entry for an error."""
    log = Log(None, "text")
    try:
        opts, rest = parse_args(argv, GLOBAL_OPTIONS)
        log = Log(opts.get("log"), opts.get("log-format", "text"))
        sys.exit(dispatch(opts, rest))
    except RuncError as e:
        log.error(str(e))
    except KeyboardInterrupt:
        log.error("interrupted")
    except Exception as e:                       # noqa: BLE001 - pykvm's errors, OSError ...
        from pykvm.errors import PyKvmError
        if not isinstance(e, (PyKvmError, OSError)):
            raise
        log.error(str(e))
    sys.exit(1)


def dispatch(opts: dict, rest: list[str]) -> int:
    if opts.get("version"):
        print("\n".join(version_lines()))
        return 0
    if opts.get("systemd-cgroup"):
        raise RuncError("--systemd-cgroup is not supported: pykvm-runc manages cgroups through "
                        "cgroupfs only (podman --cgroup-manager cgroupfs; containerd SystemdCgroup = false)")
    if not rest or opts.get("help"):
        print(__doc__.split("\n\n")[1])
        return 0
    command, args = rest[0], rest[1:]
    if command in UNSUPPORTED:
        raise RuncError(f"{command} is not supported by pykvm-runc: {UNSUPPORTED[command]}")
    if command not in COMMANDS:
        raise RuncError(f"No help topic for '{command}'")
    cmd_opts, positional = parse_args(args, COMMANDS[command])
    if "preserve-fds" in cmd_opts:                  # before we open anything of our own
        cmd_opts["preserve-fds"] = preserved_fd_count(cmd_opts["preserve-fds"])
    store = _store(opts.get("root"))
    return HANDLERS[command](store, cmd_opts, positional)


def _store(root: str | None):
    from pykvm.container.runtime.state import StateStore
    return StateStore(root) if root else StateStore()


def preserved_fd_count(text: str) -> int:
    """--preserve-fds N: a number >= 0, and the caller's fds 3 .. 3+N-1 all open.

    Checked first thing, while every fd above 2 is still the caller's: were one of them
    closed, a fd that the runtime opens itself could take its number and be handed to the
    container (CVE-2024-21626 was such a leaked fd).  runc reads a negative N as 0; here it
    is an error, as a typo more likely than a wish."""
    from pykvm.container.runtime.process import preserved_fds
    digits = text.removeprefix("-")
    if not (digits.isascii() and digits.isdigit()):
        raise RuncError(f"invalid value \"{text}\" for flag -preserve-fds: parse error "
                        f"(want a number of fds)")
    count = int(text)
    if count < 0:
        raise RuncError(f"invalid value \"{text}\" for flag -preserve-fds: want 0 or more fds")
    for index, fd in enumerate(preserved_fds(count)):
        try:
            os.fstat(fd)
        except OSError as e:
            raise RuncError(f"unable to stat preserved-fd {index} (of {count}): fd {fd} is not "
                            f"open ({e.strerror})") from None
    return count


def _one_id(positional: list[str], command: str) -> str:
    if not positional:
        raise RuncError(f'"{command}" requires a minimum of 1 argument')
    return positional[0]


def _load(store, cid: str):
    """The container by its exact id (runc has no names or prefixes)."""
    from pykvm.container.runtime.state import valid_id
    if not valid_id(cid) or not store.has(cid):
        raise RuncError(NO_SUCH_CONTAINER)
    return store.load(cid)


def _status(store, state) -> str:
    """runc's statuses: created, running, paused (a frozen cgroup), stopped."""
    status = store.status(state)
    if status == "running" and _cgroup(state) is not None and _cgroup(state).frozen():
        return "paused"
    return status


def _cgroup(state):
    if not state.cgroup or not state.cgroup.get("dirs"):
        return None
    from pykvm.container.runtime.cgroups import Cgroup
    return Cgroup.from_dirs(state.cgroup["version"], state.cgroup["dirs"])


# --- the operations ---------------------------------------------------------------------

def cmd_create(store, opts: dict, positional: list[str]) -> int:
    """runtime.md "create": set up, write --pid-file, leave the process to the caller."""
    cid = _one_id(positional, "create")
    from pykvm.container.runtime.bundle import bundle_isolation
    from pykvm.container.runtime.lifecycle import oci_create
    from pykvm.errors import ConfigError
    if store.has(cid):
        raise RuncError("container with given ID already exists")
    bundle = opts.get("bundle", ".")
    try:
        if bundle_isolation(bundle) == "vm":
            from pykvm.commands.container.oci_vm import oci_create_vm
            pid = oci_create_vm(cid, bundle, store).pid
        else:
            pid = oci_create(cid, bundle, store, console_socket=opts.get("console-socket"),
                             new_keyring=not opts.get("no-new-keyring"), hand_over=True,
                             preserve_fds=opts.get("preserve-fds", 0),
                             no_pivot=bool(opts.get("no-pivot"))).init_pid
    except ConfigError as e:
        raise RuncError(str(e)) from None
    if opts.get("pid-file"):
        write_pid_file(opts["pid-file"], pid)
    return 0


def write_pid_file(path: str, pid: int) -> None:
    """runc's: the PID, no newline, written whole (a temporary file renamed over it)."""
    path = os.path.abspath(path)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}")
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.replace(tmp, path)


def cmd_start(store, opts: dict, positional: list[str]) -> int:
    state = _load(store, _one_id(positional, "start"))
    status = _status(store, state)
    if status == "stopped":
        raise RuncError("cannot start a container that has stopped")
    if status != "created":
        raise RuncError("cannot start an already running container")
    from pykvm.container.runtime.lifecycle import oci_start
    oci_start(state.id, store)
    return 0


def cmd_state(store, opts: dict, positional: list[str]) -> int:
    state = _load(store, _one_id(positional, "state"))
    import json
    print(json.dumps(runc_state(store, state), indent=2))
    return 0


def runc_state(store, state) -> dict:
    """runc state's JSON: runtime.md "State" plus runc's rootfs, created and owner."""
    status = _status(store, state)
    return {"ociVersion": SPEC_VERSION, "id": state.id,
            "pid": state.pid if status != "stopped" else 0, "status": status,
            "bundle": state.bundle, "rootfs": state.rootfs, "created": rfc3339(state.created),
            "owner": "", "annotations": state.annotations or {}}


def rfc3339(when: float) -> str:
    """Go's time.RFC3339Nano in UTC, as runc prints `created`."""
    whole = int(when)
    nanos = f"{int(round((when - whole) * 1e9)):09d}".rstrip("0")
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + (f".{nanos}" if nanos else "") + "Z"


def cmd_kill(store, opts: dict, positional: list[str]) -> int:
    """runc kill ID [SIGNAL]: to the container's process, or with --all to every one in its cgroup."""
    state = _load(store, _one_id(positional, "kill"))
    import signal
    sig = parse_signal(positional[1] if len(positional) > 1 else "SIGTERM")
    status = _status(store, state)
    if status == "stopped":
        raise RuncError(NOT_RUNNING)
    pids = [state.pid]
    if opts.get("all") and _cgroup(state) is not None:
        from pykvm.container.runtime.state import owned_by
        mine = owned_by(state.pid_namespace, state.cgroup.get("named", True))
        pids = [pid for pid in _cgroup(state).pids() if mine(pid)] or pids
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            if pid == state.pid:
                raise RuncError(NOT_RUNNING) from None
    if status == "paused" and sig == signal.SIGKILL:
        _cgroup(state).freeze(False)        # v1: a frozen task dies only once thawed (as runc 1.1)
    return 0


def parse_signal(text: str) -> int:
    """runc's: a number, or a name with or without SIG (KILL, SIGKILL, kill)."""
    import signal
    if text.isdigit():
        number = int(text)
        if not 0 < number < signal.NSIG:
            raise RuncError(f"unknown signal {text!r}")
        return number
    name = text.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return int(getattr(signal.Signals, name))
    except AttributeError:
        raise RuncError(f"unknown signal {text!r}") from None


def cmd_delete(store, opts: dict, positional: list[str]) -> int:
    """runc delete [--force] ID: --force kills a running one and says nothing of a missing one."""
    cid = _one_id(positional, "delete")
    try:
        state = _load(store, cid)
    except RuncError:
        if opts.get("force"):
            return 0
        raise
    status = _status(store, state)
    if status == "paused" and opts.get("force"):
        _cgroup(state).freeze(False)          # a frozen process cannot die of SIGKILL until thawed
    elif status not in ("stopped", "created") and not opts.get("force"):
        raise RuncError(f"cannot delete container {cid} that is not stopped: {status}")
    from pykvm.container.runtime.lifecycle import remove_container
    remove_container(cid, force=True, store=store)
    return 0


def cmd_pause(store, opts: dict, positional: list[str]) -> int:
    return _freeze(store, _one_id(positional, "pause"), True)


def cmd_resume(store, opts: dict, positional: list[str]) -> int:
    return _freeze(store, _one_id(positional, "resume"), False)


def _freeze(store, cid: str, frozen: bool) -> int:
    state = _load(store, cid)
    status = _status(store, state)
    if frozen and status != "running" or not frozen and status != "paused":
        raise RuncError(NOT_RUNNING if frozen else "container not paused")
    cgroup = _cgroup(state)
    if cgroup is None:
        raise RuncError(f"container {cid} has no cgroup: cannot pause or resume it")
    cgroup.freeze(frozen)
    return 0


def cmd_ps(store, opts: dict, positional: list[str]) -> int:
    """runc ps: the host PIDs of the container's processes (--format json), or `ps -ef`'s
    lines for them (table)."""
    import json
    state = _load(store, _one_id(positional, "ps"))
    fmt = opts.get("format", "table")
    if fmt not in ("table", "json"):
        raise RuncError(f"invalid format option: {fmt}")
    pids = _cgroup(state).pids() if _cgroup(state) is not None else []
    if fmt == "json":
        print(json.dumps(pids))
        return 0
    import subprocess
    lines = subprocess.run(["ps", "-ef"], capture_output=True, text=True, check=True).stdout.splitlines()
    print(lines[0])
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > 1 and fields[1].isdigit() and int(fields[1]) in pids:
            print(line)
    return 0


def cmd_list(store, opts: dict, positional: list[str]) -> int:
    import json
    rows = [runc_state(store, s) for s in store.list()]
    if opts.get("quiet"):
        print("\n".join(r["id"] for r in rows))
    elif opts.get("format") == "json":
        print(json.dumps(rows or None))
    else:
        table = [["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]]
        table += [[r["id"], str(r["pid"]), r["status"], r["bundle"], r["created"], "root"] for r in rows]
        # runc's tabwriter: columns at least 12 wide, 3 spaces after the widest cell
        widths = [max(12, *(len(row[i]) + 3 for row in table)) for i in range(5)]
        for row in table:
            print("".join(cell.ljust(w) for cell, w in zip(row, widths)) + row[5])
    return 0


def cmd_exec(store, opts: dict, positional: list[str]) -> int:
    """runc exec: a process (its OCI `process` object in --process FILE, or the arguments
    after the ID) in a running container.  --detach: write --pid-file and leave it to the
    caller's subreaper, as `create` does."""
    state = _load(store, _one_id(positional, "exec"))
    if _status(store, state) != "running":
        raise RuncError("cannot exec in a stopped container" if _status(store, state) == "stopped"
                        else f"cannot exec in a {_status(store, state)} container")
    from dataclasses import replace

    from pykvm.container.runtime.exec import exec_config, exec_process_spec, exec_program
    if opts.get("process"):
        cfg = exec_process_spec(state, _read_process(opts["process"]))
    elif len(positional) > 1:                     # runc exec ID ARGS...: the container's process, adjusted
        cfg = exec_config(state, positional[1:], env=opts.get("env", []), cwd=opts.get("cwd"),
                          user=opts.get("user"), tty=bool(opts.get("tty")))
    else:
        raise RuncError("exec args cannot be empty")
    cfg = replace(cfg, preserve_fds=opts.get("preserve-fds", 0))
    pid_file = opts.get("pid-file")
    return exec_program(state, cfg, detach=bool(opts.get("detach")),
                        console_socket=opts.get("console-socket"),
                        on_started=lambda pid: pid_file and write_pid_file(pid_file, pid))


def _read_process(path: str) -> dict:
    import json
    try:
        with open(path) as f:
            process = json.load(f)
    except (OSError, ValueError) as e:
        raise RuncError(f"cannot read the process file {path}: {e}") from None
    if not isinstance(process, dict):
        raise RuncError(f"the process file {path} must hold a JSON object")
    return process


def features() -> dict:
    """runc features' JSON (runc 1.1's features.md): what this runtime accepts."""
    from pykvm.container.runtime.capabilities import ALL_CAPS
    from pykvm.container.runtime.hooks import KINDS
    from pykvm.container.runtime.namespaces import CLONE_FLAGS
    from pykvm.container.runtime.rootfs import FLAG_OPTIONS
    return {
        "ociVersionMin": "1.0.0", "ociVersionMax": SPEC_VERSION,
        "hooks": list(KINDS),
        "mountOptions": sorted(FLAG_OPTIONS),
        "linux": {
            "namespaces": sorted(CLONE_FLAGS),
            "capabilities": sorted(ALL_CAPS),
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False},
            "seccomp": {"enabled": False},
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
        },
        "annotations": {"org.opencontainers.runc.version": version_lines()[0].split()[2],
                        "org.opencontainers.runtime-spec.version": SPEC_VERSION},
    }


def cmd_features(store, opts: dict, positional: list[str]) -> int:
    import json
    print(json.dumps(features(), indent=4))
    return 0


def cmd_run(store, opts: dict, positional: list[str]) -> int:
    """runc run: create + start + wait in the foreground, then delete."""
    cid = _one_id(positional, "run")
    if opts.get("detach"):
        raise RuncError("run --detach is not supported by pykvm-runc: use create, then start")
    from pykvm.container.runtime.bundle import bundle_isolation
    if bundle_isolation(opts.get("bundle", ".")) == "vm":
        from pykvm.commands.container.oci_vm import oci_run_vm
        return oci_run_vm(cid, opts.get("bundle", "."), store)
    from pykvm.container.runtime.lifecycle import oci_run
    return oci_run(cid, opts.get("bundle", "."), store, new_keyring=not opts.get("no-new-keyring"),
                   preserve_fds=opts.get("preserve-fds", 0), no_pivot=bool(opts.get("no-pivot"))).exit_code


def cmd_update(store, opts: dict, positional: list[str]) -> int:
    """runc update --resources FILE|- ID: new memory, pids and CPU limits (config-linux.md
    "Control groups": a LinuxResources object, as engines write it)."""
    import json
    state = _load(store, _one_id(positional, "update"))
    if not opts.get("resources"):
        raise RuncError("update needs --resources FILE (or - for stdin): pykvm-runc takes no "
                        "single-limit options")
    if _status(store, state) == "stopped":
        raise RuncError(NOT_RUNNING)
    text = sys.stdin.read() if opts["resources"] == "-" else _read_text(opts["resources"])
    try:
        resources = json.loads(text)
    except ValueError as e:
        raise RuncError(f"the resources are not JSON: {e}") from None
    from pykvm.container.runtime.bundle import limits_from_resources
    from pykvm.container.runtime.cgroups import Cgroup
    from pykvm.errors import ConfigError
    try:
        limits = limits_from_resources(resources)
    except ConfigError as e:
        raise RuncError(str(e).replace("config.json: linux.resources", "resources")) from None
    if not state.cgroup.get("dirs"):
        raise RuncError(f"container {state.id} has no cgroup: no limit can be set")
    Cgroup.reopen(state.cgroup["version"], state.cgroup["dirs"]).set_limits(limits)
    return 0


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise RuncError(f"cannot read {path}: {e.strerror}") from None


HANDLERS = {"update": cmd_update, "create": cmd_create, "start": cmd_start, "state": cmd_state, "kill": cmd_kill,
            "delete": cmd_delete, "pause": cmd_pause, "resume": cmd_resume, "ps": cmd_ps,
            "list": cmd_list, "exec": cmd_exec, "features": cmd_features, "run": cmd_run}


if __name__ == "__main__":
    main()
