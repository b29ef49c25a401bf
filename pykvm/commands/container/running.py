"""`pykvm container run`, without click: what the command does, and the table that lets
the everyday command line skip click's import.

The command is declared in run.py with click's decorators, which are what `--help` shows
and what a student reads.  Importing click costs as much as the rest of a
`pykvm container run --rm ... true` (pykvm/commands/quickparse.py), so `pykvm`
(pykvm/__main__.py) hands `container run ...` to main() below first: quickparse reads the
command line with OPTIONS, a mirror of run.py's declarations, and run_container() runs
it; what quickparse is not sure of goes to click.
"""
from __future__ import annotations

import os
import sys

from pykvm.commands import quickparse as q

__all__ = ["OPTIONS", "DEFAULTS", "ARGUMENTS", "parse", "run_container", "parse_env", "main"]

# Each spelling -> (parameter, kind, multiple): run.py's @click.option lines, in their order.
OPTIONS = {
    "--rm": ("remove", q.FLAG, False),
    "-d": ("detach", q.FLAG, False), "--detach": ("detach", q.FLAG, False),
    "--name": ("name", q.TEXT, False),
    "--hostname": ("hostname", q.TEXT, False),
    "-e": ("env", q.TEXT, True), "--env": ("env", q.TEXT, True),
    "-w": ("workdir", q.TEXT, False), "--workdir": ("workdir", q.TEXT, False),
    "-u": ("user", q.TEXT, False), "--user": ("user", q.TEXT, False),
    "--memory": ("memory", q.TEXT, False), "-m": ("memory", q.TEXT, False),
    "--pids-limit": ("pids_limit", q.INT, False),
    "--cpus": ("cpus", q.TEXT, False),
    "--network": ("network", q.choice("bridge", "none", "host"), False),
    "-p": ("publish", q.TEXT, True), "--publish": ("publish", q.TEXT, True),
    "--read-only": ("read_only", q.FLAG, False),
    "--cap-add": ("cap_add", q.TEXT, True),
    "--cap-drop": ("cap_drop", q.TEXT, True),
    "-i": ("interactive", q.FLAG, False), "--interactive": ("interactive", q.FLAG, False),
    "-t": ("tty", q.FLAG, False), "--tty": ("tty", q.FLAG, False),
    "--entrypoint": ("entrypoint", q.TEXT, False),
    "--security-opt": ("security_opt", q.TEXT, True),
    "--init": ("use_init", q.FLAG, False),
    "--rootfs": ("rootfs", q.path(file_okay=False), False),
    "--isolation": ("isolation", q.choice("container", "vm"), False),
}
ARGUMENTS = ("args", -1)          # IMAGE [CMD...], or CMD... with --rootfs
# A parameter's value when its option is not given (click's defaults).
DEFAULTS = q.defaults(OPTIONS, isolation="container", args=())


def parse(argv: list[str]) -> dict | None:
    """`container run`'s arguments -> run_container()'s keywords; None: ask click.
    Options come before the image (click's allow_interspersed_args=False): what follows
    it is the container's command."""
    return q.parse(argv, OPTIONS, DEFAULTS, ARGUMENTS, interspersed=False)


def main(argv: list[str]) -> None:
    """`pykvm container run ARGV...` without click, or return: click is needed."""
    params = parse(argv)
    if params is not None:
        q.run(run_container, params)


def parse_env(items: tuple[str, ...]) -> list[str]:
    """-e K=V sets; -e K copies K from our own environment (Docker's rule)."""
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


def run_container(remove, detach, name, hostname, env, workdir, user, memory, pids_limit, cpus,
                  network, publish, read_only, cap_add, cap_drop, interactive, tty, entrypoint,
                  security_opt, use_init, rootfs, isolation, args):
    """Run a command in a new container: IMAGE [CMD...] or --rootfs DIR CMD...
    (run.py's `run` command; the parameters are its options)."""
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
    if network is None:                      # the bridge's module only where it may be needed
        from pykvm.container.runtime.network import default_mode
        network = "none" if isolation == "vm" else default_mode()
    ports = []
    if publish:
        from pykvm.container.runtime.nftables import parse_publish
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
                  env=merge_env(merge_env(daemon_env, cfg.env), parse_env(env)),
                  cwd=workdir or cfg.cwd, uid=who.uid, gid=who.gid, additional_gids=who.groups,
                  limits=limits, namespaces=namespaces,
                  readonly=read_only, interactive=interactive, tty=tty, etc_files=True,
                  network="bridge" if network == "bridge" else "", publish=ports,
                  capabilities=cfg_caps or cfg.capabilities, init=use_init)
    if isolation == "vm":
        from pykvm.commands.container.isolation import run_detached, run_in_vm
        if detach:
            print(run_detached(args[0], cfg, memory, guest, vcpus), flush=True)
            return
        sys.exit(run_in_vm(args[0], cfg, memory, guest, vcpus))
    cfg = replace(cfg, **_security_options(security_opt, cfg.capabilities.get("bounding", [])))
    container = launch(cfg, DETACHED if detach else FOREGROUND)
    if detach:
        print(container.id, flush=True)
        return
    result = container.wait()
    if result.oom_killed:
        print(f"pykvm: container {result.id} was killed by the OOM killer (memory limit {memory})",
              file=sys.stderr)
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
