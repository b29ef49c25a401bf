"""Who the container's process runs as: `-u` / image USER against the image's own
/etc/passwd and /etc/group (passwd(5), group(5)).

Docker's rules (runc's libcontainer/user GetExecUser, which Docker calls):

    -u NAME          uid and gid from NAME's passwd line
    -u UID           the same when a passwd line has that uid, else gid 0
    -u X:GROUP       gid from GROUP (a name in /etc/group, or a number)
    without :GROUP   supplementary groups: every /etc/group line listing the user's name

Every id is then checked to be in runc's range 0-2147483647: (uid_t)-1 =
4294967295 means "leave unchanged" to setresuid(2), so `-u 4294967295` would
otherwise run as whoever we were, root.
"""
from __future__ import annotations

import os
from collections import namedtuple

from pykvm.container.runtime.rootfs import secure_join
from pykvm.container.runtime.validate import check_id
from pykvm.errors import ConfigError

__all__ = ["ExecUser", "resolve_user", "parse_user"]


# Who a process runs as: uid (int), gid (int), groups (list of int).  collections'
# namedtuple, not typing's NamedTuple: `container run` and `exec` would pay ~3 ms to
# import typing for it.
ExecUser = namedtuple("ExecUser", ["uid", "gid", "groups"])


def parse_user(spec: str, rootfs: str | list[str] | None = None) -> tuple[int, int]:
    """`UID[:GID]` or `NAME[:GROUP]` -> (uid, gid); resolve_user says how."""
    return resolve_user(spec, rootfs)[:2]


def resolve_user(spec: str, rootfs: str | list[str] | None = None) -> ExecUser:
    """`UID[:GID]` or `NAME[:GROUP]`, looked up in /etc/passwd and /etc/group of the rootfs
    (or of a list of image layers, top first: the first layer that has the file wins)."""
    if not spec:
        return ExecUser(0, 0, [])
    roots = [rootfs] if isinstance(rootfs, str) else list(rootfs or [])
    user, _, group = spec.partition(":")
    entry = _find(roots, "passwd", user)
    if entry is None and not user.isdigit():
        raise ConfigError(f"unknown user {user!r} (not a number and not in the rootfs's /etc/passwd)")
    name, uid, gid = entry if entry else ("", int(user), 0)
    groups: list[int] = []
    if group:
        found = _find(roots, "group", group)
        if found is None and not group.isdigit():
            raise ConfigError(f"unknown group {group!r} (not a number and not in the rootfs's /etc/group)")
        gid = found[1] if found else int(group)
    elif name:
        groups = _member_of(roots, name)
    check_id(uid, "user id")
    check_id(gid, "group id")
    return ExecUser(uid, gid, groups)


def _db(roots: list[str], db: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of /etc/<db> in the top-most root that has it."""
    for root in roots:
        path = secure_join(root, f"/etc/{db}")
        if os.path.isfile(path):
            with open(path, errors="replace") as f:
                return [(n, line.rstrip("\n").split(":")) for n, line in enumerate(f, 1) if line.strip()]
    return []


def _find(roots: list[str], db: str, key: str) -> tuple[str, int, int] | None:
    """(name, id, gid) of the line whose name is `key`, or (a number) whose id is."""
    for number, fields in _db(roots, db):
        if key not in (fields[0], fields[2] if len(fields) > 2 else None):
            continue
        ids = fields[2:4] if db == "passwd" else fields[2:3] * 2
        if len(ids) == 2 and all(i.isdigit() for i in ids):
            return fields[0], int(ids[0]), int(ids[1])
        if fields[0] == key:        # the image's file, so any text at all: bad input, not a crash
            raise ConfigError(f"/etc/{db} line {number}: bad entry for {key!r}: {':'.join(fields)!r}")
    return None


def _member_of(roots: list[str], name: str) -> list[int]:
    """The gids of the /etc/group lines listing `name` as a member (field 4)."""
    return [int(fields[2]) for _, fields in _db(roots, "group")
            if len(fields) > 3 and fields[2].isdigit() and name in fields[3].split(",")]
