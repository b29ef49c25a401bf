"""Compiled seccomp filters, kept for the next container with the same profile.

An engine gives nearly every container the same profile (Podman's and Docker's default:
about 430 names), and compiling it is the most expensive step of a `create` that pykvm
controls: ~430 libseccomp rules, the BPF export, and the -ENOSYS stub's name lookups for
each architecture, ~12 ms of a ~90 ms call.  crun keeps compiled filters under its state
directory (.cache/seccomp, named by a checksum of the profile); pykvm does the same:

    <state root>/.cache/seccomp/<crc32 of the key>      mode 0600, in a 0700 directory

An entry holds its whole key, then the warnings the compilation printed, then the
program.  The key is everything the program depends on: the profile (every field, as
repr() writes the frozen Profile), the libseccomp that compiled it (its version and the
kernel API level it detected), the kernel, and seccomp.py itself (size and mtime: a
changed compiler must not reuse old programs).  A lookup compares the stored key with
the whole new one, so two profiles whose checksums collide only cost a compilation.
Anything unreadable, short or odd is a miss; a failure to write is ignored: the cache
makes `create` faster, never different.
"""
from __future__ import annotations

import os
import zlib

from pykvm.container.runtime import seccomp
from pykvm.container.runtime.seccomp import MAX_INSNS, SOCK_FILTER, Filter, Profile

__all__ = ["cached_compile", "cache_key", "MAX_ENTRIES", "FORMAT"]

FORMAT = "pykvm seccomp cache 1"     # this file's layout; a new layout misses every old entry
MAX_ENTRIES = 64                     # beyond this many, the least recently used half goes
SEPARATOR = b"\0"                    # between key, warnings and program (neither text holds NUL)


def cached_compile(profile: Profile, directory: str, warn=None) -> Filter:
    """seccomp.compile_filter(profile, warn), from `directory` when it was compiled
    before with the same key; the warnings are repeated either way."""
    key = cache_key(profile).encode()
    path = os.path.join(directory, f"{zlib.crc32(key):08x}")
    found = _read(path, key)
    if found is None:
        warnings: list[str] = []
        compiled = seccomp.compile_filter(profile, warnings.append)
        _write(directory, path, key, warnings, compiled.program)
    else:
        warnings, program = found
        compiled = Filter(program, seccomp.kernel_flags(profile.flags))
    if warn is not None:             # none were kept for a profile with warn_unknown off
        for message in warnings:
            warn(message)
    return compiled


def cache_key(profile: Profile) -> str:
    lib = seccomp.libseccomp().lib
    version = lib.seccomp_version()
    source = os.stat(seccomp.__file__)
    kernel = os.uname()
    return "\n".join([
        FORMAT,
        f"seccomp.py {source.st_size} {source.st_mtime_ns}",
        f"libseccomp {version.major}.{version.minor}.{version.micro} api {lib.seccomp_api_get()}",
        f"kernel {kernel.release} {kernel.version} {kernel.machine}",
        repr(profile)])


def _read(path: str, key: bytes) -> tuple[list[str], bytes] | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            data = f.read()
    except OSError:
        return None
    stored_key, _, rest = data.partition(SEPARATOR)
    if stored_key != key or not rest:
        return None
    warnings, _, program = rest.partition(SEPARATOR)
    insns, odd = divmod(len(program), SOCK_FILTER.size)
    if odd or not 0 < insns <= MAX_INSNS:
        return None
    try:
        messages = [w for w in warnings.decode().split("\n") if w]
    except UnicodeDecodeError:
        return None
    try:
        os.utime(path)               # recently used: eviction keeps it
    except OSError:                  # a read-only cache still serves its entries
        pass
    return messages, program


def _write(directory: str, path: str, key: bytes, warnings: list[str], program: bytes) -> None:
    """Atomically (a reader sees the old entry or the new one), and never an error."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        for level in (os.path.dirname(directory), directory):      # .cache, then .cache/seccomp
            os.makedirs(level, mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(SEPARATOR.join([key, "\n".join(warnings).encode(), program]))
        os.replace(tmp, path)
        _evict(directory)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _evict(directory: str) -> None:
    """More than MAX_ENTRIES: remove the least recently used half (by mtime, which a
    hit refreshes)."""
    entries = [e for e in os.scandir(directory) if e.is_file(follow_symlinks=False)]
    if len(entries) <= MAX_ENTRIES:
        return
    entries.sort(key=lambda e: e.stat(follow_symlinks=False).st_mtime_ns)
    for entry in entries[:len(entries) // 2]:
        try:
            os.unlink(entry.path)
        except OSError:
            pass
