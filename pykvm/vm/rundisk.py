"""The run disk: what pykvm asks the guest's container-init to run, and the exit status it answers.

`pykvm container run --isolation vm` boots Linux with two virtio disks: the image's
root filesystem (read-only) and this one, a small raw disk in two fixed parts:

    offset 0          REQUEST (64 KiB): written by pykvm before boot, read by the init
        "pykvm-run 1\\0"                  the magic, with the protocol version
        "arg=/bin/sh\\0" "arg=-c\\0" ...  the command, argv[0] first (repeatable, in order)
        "env=PATH=/bin\\0" ...            its environment (repeatable, in order)
        "cwd=/work\\0"                    the working directory (created if missing)
        "uid=1000\\0" "gid=1000\\0"        the user and group, numbers (resolved on the host)
        "groups=10,20\\0"                 the supplementary groups ("" for none)
        "hostname=NAME\\0"                the guest's hostname
        "stdin=null\\0"                   the command's stdin: null (/dev/null), pipe (-i: the
                                        caller's stdin through hvc2, below) or tty (-t: hvc0
                                        is the command's terminal)
        "\\0"                             an empty record: the end
    offset 64 KiB     ANSWER (4 KiB): written by the init when the command has ended
        "exit=N\\n"                       N = 0-255: exit code, or 128 + signal number

A third console, hvc2, is pykvm's channel to the command: the caller's stdin with
stdin=pipe, and signals.  The init's relay puts it in raw mode and then writes READY ("R")
on it; pykvm sends nothing before that, so no byte meets the console's cooked mode (echo,
\\r -> \\n).  Then every byte of stdin comes as it is, except that ESCAPE (NUL) is sent
twice; END_OF_INPUT (ESCAPE, then "E") marks the end of the caller's stdin (the relay
closes the command's pipe, and the command reads end of file); ESCAPE "S" N asks the relay
to send signal N (one byte) to the command.

A NUL-separated list carries any argument byte for byte (spaces, quotes, newlines;
only NUL itself cannot occur in an argv string, so it cannot occur here either) and
takes a few lines of C to read (guests/linux/container-init.c, which also prints what
it read with `container-init --print FILE`, the tests' way to check both ends agree).

Nothing else of the host reaches the guest: the init finds this disk among /dev/vd*
by its magic, and the root disk is the other one.  The answer is read back only after
the VM has stopped, and checked like any other guest output: a malformed or missing
answer is "no exit status", never a number pykvm made up.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pykvm.errors import ConfigError

__all__ = ["RunRequest", "write_run_disk", "read_exit_status", "encode_request", "escape_stdin",
           "signal_message", "STDIN_MODES", "STDIN_READY", "END_OF_INPUT", "MAGIC", "REQUEST_SIZE", "ANSWER_OFFSET", "ANSWER_SIZE", "DISK_SIZE"]

MAGIC = b"pykvm-run 1"
REQUEST_SIZE = 64 << 10             # the request must fit here, terminator included
ANSWER_OFFSET = REQUEST_SIZE        # the init's answer starts here
ANSWER_SIZE = 4 << 10
DISK_SIZE = ANSWER_OFFSET + ANSWER_SIZE
MAX_ID = 2**32 - 2                  # uid/gid: (uid_t)-1 means "unchanged" to setuid(2)
HOSTNAME_MAX = 64                   # HOST_NAME_MAX on Linux
MAX_STRINGS = 4096                  # arguments, and environment entries, each (container-init.c)
MAX_GROUPS = 64                     # supplementary groups (container-init.c)
STDIN_MODES = ("null", "pipe", "tty")
ESCAPE = b"\0"                      # on hvc2: ESCAPE ESCAPE is one NUL byte of input ...
END_OF_INPUT = ESCAPE + b"E"        # ... and this is the end of it
SIGNAL = ESCAPE + b"S"              # then one byte: the signal to send the command
STDIN_READY = b"R"                  # the init's relay, on hvc2: raw mode is set, send


@dataclass
class RunRequest:
    """One command for the guest init, already resolved on the host (numbers, not names)."""

    args: list[str]
    env: list[str] = field(default_factory=list)
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    groups: list[int] = field(default_factory=list)
    hostname: str = "pykvm"
    stdin: str = "null"             # one of STDIN_MODES


def _check(request: RunRequest) -> None:
    """Everything the init will trust, checked here: ConfigError names the bad field."""
    if not request.args or not request.args[0]:
        raise ConfigError("no command to run: the image has no Entrypoint or Cmd, give one after the image")
    strings = request.args + request.env + [request.cwd, request.hostname]
    if any("\0" in s for s in strings):
        raise ConfigError("a NUL byte in the command, environment, working directory or hostname")
    if any("=" not in e for e in request.env):
        raise ConfigError(f"environment entries must be KEY=VALUE: {[e for e in request.env if '=' not in e]}")
    if len(request.args) > MAX_STRINGS or len(request.env) > MAX_STRINGS:
        raise ConfigError(f"{len(request.args)} arguments and {len(request.env)} environment entries: "
                          f"the guest's init takes at most {MAX_STRINGS} of each")
    if len(request.groups) > MAX_GROUPS:
        raise ConfigError(f"{len(request.groups)} supplementary groups: the guest's init takes at most {MAX_GROUPS}")
    if not request.cwd.startswith("/"):
        raise ConfigError(f"working directory {request.cwd!r} is not absolute")
    if request.stdin not in STDIN_MODES:
        raise ConfigError(f"stdin {request.stdin!r}: one of {', '.join(STDIN_MODES)}")
    if not 0 < len(request.hostname) <= HOSTNAME_MAX:
        raise ConfigError(f"hostname {request.hostname!r}: 1 to {HOSTNAME_MAX} characters")
    for name, value in [("uid", request.uid), ("gid", request.gid)] + [("group", g) for g in request.groups]:
        if not 0 <= value <= MAX_ID:
            raise ConfigError(f"{name} {value} is out of range (0-{MAX_ID})")


def encode_request(request: RunRequest) -> bytes:
    """The REQUEST part as bytes (checked first; ConfigError if it does not fit)."""
    _check(request)
    records = [MAGIC]
    records += [b"arg=" + a.encode() for a in request.args]
    records += [b"env=" + e.encode() for e in request.env]
    records += [f"cwd={request.cwd}".encode(), f"uid={request.uid}".encode(),
                f"gid={request.gid}".encode(),
                ("groups=" + ",".join(str(g) for g in request.groups)).encode(),
                f"hostname={request.hostname}".encode(), f"stdin={request.stdin}".encode(), b""]
    data = b"\0".join(records) + b"\0"
    if len(data) > REQUEST_SIZE:
        raise ConfigError(f"command and environment take {len(data)} bytes; the VM's run disk "
                          f"holds {REQUEST_SIZE}")
    return data


def escape_stdin(data: bytes) -> bytes:
    """Caller's stdin bytes as sent on hvc2 with stdin=pipe: each ESCAPE doubled."""
    return data.replace(ESCAPE, ESCAPE + ESCAPE)


def signal_message(signo: int) -> bytes:
    """The bytes on hvc2 that make the guest's relay send signal `signo` to the command."""
    if not 0 < signo < 256:
        raise ConfigError(f"signal {signo} cannot be sent to the guest (1-255)")
    return SIGNAL + bytes([signo])


def write_run_disk(path: Path, request: RunRequest) -> None:
    """A new run disk at `path`: the request, then an empty answer part."""
    data = encode_request(request)
    with open(path, "wb") as f:
        f.write(data.ljust(DISK_SIZE, b"\0"))


def read_exit_status(path: Path) -> int | None:
    """The exit status the init wrote, or None when it wrote none (or nonsense)."""
    with open(path, "rb") as f:
        f.seek(ANSWER_OFFSET)
        answer = f.read(ANSWER_SIZE)
    line, newline, _ = answer.partition(b"\n")
    if not newline or not line.startswith(b"exit="):
        return None
    digits = line[len(b"exit="):]
    if not digits.isdigit() or len(digits) > 3 or int(digits) > 255:
        return None
    return int(digits)
