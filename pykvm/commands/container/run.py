"""`pykvm container run | ps | logs | stop | kill | rm`: the run side of the CLI.

Docker's habits for the everyday commands; runc's for `oci` live in oci.py.
Imported lazily by pykvm/commands/container/group.py; the `run` command's work is in running.py.
"""
from __future__ import annotations

import signal
import sys
import time

import click

__all__ = ["run_cmd", "exec_cmd", "ps_cmd", "logs_cmd", "stop_cmd", "kill_cmd", "rm_cmd", "parse_signal"]


def parse_signal(text: str) -> int:
    """"TERM", "SIGTERM", "15" -> 15; anything else is a ConfigError."""
    from pykvm.errors import ConfigError
    name = text.upper()
    if name.isdigit() and 0 < int(name) < signal.NSIG:
        return int(name)
    if not name.startswith("SIG"):
        name = "SIG" + name
    if isinstance(getattr(signal.Signals, name, None), signal.Signals):
        return int(signal.Signals[name])
    raise ConfigError(f"unknown signal {text!r} (use a name like TERM or KILL, or a number)")


@click.command("run", context_settings={"ignore_unknown_options": False,
                                        "allow_interspersed_args": False})
@click.option("--rm", "remove", is_flag=True, help="Remove the container when it exits.")
@click.option("-d", "--detach", is_flag=True, help="Run in the background; print the container id.")
@click.option("--name", help="A name to refer to the container by.")
@click.option("--hostname", help="Hostname inside (default: the container id).")
@click.option("-e", "--env", multiple=True, metavar="K=V", help="Set an environment variable.")
@click.option("-w", "--workdir", help="Working directory inside the container.")
@click.option("-u", "--user", metavar="UID[:GID]", help="User (and group) to run as.")
@click.option("--memory", "-m", metavar="SIZE", help="Memory limit, e.g. 64M (OOM kill -> exit 137).")
@click.option("--pids-limit", type=int, metavar="N", help="Maximum number of processes.")
@click.option("--cpus", metavar="N", help="CPU quota in CPUs, e.g. 0.5 (--isolation vm: whole vCPUs).")
@click.option("--network", type=click.Choice(["bridge", "none", "host"]), default=None,
              help="bridge: an address on pykvm's bridge (default for root); none: only lo "
                   "(default rootless, or $PYKVM_NETWORK); host: the host's network.")
@click.option("-p", "--publish", multiple=True, metavar="HOSTPORT:PORT[/tcp|udp]",
              help="Publish a container port on the host (DNAT; needs --network bridge).")
@click.option("--read-only", is_flag=True, help="Mount the root filesystem read-only.")
@click.option("--cap-add", multiple=True, metavar="CAP", help="Add a capability (e.g. NET_ADMIN; ALL: every one).")
@click.option("--cap-drop", multiple=True, metavar="CAP", help="Drop a capability (ALL: start from none).")
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open.")
@click.option("-t", "--tty", is_flag=True, help="Give the container a terminal.")
@click.option("--entrypoint", metavar="PROG", help="Run PROG instead of the image's ENTRYPOINT (and "
              "without its CMD); \"\" clears the ENTRYPOINT.")
@click.option("--security-opt", multiple=True, metavar="OPT",
              help="seccomp=unconfined (no filter), seccomp=FILE (a profile instead of Docker's "
                   "default), no-new-privileges[=true|false] (default true).")
@click.option("--init", "use_init", is_flag=True,
              help="Run pykvm-init as PID 1, forwarding signals and reaping zombies (the command "
                   "is PID 1 otherwise, as with Docker).")
@click.option("--rootfs", type=click.Path(file_okay=False), help="Run this directory instead of an image.")
@click.option("--isolation", type=click.Choice(["container", "vm"]), default="container", show_default=True,
              help="container: namespaces and cgroups on this host's kernel; vm: the image's root "
                   "disk booted by its own Linux kernel (make linux-guest), --memory is its RAM.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run_cmd(**params):
    """Run a command in a new container: IMAGE [CMD...] or --rootfs DIR CMD..."""
    # The work is in running.py, without click: `pykvm container run` is parsed there
    # first, and reaches this function only when click has to look at the command line.
    from pykvm.commands.container.running import run_container
    run_container(**params)


@click.command("exec", context_settings={"allow_interspersed_args": False})
@click.option("-d", "--detach", is_flag=True, help="Run the command in the background (output discarded).")
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open.")
@click.option("-t", "--tty", is_flag=True, help="Give the command a terminal (a pty from the container's devpts).")
@click.option("-e", "--env", multiple=True, metavar="K=V", help="Set an environment variable.")
@click.option("-w", "--workdir", help="Working directory inside the container.")
@click.option("-u", "--user", metavar="UID[:GID]", help="User (and group) to run as.")
@click.argument("container")
@click.argument("args", nargs=-1, required=True, type=click.UNPROCESSED, metavar="COMMAND...")
def exec_cmd(detach, interactive, tty, env, workdir, user, container, args):
    """Run a command in a running container (its namespaces, cgroups and settings)."""
    from pykvm.commands.container.running import parse_env
    from pykvm.container.runtime.exec import exec_config, exec_in
    from pykvm.container.runtime.state import StateStore
    store = StateStore()
    state = store.resolve(container)
    cfg = exec_config(state, list(args), parse_env(env), workdir, user, tty, interactive)
    sys.exit(exec_in(state.id, cfg, store, detach))


def _status_line(store, state) -> str:
    status = store.status(state)
    if status == "stopped":
        info = store.exit_info(state.id)
        status = f"exited ({info['exit_code']})" if info else "stopped"
        if info and info.get("oom_killed"):
            status += " OOM"
    return status


@click.command("ps")
@click.option("-a", "--all", "show_all", is_flag=True, help="Also show stopped containers.")
@click.option("-q", "--quiet", is_flag=True, help="Only print ids.")
def ps_cmd(show_all, quiet):
    """List containers (running ones; -a for all)."""
    from pykvm.container.runtime.state import StateStore
    store = StateStore()
    rows = [s for s in store.list() if show_all or store.status(s) != "stopped"]
    if quiet:
        for s in rows:
            click.echo(s.id)
        return
    click.echo(f"{'CONTAINER ID':<14}{'NAME':<20}{'STATUS':<16}{'ISOLATION':<11}{'PID':>8}  COMMAND")
    for s in rows:
        age = time.strftime("%H:%M:%S", time.localtime(s.created))
        click.echo(f"{s.id:<14}{s.name[:19]:<20}{_status_line(store, s):<16}{s.isolation:<11}{s.pid:>8}  "
                   f"{' '.join(s.command)[:40]}  (created {age})")


@click.command("logs")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the container exits.")
@click.option("-n", "--tail", "tail", default="all", show_default=True, metavar="N",
              help="Only the last N lines.")
@click.argument("container")
def logs_cmd(follow, tail, container):
    """Print the output of a detached container."""
    from pykvm.container.runtime.logs import copy_log, parse_tail
    from pykvm.container.runtime.state import StateStore
    lines = parse_tail(tail)
    store = StateStore()
    copy_log(store, store.resolve(container), sys.stdout.fileno(), lines, follow)


@click.command("stop")
@click.option("-t", "--time", "timeout", type=float, default=10.0, show_default=True,
              help="Seconds to wait after SIGTERM before SIGKILL.")
@click.argument("containers", nargs=-1, required=True)
def stop_cmd(timeout, containers):
    """Stop containers: SIGTERM, then SIGKILL after a grace period."""
    from pykvm.container.runtime.lifecycle import stop_container
    for ref in containers:
        click.echo(stop_container(ref, timeout).id)


@click.command("kill")
@click.option("-s", "--signal", "sig", default="KILL", show_default=True, help="Signal to send.")
@click.argument("containers", nargs=-1, required=True)
def kill_cmd(sig, containers):
    """Send a signal to containers (default SIGKILL, like Docker)."""
    from pykvm.container.runtime.lifecycle import kill_container
    signo = parse_signal(sig)
    for ref in containers:
        click.echo(kill_container(ref, signo).id)


@click.command("rm")
@click.option("-f", "--force", is_flag=True, help="Kill the container first if it is running.")
@click.argument("containers", nargs=-1, required=True)
def rm_cmd(force, containers):
    """Remove stopped containers (their state and cgroups)."""
    from pykvm.container.runtime.lifecycle import remove_container
    for ref in containers:
        click.echo(remove_container(ref, force).id)
