"""`pykvm container ...`: Docker's habits, lazily imported.

The run-side commands (run, exec, ps, logs, stop, kill, rm) live in
pykvm.commands.container.run, runc's `oci` operations in pykvm.commands.container.oci,
the image-side commands (build, images, inspect, rmi, tag, save, load, push,
pull, login, logout) in pykvm.commands.container.image, the bridge network's
(network ls, rm, prune) in pykvm.commands.container.network, `system check` in
pykvm.commands.container.system.
"""
from __future__ import annotations

import click

from pykvm.commands.lazy import LazyGroup

__all__ = ["container"]

RUN_SIDE = "pykvm.commands.container.run"
IMAGE_SIDE = "pykvm.commands.container.image"

CONTAINER_COMMANDS = {
    **{name: f"{RUN_SIDE}:{name}_cmd" for name in ("run", "exec", "ps", "logs", "stop", "kill", "rm")},
    "oci": "pykvm.commands.container.oci:oci_cmd",
    "network": "pykvm.commands.container.network:network_cmd",
    "system": "pykvm.commands.container.system:system_cmd",
    **{name: f"{IMAGE_SIDE}:{name}_cmd" for name in
       ("build", "images", "inspect", "rmi", "tag", "save", "load", "push", "pull", "login", "logout")},
}


@click.group(cls=LazyGroup, lazy=CONTAINER_COMMANDS)
def container():
    """Describe, package, share and run containers (Dockerfile -> OCI image -> registry -> run)."""
