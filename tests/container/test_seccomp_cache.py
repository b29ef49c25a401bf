"""The compiled-filter cache (seccomp_cache.py): a hit is the program a fresh compilation
makes, any change to the key misses, and a damaged or foreign entry is never used."""
from __future__ import annotations

import os
import zlib
from dataclasses import replace

import pytest

from pykvm.container.runtime import seccomp_cache
from pykvm.container.runtime.docker_seccomp import oci_profile
from pykvm.container.runtime.seccomp import compile_filter, parse_profile
from pykvm.container.runtime.seccomp_cache import MAX_ENTRIES, cache_key, cached_compile

DOCKER = parse_profile(oci_profile([]))
SMALL = parse_profile({"defaultAction": "SCMP_ACT_ALLOW",
                       "syscalls": [{"names": ["no_such_call", "uname"], "action": "SCMP_ACT_ERRNO"}]})


def entry(directory, profile):
    return directory / f"{zlib.crc32(cache_key(profile).encode()):08x}"


def test_a_hit_gives_the_program_a_compilation_gives(tmp_path, monkeypatch):
    first = cached_compile(DOCKER, str(tmp_path))
    assert entry(tmp_path, DOCKER).exists()
    compiled = []
    monkeypatch.setattr(seccomp_cache.seccomp, "compile_filter",
                        lambda *a: compiled.append(a) or pytest.fail("compiled again"))
    again = cached_compile(DOCKER, str(tmp_path))
    assert compiled == [] and again == first == compile_filter(DOCKER)


def test_warnings_are_repeated_on_a_hit(tmp_path):
    said = [], []
    for warnings in said:
        cached_compile(SMALL, str(tmp_path), warnings.append)
    assert said[0] == said[1] == ["seccomp: unknown syscall 'no_such_call' skipped (libseccomp does not know it)"]


def test_another_profile_misses(tmp_path):
    cached_compile(SMALL, str(tmp_path))
    other = parse_profile({"defaultAction": "SCMP_ACT_ALLOW",
                           "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5}]})
    assert cached_compile(other, str(tmp_path)) == compile_filter(other)
    assert len(os.listdir(tmp_path)) == 2


def test_the_key_names_the_compiler_and_the_kernel():
    key = cache_key(SMALL)
    assert "libseccomp 2." in key and os.uname().release in key and "seccomp.py " in key
    assert repr(SMALL) in key


@pytest.mark.parametrize("damage", ["truncated", "foreign key", "odd length", "empty", "symlink", "warnings"])
def test_a_bad_entry_is_recompiled_and_replaced(tmp_path, damage):
    good = cached_compile(DOCKER, str(tmp_path))
    path = entry(tmp_path, DOCKER)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "foreign key":          # another profile's entry under this name (a crc32 collision)
        path.write_bytes(cache_key(SMALL).encode() + data[data.index(b"\0"):])
    elif damage == "odd length":
        path.write_bytes(data + b"\x01")
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "warnings":             # the key intact, bytes that are no text after it
        key, _, rest = data.partition(b"\0")
        path.write_bytes(key + b"\0\xff\xfe" + rest)
    else:                                  # a link planted in the cache is not followed
        target = tmp_path / "elsewhere"
        target.write_bytes(data)
        path.unlink()
        path.symlink_to(target)
    assert cached_compile(DOCKER, str(tmp_path)) == good
    assert path.read_bytes() == data and not path.is_symlink()


def test_an_unwritable_cache_only_costs_a_compilation(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert cached_compile(SMALL, str(blocker / "seccomp")) == compile_filter(SMALL)


def test_a_cache_that_cannot_be_refreshed_still_serves_its_entry(tmp_path, monkeypatch):
    """A hit touches the entry (eviction keeps what is used); on a read-only mount that
    fails, and the entry is used all the same."""
    first = cached_compile(SMALL, str(tmp_path))

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")
    monkeypatch.setattr(seccomp_cache.os, "utime", read_only)
    monkeypatch.setattr(seccomp_cache.seccomp, "compile_filter", lambda *a: pytest.fail("compiled again"))
    assert cached_compile(SMALL, str(tmp_path)) == first


def test_no_warning_is_kept_for_a_profile_that_asks_for_none(tmp_path):
    quiet = parse_profile({"defaultAction": "SCMP_ACT_ALLOW",
                           "syscalls": [{"names": ["no_such_call"], "action": "SCMP_ACT_ERRNO"}]})
    quiet = replace(quiet, warn_unknown=False)
    said = []
    cached_compile(quiet, str(tmp_path), said.append)
    cached_compile(quiet, str(tmp_path), said.append)
    assert said == []


def test_the_directories_are_private(tmp_path):
    directory = tmp_path / ".cache" / "seccomp"
    cached_compile(SMALL, str(directory))
    assert (tmp_path / ".cache").stat().st_mode & 0o777 == 0o700
    assert directory.stat().st_mode & 0o777 == 0o700
    assert entry(directory, SMALL).stat().st_mode & 0o777 == 0o600


def test_the_cache_stays_bounded(tmp_path):
    """Past MAX_ENTRIES, the least recently used half goes; a hit counts as a use."""
    def profile(n):
        return parse_profile({"defaultAction": "SCMP_ACT_ALLOW",
                              "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": n}]})
    for n in range(1, MAX_ENTRIES + 1):
        cached_compile(profile(n), str(tmp_path))
    for n in (1, 2):
        os.utime(entry(tmp_path, profile(n)), ns=(1, 1))     # the two oldest ...
    cached_compile(profile(1), str(tmp_path))                # ... but 1 is used again
    assert len(os.listdir(tmp_path)) == MAX_ENTRIES
    cached_compile(profile(MAX_ENTRIES + 1), str(tmp_path))  # one too many
    assert len(os.listdir(tmp_path)) <= MAX_ENTRIES // 2 + 1
    assert entry(tmp_path, profile(1)).exists() and entry(tmp_path, profile(MAX_ENTRIES + 1)).exists()
    assert not entry(tmp_path, profile(2)).exists()
