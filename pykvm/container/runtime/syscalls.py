"""The container system calls, one thin Python function each.

Each wraps one call from the cffi module built by `_build.py` (API mode, so
every flag value comes from the C headers).  No policy lives here: a failure
raises SyscallError carrying the call's name and errno, and the caller
decides what it means.

    mount(2), umount2(2), pivot_root(2)      the filesystem tree
    sethostname(2)                           the UTS namespace
    prctl(2), capset(2)                      process attributes
"""
from __future__ import annotations

import os

from pykvm.container.runtime._sys_cffi import ffi, lib
from pykvm.errors import SyscallError

__all__ = ["ffi", "lib", "check", "mount", "umount", "pivot_root", "sethostname", "prctl"]


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


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """Wraps prctl(2)."""
    return check(lib.prctl5(option, arg2, arg3, arg4, arg5), "prctl", str(option))
