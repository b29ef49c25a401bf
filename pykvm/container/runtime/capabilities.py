"""Capabilities: the pieces of root's power a container process keeps.

capabilities(7): root's privileges are split into ~41 capabilities, and each
process has five sets of them.  A container keeps only a few; runc's default
(`runc spec`) is CAP_AUDIT_WRITE, CAP_KILL and CAP_NET_BIND_SERVICE.

    bounding     the most the process (and anything it execs) can ever regain
    permitted    what it may switch on
    effective    what the kernel checks right now
    inheritable  what passes through execve() to a file with matching bits
    ambient      what passes through execve() to any file (for non-root users)

Order matters (runc's libcontainer/capabilities): drop from the bounding set
first (that needs CAP_SETPCAP, which we still have), change user, then set
permitted/effective/inheritable with capset(2), then raise ambient ones.
"""
from __future__ import annotations

from pykvm.container.runtime.syscalls import check, ffi, lib, prctl
from pykvm.errors import ConfigError

__all__ = ["DEFAULT_CAPS", "DOCKER_CAPS", "ALL_CAPS", "cap_numbers", "adjust", "bounding_set", "drop_bounding",
           "set_caps", "read_caps"]

ALL_CAPS = {name: getattr(lib, name) for name in dir(lib)
            if name.startswith("CAP_") and name != "CAP_LAST_CAP"}
DEFAULT_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
# Docker's default set (moby oci/caps/defaults.go), what `docker build` RUN steps get:
# enough for package managers and Dockerfiles to chown, mknod and switch users.
DOCKER_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
               "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
               "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]


def cap_numbers(names) -> set[int]:
    """Capability names ("CAP_KILL" or "kill") -> numbers; an unknown name is a ConfigError."""
    out = set()
    for name in names or ():
        key = name.upper() if name.upper().startswith("CAP_") else "CAP_" + name.upper()
        if key not in ALL_CAPS:
            raise ConfigError(f"unknown capability {name!r}")
        out.add(ALL_CAPS[key])
    return out


def adjust(base: list[str], add=(), drop=()) -> list[str]:
    """`--cap-add` / `--cap-drop` on a set of names, as Docker applies them (moby
    oci/caps TweakCapabilities): ALL in add means every capability we can hand on
    (those in our own bounding set: a sandbox's root may lack some), ALL in drop
    means none of `base`; then the other drops, then the other adds.  Names may omit
    CAP_ and be any case; an unknown one is a ConfigError naming its option."""
    def normal(names, option):
        out = []
        for name in names:
            key = name.upper() if name.upper().startswith("CAP_") else "CAP_" + name.upper()
            if key != "CAP_ALL" and key not in ALL_CAPS:
                raise ConfigError(f"{option} {name}: unknown capability (capabilities(7) names "
                                  "them, e.g. CHOWN, NET_ADMIN, SYS_PTRACE)")
            out.append(key)
        return out
    add, drop = normal(add, "--cap-add"), normal(drop, "--cap-drop")
    if "CAP_ALL" in add:
        ours = bounding_set()
        return sorted(name for name, number in ALL_CAPS.items() if number in ours and name not in drop)
    kept = [] if "CAP_ALL" in drop else [c for c in base if c not in drop]
    return kept + [c for c in add if c not in kept]


def bounding_set() -> set[int]:
    """This process's bounding set (CapBnd in /proc/self/status, proc(5))."""
    with open("/proc/self/status") as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("CapBnd:"))
    return {cap for cap in range(64) if mask >> cap & 1}


def drop_bounding(keep: set[int]) -> None:
    """PR_CAPBSET_DROP every capability this kernel knows that is not in `keep`."""
    last = _last_cap()
    for cap in range(last + 1):
        if cap not in keep:
            prctl(lib.PR_CAPBSET_DROP, cap)


def set_caps(effective: set[int], permitted: set[int], inheritable: set[int],
             ambient: set[int] = frozenset()) -> None:
    """capset(2) with 64-bit masks (_LINUX_CAPABILITY_VERSION_3: two 32-bit words), then ambient."""
    hdr = ffi.new("struct __user_cap_header_struct *")
    hdr.version = lib._LINUX_CAPABILITY_VERSION_3
    data = ffi.new("struct __user_cap_data_struct[]", lib._LINUX_CAPABILITY_U32S_3)
    for word in range(lib._LINUX_CAPABILITY_U32S_3):
        data[word].effective = _word(effective, word)
        data[word].permitted = _word(permitted, word)
        data[word].inheritable = _word(inheritable, word)
    check(lib.sys_capset(hdr, data), "capset")
    prctl(lib.PR_CAP_AMBIENT, lib.PR_CAP_AMBIENT_CLEAR_ALL)
    # An ambient capability must also be permitted and inheritable (capabilities(7));
    # runc skips the others with a warning, and so do we, silently.
    for cap in sorted(ambient & permitted & inheritable):
        prctl(lib.PR_CAP_AMBIENT, lib.PR_CAP_AMBIENT_RAISE, cap)


def read_caps() -> dict[str, int]:
    """capget(2) of this process: {'effective': mask, 'permitted': mask, 'inheritable': mask}."""
    hdr = ffi.new("struct __user_cap_header_struct *")
    hdr.version = lib._LINUX_CAPABILITY_VERSION_3
    data = ffi.new("struct __user_cap_data_struct[]", lib._LINUX_CAPABILITY_U32S_3)
    check(lib.sys_capget(hdr, data), "capget")
    return {k: sum(getattr(data[w], k) << (32 * w) for w in range(lib._LINUX_CAPABILITY_U32S_3))
            for k in ("effective", "permitted", "inheritable")}


def _word(caps: set[int], word: int) -> int:
    return sum(1 << (c - 32 * word) for c in caps if 32 * word <= c < 32 * (word + 1))


def _last_cap() -> int:
    """The highest capability this kernel knows (may exceed our header's CAP_LAST_CAP)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return lib.CAP_LAST_CAP
