"""`pykvm container run`, without click: what the command does, and a parser that lets the
everyday command line skip click's import.

The command is declared in run.py with click's decorators, which are what `--help` shows
and what a student reads.  Importing click costs ~25 ms here, as much as the rest of a
`pykvm container run --rm ... true` (Python's start ~9 ms, the launch ~13 ms) and more than
all of `runc run` (~25 ms).  So `pykvm` (pykvm/__main__.py) hands `container run ...` to
main() below first: parse() reads the command line with the table OPTIONS, a mirror of
run.py's declarations, and run_container() runs it.  Anything parse() is not sure of
(--help, an unknown option, a missing or bad value) it leaves to click, which says
what is wrong in its words: the quick path never decides an error, so the two paths
cannot disagree about one.  tests/unit/test_run_argv.py checks that OPTIONS declares
exactly what run.py does and that both parse every command line of a corpus alike.

This is a speed path kept beside the readable one: run.py is the command's definition.
"""
from __future__ import annotations

import os
import sys

__all__ = ["OPTIONS", "DEFAULTS", "parse", "run_container", "parse_env", "main"]

# What an option's value is: FLAG takes none; TEXT one string; MANY one string per
# use, gathered in a tuple; INT an integer; a tuple of strings is click.Choice's list;
# DIRECTORY is click.Path(file_okay=False).
FLAG, TEXT, MANY, INT, DIRECTORY = "flag", "text", "many", "int", "directory"

# Each spelling -> (parameter, kind): run.py's @click.option lines, in their order.
OPTIONS = {
    "--rm": ("remove", FLAG),
    "-d": ("detach", FLAG), "--detach": ("detach", FLAG),
    "--name": ("name", TEXT),
    "--hostname": ("hostname", TEXT),
    "-e": ("env", MANY), "--env": ("env", MANY),
    "-w": ("workdir", TEXT), "--workdir": ("workdir", TEXT),
    "-u": ("user", TEXT), "--user": ("user", TEXT),
    "--memory": ("memory", TEXT), "-m": ("memory", TEXT),
    "--pids-limit": ("pids_limit", INT),
    "--cpus": ("cpus", TEXT),
    "--network": ("network", ("bridge", "none", "host")),
    "-p": ("publish", MANY), "--publish": ("publish", MANY),
    "--read-only": ("read_only", FLAG),
    "--cap-add": ("cap_add", MANY),
    "--cap-drop": ("cap_drop", MANY),
    "-i": ("interactive", FLAG), "--interactive": ("interactive", FLAG),
    "-t": ("tty", FLAG), "--tty": ("tty", FLAG),
    "--entrypoint": ("entrypoint", TEXT),
    "--security-opt": ("security_opt", MANY),
    "--init": ("use_init", FLAG),
    "--rootfs": ("rootfs", DIRECTORY),
    "--isolation": ("isolation", ("container", "vm")),
}
# A parameter's value when its option is not given (click's defaults).
DEFAULTS = {param: (False if kind == FLAG else () if kind == MANY else None)
            for param, kind in OPTIONS.values()} | {"isolation": "container", "args": ()}


def parse(argv: list[str]) -> dict | None:
    """`container run`'s arguments -> run_container()'s keywords, as click would parse them;
    None for anything click should look at itself.

    click's rules for this command: options come before the first argument (the image,
    or the command with --rootfs), and everything from there on is the command's; `--`
    ends the options too.  `--opt VALUE` and `--opt=VALUE`; short flags group (`-it`), and
    a short option that takes a value takes the rest of its group or the next argument
    (`-eK=V`, `-e K=V`, `-ite K=V`).  A value is taken as it is, even one that starts
    with "-" (`--name -x`).
    """
    params = dict(DEFAULTS)
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            break
        if not arg.startswith("-") or arg == "-":
            args.insert(0, arg)
            break
        if arg.startswith("--"):
            name, has_value, value = arg.partition("=")
            if name not in OPTIONS:
                return None
            param, kind = OPTIONS[name]
            if kind == FLAG:
                if has_value:
                    return None                 # click: "does not take a value"
                params[param] = True
                continue
            if not has_value:
                if not args:
                    return None                 # click: "requires an argument"
                value = args.pop(0)
            if not _store(params, param, kind, value):
                return None
            continue
        letters = arg[1:]
        while letters:
            name, letters = "-" + letters[0], letters[1:]
            if name not in OPTIONS:
                return None
            param, kind = OPTIONS[name]
            if kind == FLAG:
                params[param] = True
                continue
            if letters:
                value, letters = letters, ""
            elif args:
                value = args.pop(0)
            else:
                return None
            if not _store(params, param, kind, value):
                return None
    params["args"] = tuple(args)
    return params


def _store(params: dict, param: str, kind, value: str) -> bool:
    """Put one option's value in params, converted as click would; False if click would
    refuse it (click then says why)."""
    if kind == MANY:
        params[param] += (value,)
    elif kind == INT:
        try:
            params[param] = int(value)
        except ValueError:
            return False
    elif isinstance(kind, tuple):
        if value not in kind:
            return False
        params[param] = value
    elif kind == DIRECTORY:
        # click.Path(file_okay=False) refuses an existing file and an unreadable path.
        if os.path.exists(value) and not (os.path.isdir(value) and os.access(value, os.R_OK)):
            return False
        params[param] = value
    else:
        params[param] = value
    return True


def main(argv: list[str]) -> None:
    """`pykvm container run ARGV...` without click, or return: click is needed."""
    from pykvm.commands.fast_exit import error_line, exit_now

    params = parse(argv)
    if params is None:
        return
    try:
        run_container(**params)
        code = 0
    except SystemExit as e:
        code = e.code
    except KeyboardInterrupt:
        print("pykvm: aborted", file=sys.stderr)          # click's path says so (cli.py)
        code = 130
    except Exception as e:
        ending = error_line(e)
        if ending is None:
            raise                   # a bug: its traceback shows where
        line, code = ending
        if line:
            print(line, file=sys.stderr)
    exit_now(code)


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
