"""The container system calls, one thin Python function each.

Each wraps one call from the cffi module built by `_build.py` (API mode, so
every flag value comes from the C headers).  No policy lives here: a failure
raises SyscallError carrying the call's name and errno, and the caller
decides what it means.

    mount(2), umount2(2), pivot_root(2)      the filesystem tree
    sethostname(2), setdomainname(2)         the UTS namespace
    personality(2), ioprio_set(2)            the command's execution domain and I/O priority
    prctl(2), capset(2)                      process attributes
    keyctl(2)                                the session keyring
"""
from __future__ import annotations

import os

from pykvm.container.runtime._sys_cffi import ffi, lib
from pykvm.errors import SyscallError

__all__ = ["ffi", "lib", "check", "mount", "umount", "pivot_root", "sethostname", "setdomainname",
           "set_personality", "set_io_priority", "prctl",
           "join_session_keyring", "key_permissions", "set_key_permissions"]

KEY_DESCRIPTION_MAX = 4096        # "type;uid;gid;perm;description": the description is at most 4095 bytes


def check(ret: int, syscall: str, detail: str = "") -> int:
    """Raise SyscallError if a C call returned -1 (errno read right after the call)."""
    if ret == -1:
        raise SyscallError(syscall, ffi.errno, detail)
    return ret


def _c(path: str | None):
    """A Python path as a C string argument (NULL for None)."""
    return ffi.NULL if path is None else os.fsencode(path)


def mount(source: str | None, target: str, fstype: str | None = None,
          flags: int = 0, data: str | None = None) -> None:
    """Wraps mount(2)."""
    check(lib.mount(_c(source), _c(target), _c(fstype), flags, _c(data)),
          "mount", f"{fstype or 'bind'} {source} on {target}")


def umount(target: str, flags: int = 0) -> None:
    """Wraps umount2(2)."""
    check(lib.umount2(_c(target), flags), "umount2", target)


def pivot_root(new_root: str, put_old: str) -> None:
    """Wraps pivot_root(2): the mount at new_root becomes "/", the old root moves to put_old."""
    check(lib.sys_pivot_root(_c(new_root), _c(put_old)), "pivot_root", new_root)


def sethostname(name: str) -> None:
    """Wraps sethostname(2) (changes the calling process's UTS namespace only)."""
    raw = name.encode()
    check(lib.sethostname(raw, len(raw)), "sethostname", name)


def setdomainname(name: str) -> None:
    """Wraps setdomainname(2): the NIS domain name of the calling process's UTS namespace."""
    raw = name.encode()
    check(lib.setdomainname(raw, len(raw)), "setdomainname", name)


def set_personality(persona: int) -> None:
    """Wraps personality(2): the execution domain (PER_LINUX32: `uname -m` says i686)."""
    check(lib.personality(persona), "personality", hex(persona))


def set_io_priority(io_class: int, level: int) -> None:
    """Wraps ioprio_set(IOPRIO_WHO_PROCESS, 0, ...): the calling process's I/O class and level."""
    check(lib.sys_ioprio_set(lib.IOPRIO_WHO_PROCESS, 0, io_class << lib.IOPRIO_CLASS_SHIFT | level),
          "ioprio_set", f"class {io_class} level {level}")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """Wraps prctl(2)."""
    return check(lib.prctl5(option, arg2, arg3, arg4, arg5), "prctl", str(option))


def join_session_keyring(name: str) -> int:
    """Wraps keyctl(KEYCTL_JOIN_SESSION_KEYRING, name): join the keyring called `name` if we
    may search it, else make a new one by that name; returns its serial (keyctl(2))."""
    raw = ffi.new("char[]", name.encode())
    return check(lib.sys_keyctl(lib.KEYCTL_JOIN_SESSION_KEYRING, int(ffi.cast("unsigned long", raw)), 0, 0),
                 "keyctl", f"JOIN_SESSION_KEYRING {name}")


def key_permissions(key: int) -> int:
    """The permission mask of a key: field 4 of keyctl(KEYCTL_DESCRIBE) "type;uid;gid;perm;desc"."""
    buf = ffi.new("char[]", KEY_DESCRIPTION_MAX)
    size = check(lib.sys_keyctl(lib.KEYCTL_DESCRIBE, key & 0xFFFFFFFF, int(ffi.cast("unsigned long", buf)),
                                KEY_DESCRIPTION_MAX), "keyctl", f"DESCRIBE {key}")
    return int(ffi.string(buf, size).split(b";")[3], 16)


def set_key_permissions(key: int, perm: int) -> None:
    """Wraps keyctl(KEYCTL_SETPERM)."""
    check(lib.sys_keyctl(lib.KEYCTL_SETPERM, key & 0xFFFFFFFF, perm, 0), "keyctl", f"SETPERM {key}")
