"""`pykvm container oci create | start | state | kill | delete | run`: runc's spelling.

The OCI runtime spec's operations on a bundle (runtime-spec runtime.md
"Operations").  A module of its own, apart from run.py's Docker-style
commands, so that `oci run` (what the launch benchmark times) makes click build
only these few commands.  Imported lazily by pykvm/commands/container/group.py.
"""
from __future__ import annotations

import json
import sys

import click

__all__ = ["oci_cmd"]


# --- OCI runtime operations (runtime-spec runtime.md "Operations"), runc's spelling -------

@click.group("oci")
def oci_cmd():
    """OCI runtime operations on a bundle: create, start, state, kill, delete (and run)."""


_bundle_option = click.option("-b", "--bundle", default=".", show_default=True,
                              type=click.Path(file_okay=False, exists=True),
                              help="Bundle directory (config.json + rootfs).")


_isolation_option = click.option(
    "--isolation", metavar="container|vm",
    help="Run the bundle as a container (the host's kernel) or in a Linux VM; without it, config.json's "
         "org.pykvm.isolation annotation decides, else container.")


_keyring_option = click.option("--no-new-keyring", is_flag=True,
                               help="Keep the caller's session keyring instead of a new one (as runc).")


@oci_cmd.command("create")
@_bundle_option
@click.option("--console-socket", type=click.Path(dir_okay=False), metavar="PATH",
              help="With process.terminal: send the pty master to this unix socket (as runc).")
@_keyring_option
@_isolation_option
@click.argument("container_id")
def oci_create_cmd(bundle, console_socket, no_new_keyring, isolation, container_id):
    """Create a container from a bundle; it waits for `start`."""
    from pykvm.container.runtime.bundle import bundle_isolation
    if bundle_isolation(bundle, isolation) == "vm":
        from pykvm.commands.container.oci_vm import oci_create_vm
        oci_create_vm(container_id, bundle)
        return
    from pykvm.container.runtime.lifecycle import oci_create
    oci_create(container_id, bundle, console_socket=console_socket, new_keyring=not no_new_keyring)


@oci_cmd.command("start")
@click.argument("container_id")
def oci_start_cmd(container_id):
    """Run the user process of a created container."""
    from pykvm.container.runtime.lifecycle import oci_start
    oci_start(container_id)


@oci_cmd.command("state")
@click.argument("container_id")
def oci_state_cmd(container_id):
    """Print the container's state JSON (runtime.md "State")."""
    from pykvm.container.runtime.state import StateStore
    store = StateStore()
    click.echo(json.dumps(store.oci_state(store.resolve(container_id)), indent=2))


@oci_cmd.command("kill")
@click.argument("container_id")
@click.argument("sig", default="TERM")
def oci_kill_cmd(container_id, sig):
    """Send a signal (default TERM) to the container's process."""
    from pykvm.commands.container.run import parse_signal
    from pykvm.container.runtime.lifecycle import kill_container
    kill_container(container_id, parse_signal(sig))


@oci_cmd.command("delete")
@click.option("-f", "--force", is_flag=True, help="Kill the container first if it is running.")
@click.argument("container_id")
def oci_delete_cmd(force, container_id):
    """Delete a stopped container's resources."""
    from pykvm.container.runtime.lifecycle import remove_container
    remove_container(container_id, force)


@oci_cmd.command("run")
@_bundle_option
@_keyring_option
@_isolation_option
@click.argument("container_id")
@click.pass_context
def oci_run_cmd(ctx, bundle, no_new_keyring, isolation, container_id):
    """Create, start and wait for a container, then delete it (like `runc run`)."""
    from pykvm.container.runtime.bundle import bundle_isolation
    if bundle_isolation(bundle, isolation) == "vm":
        from pykvm.commands.container.oci_vm import oci_run_vm
        sys.exit(oci_run_vm(container_id, bundle))
    from pykvm.container.runtime.lifecycle import oci_run
    sys.exit(oci_run(container_id, bundle, new_keyring=not no_new_keyring).exit_code)
