"""An image -> the RunConfig that runs it: Docker's rules, on the image side of the runtime.

The runtime knows no images (docs/layout.md): it runs a RunConfig.  This module is where
an image's config becomes one, for `pykvm container run IMAGE` and for a Dockerfile's
`RUN` step.

The contract with the image store (pykvm.container.image.store)
---------------------------------------------------------
`pykvm container run IMAGE` calls `pykvm.container.image.store.resolve_for_run(name)`,
which returns an object with these attributes:

    layers       list[str]  unpacked layer directories, LOWEST FIRST
    entrypoint   list[str]  image config Entrypoint
    cmd          list[str]  image config Cmd
    env          list[str]  "KEY=VALUE" strings
    working_dir  str        "/" if unset
    user         str        "", "uid", "uid:gid" or a name from the image's /etc/passwd

`config_from_image(image, ...)` turns it into a RunConfig whose `lower_dirs`
are the layers top first (overlayfs's lowerdir order) with a fresh writable
upper layer in the container's state directory.  Image builds call
`run_build_step(rootfs, argv, env, cwd, user) -> int` to run one RUN step with
`rootfs` itself writable.
"""
from __future__ import annotations

from dataclasses import replace

from pykvm.container.runtime import capabilities as caps
from pykvm.container.runtime.config import DEFAULT_ENV, DEFAULT_NAMESPACES, RunConfig, default_caps
from pykvm.container.runtime.launcher import run_container
from pykvm.container.runtime.users import resolve_user

__all__ = ["command_line", "config_from_image", "run_build_step"]


def command_line(entrypoint: list[str], cmd: list[str], args: list[str] | None = None,
                 new_entrypoint: str | None = None) -> list[str]:
    """The argv a container runs: Docker's rules for ENTRYPOINT, CMD, `run --entrypoint`
    and the arguments after the image (moby daemon's merge of user and image config):

        no --entrypoint        ENTRYPOINT + (args or CMD)
        --entrypoint PROG      PROG + args              (the image's CMD is dropped too)
        --entrypoint ""        args or CMD              (no ENTRYPOINT at all)
    """
    args = list(args or [])
    if new_entrypoint is None:
        return list(entrypoint) + (args or list(cmd))
    if new_entrypoint == "":
        return args or list(cmd)
    return [new_entrypoint] + args


def config_from_image(image, args: list[str] | None = None, entrypoint: str | None = None,
                      **overrides) -> RunConfig:
    """A RunConfig for an image from the store (see the contract in this module's docstring);
    `entrypoint`: `run --entrypoint` (command_line says what it replaces)."""
    argv = command_line(image.entrypoint, image.cmd, args, entrypoint)
    top_first = list(reversed(image.layers))
    user = resolve_user(image.user, top_first)
    env = list(image.env) or list(DEFAULT_ENV)
    cfg = RunConfig(args=argv, lower_dirs=top_first, env=env, cwd=image.working_dir or "/",
                    uid=user.uid, gid=user.gid, additional_gids=user.groups, image=getattr(image, "id", ""))
    return replace(cfg, **overrides)


def run_build_step(rootfs: str, argv: list[str], env: list[str] | None = None, cwd: str = "/",
                   user: str = "") -> int:
    """One Dockerfile RUN: `argv` in a container whose root is `rootfs` (kept writable), host
    network, Docker's default capabilities (a Dockerfile may chown, mknod, switch users)."""
    who = resolve_user(user, rootfs)
    namespaces = dict.fromkeys(DEFAULT_NAMESPACES)
    namespaces.pop("network")
    cfg = RunConfig(args=argv, rootfs=rootfs, env=env or list(DEFAULT_ENV), cwd=cwd, uid=who.uid,
                    gid=who.gid, additional_gids=who.groups, namespaces=namespaces, remove=True,
                    capabilities=default_caps(caps.DOCKER_CAPS))
    return run_container(cfg)
