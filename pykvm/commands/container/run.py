"""`pykvm container run | ps | logs | stop | kill | rm`: the run side of the CLI.

Docker's habits for the everyday commands; runc's for `oci` live in oci.py.
Imported lazily by pykvm/commands/container/__init__.py.
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


def _parse_env(items: tuple[str, ...]) -> list[str]:
    """-e K=V sets; -e K copies K from our own environment (Docker's rule)."""
    import os
    out = []
    for item in items:
        if "=" in item:
            out.append(item)
        elif item in os.environ:
            out.append(f"{item}={os.environ[item]}")
    return out


def _image_config(image: str, args: list[str], entrypoint: str | None = None):
    """The IMAGE path: ask the image store for layers and config."""
    from pykvm.container.image.runconfig import config_from_image
    from pykvm.container.image.store import resolve_for_run
    return config_from_image(resolve_for_run(image), args, entrypoint)


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
@click.pass_context
def run_cmd(ctx, remove, detach, name, hostname, env, workdir, user, memory, pids_limit, cpus,
            network, publish, read_only, cap_add, cap_drop, interactive, tty, entrypoint, security_opt,
            use_init, rootfs, isolation, args):
    """Run a command in a new container: IMAGE [CMD...] or --rootfs DIR CMD..."""
    from dataclasses import replace

    from pykvm.container.runtime.cgroups import Limits, parse_cpus, parse_size
    from pykvm.container.runtime.config import DEFAULT_PATH, RunConfig, default_caps, merge_env
    from pykvm.container.runtime.launcher import DETACHED, FOREGROUND, launch
    from pykvm.container.runtime.state import new_id
    from pykvm.container.runtime.users import ExecUser, resolve_user
    from pykvm.errors import ConfigError

    args = list(args)
    if isolation == "vm":                    # before anything is resolved or built
        from pykvm.commands.container.isolation import (linux_guest, parse_vcpus, refuse_container_options,
                                                        stdin_mode)
        refuse_container_options({
            "--network host": network == "host", "--network bridge": network == "bridge",
            "--publish": bool(publish), "--pids-limit": pids_limit is not None,
            "--cap-add": bool(cap_add), "--cap-drop": bool(cap_drop), "--security-opt": bool(security_opt),
            "--read-only": read_only, "--rootfs": rootfs is not None,
            "--name": name is not None and not detach, "--detach -i/-t": detach and (interactive or tty),
            "--init": use_init})
        vcpus = parse_vcpus(cpus)
        stdin_mode(interactive, tty)         # -it without a terminal to give: refused here
        guest = linux_guest()
    cfg_caps = None
    if cap_add or cap_drop:                  # checked before anything is created
        from pykvm.container.runtime import capabilities as caps
        cfg_caps = default_caps(caps.adjust(caps.DEFAULT_CAPS, cap_add, cap_drop))
    if hostname is not None:
        from pykvm.container.runtime.namespaces import check_hostname
        check_hostname(hostname)
    if rootfs:
        from pykvm.container.image.runconfig import command_line
        cfg = RunConfig(args=command_line([], [], args, entrypoint), rootfs=rootfs)
    elif args:
        cfg = _image_config(args[0], args[1:], entrypoint)
    else:
        raise ConfigError("give an IMAGE or --rootfs DIR, then the command to run")
    if pids_limit is not None and pids_limit <= 0:
        raise ConfigError(f"bad --pids-limit {pids_limit}: must be at least 1")
    limits = Limits(memory=parse_size(memory) if memory and isolation == "container" else None, pids=pids_limit,
                    cpu_quota=parse_cpus(cpus) if cpus and isolation == "container" else None)
    from pykvm.container.runtime.network import default_mode
    from pykvm.container.runtime.nftables import parse_publish
    network = network or ("none" if isolation == "vm" else default_mode())
    ports = [parse_publish(spec) for spec in publish]
    namespaces = dict(cfg.namespaces)
    if network == "host":
        namespaces.pop("network", None)
    who = resolve_user(user, rootfs or cfg.lower_dirs) if user else \
        ExecUser(cfg.uid, cfg.gid, cfg.additional_gids)
    cid = new_id()
    # Docker's order: its own PATH, HOSTNAME (and TERM), then the image's Env, then -e.
    # HOME comes from the runtime (runc's rule): the user's home in the container's /etc/passwd.
    daemon_env = [DEFAULT_PATH, f"HOSTNAME={hostname or cid[:12]}"] + (["TERM=xterm"] if tty else [])
    cfg = replace(cfg, id=cid, remove=remove, name=name, hostname=hostname,
                  env=merge_env(merge_env(daemon_env, cfg.env), _parse_env(env)),
                  cwd=workdir or cfg.cwd, uid=who.uid, gid=who.gid, additional_gids=who.groups,
                  limits=limits, namespaces=namespaces,
                  readonly=read_only, interactive=interactive, tty=tty, etc_files=True,
                  network="bridge" if network == "bridge" else "", publish=ports,
                  capabilities=cfg_caps or cfg.capabilities, init=use_init)
    if isolation == "vm":
        from pykvm.commands.container.isolation import run_detached, run_in_vm
        if detach:
            click.echo(run_detached(args[0], cfg, memory, guest, vcpus))
            return
        sys.exit(run_in_vm(args[0], cfg, memory, guest, vcpus))
    cfg = replace(cfg, **_security_options(security_opt, cfg.capabilities.get("bounding", [])))
    container = launch(cfg, DETACHED if detach else FOREGROUND)
    if detach:
        click.echo(container.id)
        return
    result = container.wait()
    if result.oom_killed:
        click.echo(f"pykvm: container {result.id} was killed by the OOM killer "
                   f"(memory limit {memory})", err=True)
    sys.exit(result.exit_code)


def _security_options(options: tuple[str, ...], bounding: list[str]) -> dict:
    """--security-opt, Docker's spellings (KEY=VALUE or KEY:VALUE) -> RunConfig fields:
    seccomp (Docker's default profile for this bounding set, unless unconfined or FILE)
    and no_new_privileges."""
    from dataclasses import replace

    from pykvm.container.runtime.docker_seccomp import load_profile_file, oci_profile
    from pykvm.container.runtime.seccomp import parse_profile
    from pykvm.errors import ConfigError
    profile = replace(parse_profile(oci_profile(bounding), "the default seccomp profile"), warn_unknown=False)
    no_new_privileges = True
    for option in options:
        key, _, value = option.partition("=" if "=" in option else ":")
        if key == "seccomp" and value == "unconfined":
            profile = None
        elif key == "seccomp" and value:
            profile = parse_profile(load_profile_file(value, bounding), f"{value}: seccomp")
        elif key == "no-new-privileges" and value in ("", "true", "false"):
            no_new_privileges = value != "false"
        else:
            raise ConfigError(f"--security-opt {option}: want seccomp=unconfined, seccomp=FILE or "
                              f"no-new-privileges[=true|false] (pykvm applies no AppArmor or SELinux)")
    return {"seccomp": profile, "no_new_privileges": no_new_privileges}


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
    from pykvm.container.runtime.exec import exec_config, exec_in
    from pykvm.container.runtime.state import StateStore
    store = StateStore()
    state = store.resolve(container)
    cfg = exec_config(state, list(args), _parse_env(env), workdir, user, tty, interactive)
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
