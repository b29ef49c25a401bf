"""Command lines read without click (pykvm/commands/quickparse.py) are read as click reads
them, or left to click: `pykvm boot` (commands/booting.py mirrors commands/boot.py) and
`pykvm container run` (commands/container/running.py mirrors commands/container/run.py).

Each table must declare exactly what its click command does; if one changes alone, the
first test says which spelling differs.  The corpora and the random command lines then
check the parsing rules themselves: whatever quickparse accepts, click accepts with the
same values, and whatever click refuses, quickparse leaves to it.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import click
import pytest

from pykvm.commands import booting, quickparse as q
from pykvm.commands.boot import boot
from pykvm.commands.container import running
from pykvm.commands.container.run import run_cmd

COMMANDS = {"boot": (boot, booting), "container run": (run_cmd, running)}


def click_kind(option: click.Option):
    """What quickparse calls this click option's kind of value."""
    if option.is_flag:
        return q.FLAG
    if option._flag_needs_value:               # is_flag=False with a flag_value: `--gdb [PORT]`
        return q.OPTIONAL_VALUE
    kind = option.type
    if isinstance(kind, click.Choice):
        return q.choice(*kind.choices)
    if isinstance(kind, click.Path):
        assert not (kind.exists or kind.writable or kind.executable or kind.allow_dash or kind.resolve_path)
        return q.path(kind.file_okay, kind.dir_okay, kind.type or str)     # kind.type: its path_type
    if isinstance(kind, click.FloatRange):
        assert (kind.min, kind.min_open, kind.max) == (0, True, None)
        return q.POSITIVE_FLOAT
    if kind is click.INT:
        return q.INT
    assert kind is click.STRING, option
    return q.TEXT


def click_params(command: click.Command, argv: list[str]) -> dict | None:
    """click's parameters for ARGV, or None where click refuses it."""
    try:
        with command.make_context(command.name, list(argv)) as ctx:
            return dict(ctx.params)
    except (click.UsageError, click.exceptions.Exit):   # a bad command line, or --help
        return None


def assert_alike(command: click.Command, module, argv: list[str]) -> None:
    quick, slow = module.parse(argv), click_params(command, argv)
    if quick is not None:
        assert quick == slow, argv
    if slow is None:
        assert quick is None, argv


@pytest.mark.parametrize("name", COMMANDS)
def test_the_table_declares_what_the_click_command_declares(name):
    command, module = COMMANDS[name]
    declared, arguments = {}, []
    for param in command.params:
        if isinstance(param, click.Option):
            for spelling in param.opts + param.secondary_opts:
                declared[spelling] = (param.name, click_kind(param), param.multiple)
        else:
            arguments.append((param.name, param.nargs))
    assert module.OPTIONS == declared
    assert [module.ARGUMENTS] == arguments
    assert module.DEFAULTS == click_params(command, [])


@pytest.mark.parametrize("name", COMMANDS)
def test_the_function_takes_the_commands_parameters(name):
    import inspect
    command, module = COMMANDS[name]
    function = module.run_container if module is running else module.boot_machine
    assert sorted(inspect.signature(function).parameters) == sorted(p.name for p in command.params)


CORPUS = [
    [], ["busybox"], ["busybox", "echo", "hi"], ["--rm", "busybox", "true"],
    ["-it", "busybox", "sh"], ["-dit", "--name", "web", "busybox"], ["-ti", "--rm", "alpine"],
    ["-e", "A=1", "--env", "B=2", "-eC=3", "--env=D=4", "busybox", "env"],
    ["-ie", "A=1", "busybox"], ["-ieA=1", "busybox"], ["-e"], ["--name"], ["--name", "-x", "img"],
    ["--name=", "img"], ["--rm=true", "img"], ["--rm", "--", "-x", "y"], ["--", "img", "--rm"],
    ["img", "--rm", "-it"], ["-", "x"], ["-1", "img"], ["--pids-limit", "10", "img"],
    ["--pids-limit", "ten", "img"], ["--pids-limit=-3", "img"], ["--pids-limit", " 7 ", "img"],
    ["--network", "none", "img"], ["--network", "None", "img"], ["--network=bridge", "img"],
    ["--isolation", "vm", "img"], ["--isolation", "kvm", "img"], ["-m", "64M", "img"],
    ["--memory=1g", "-mx", "img"], ["-p", "8080:80", "-p8081:81/udp", "img"],
    ["--cap-add", "ALL", "--cap-drop", "NET_RAW", "img"], ["--security-opt", "seccomp=unconfined", "img"],
    ["--init", "--read-only", "-w", "/tmp", "-u", "1:1", "--hostname", "h", "img"],
    ["--entrypoint", "", "img"], ["--cpus", "0.5", "img"], ["--help"], ["-h"], ["--rm", "--help"],
    ["--nope", "img"], ["-z", "img"], ["-dz", "img"], ["--rootfs"], ["--detach=1", "img"],
    ["-d=1", "img"], ["--interactive", "--tty", "--detach", "img"], ["--rm", "--rm", "img"],
    ["--name", "a", "--name", "b", "img"], ["-e=K", "img"], ["--ROOTFS", "/", "true"],
]


@pytest.mark.parametrize("argv", CORPUS, ids=" ".join)
def test_a_run_command_line_is_parsed_as_click_parses_it_or_left_to_click(argv):
    assert_alike(run_cmd, running, argv)


BOOT_CORPUS = [
    [], ["tiny"], ["tiny", "linux"], ["--cmdline", "run=info;poweroff"], ["tiny", "-c", "x", "--mem", "64M"],
    ["-m64M", "tiny"], ["-c", "-x"], ["--mem"], ["--cpus", "2", "tiny"], ["--cpus", "two"], ["--cpus=0"],
    ["--stall-timeout", "2.5"], ["--stall-timeout", "0"], ["--stall-timeout", "-1"], ["--stall-timeout", "x"],
    ["--stall-timeout", "inf"], ["--gdb"], ["--gdb", "1234"], ["--gdb=:1234"], ["--gdb", "tiny"], ["--gdb-wait"],
    ["--format", "raw", "--kernel", "k.bin"], ["--format", "elf"], ["--device", "pc-testdev", "--device",
    "pc-testdev"], ["--device", "pit"], ["--disk", "a.img", "--disk", "b.img,ro", "--rng"],
    ["--console", "virtio"], ["--console", "hvc"], ["--virtio-notify", "exit"], ["--net", "bridge"],
    ["--no-pit", "--trace", "--exit-summary"], ["--trace=1"], ["-k"], ["-kvmlinux", "--initrd", "i.cpio"],
    ["--module", "m.bin,arg", "--module", "n"], ["--", "tiny"], ["--", "-c"], ["tiny", "--", "x"], ["-"],
    ["--help"], ["-h"], ["tiny", "--help"], ["--nope"], ["-x"], ["-ck"], ["-kc"], ["--snapshot-dir", "/tmp"],
    ["--kernel", "/tmp"], ["--initrd=/nonexistent/x"], ["-c", ""], ["--cmdline="],
]


@pytest.mark.parametrize("argv", BOOT_CORPUS, ids=" ".join)
def test_a_boot_command_line_is_parsed_as_click_parses_it_or_left_to_click(argv):
    assert_alike(boot, booting, argv)


def test_path_options_refuse_what_click_refuses(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    for where in (tmp_path, a_file, tmp_path / "missing"):
        assert_alike(run_cmd, running, ["--rootfs", str(where), "true"])
        assert_alike(boot, booting, ["--kernel", str(where)])
        assert_alike(boot, booting, ["--snapshot-dir", str(where)])
    assert running.parse(["--rootfs", str(a_file), "true"]) is None
    assert booting.parse(["--kernel", str(tmp_path)]) is None
    assert booting.parse(["--kernel", str(a_file)])["kernel"] == Path(a_file)


def test_the_everyday_command_lines_skip_click():
    for argv in (["--rm", "busybox", "true"], ["-it", "--rm", "-e", "A=1", "busybox", "sh"],
                 ["-d", "--name", "web", "-p", "8080:80", "nginx"], ["--rootfs", "/", "true"]):
        assert running.parse(argv) is not None, argv
    for argv in ([], ["tiny"], ["--cmdline", "run=info;poweroff"], ["linux", "--disk", "a.img", "--mem", "256M"],
                 ["--gdb=:1234", "--gdb-wait", "tiny"], ["--kernel", "/nonexistent/bzImage", "-c", "console=ttyS0"]):
        assert booting.parse(argv) is not None, argv


RUN_TOKENS = sorted(running.OPTIONS) + ["--", "-", "img", "sh", "A=1", "10", "none", "vm", "-it", "-dit",
                                    "-ite", "-eX=1", "--name=n", "--rm=1", "--network=host", "-x",
                                    "--pids-limit=0", "--help", "=", ""]


BOOT_TOKENS = sorted(booting.OPTIONS) + ["--", "-", "tiny", "linux", "64M", "2", "0", "-1", "1.5", "raw",
                                          "pc-testdev", "virtio", "exit", "-c", "-kx", "-m8M", "--gdb=:1", "=",
                                          "--cpus=3", "--console=hvc", "--help", ""]


@pytest.mark.parametrize("name, tokens", [("container run", RUN_TOKENS), ("boot", BOOT_TOKENS)])
def test_random_command_lines_are_parsed_alike(name, tokens):
    command, module = COMMANDS[name]
    rng = random.Random(20261203)
    for _ in range(1500):
        assert_alike(command, module, [rng.choice(tokens) for _ in range(rng.randint(0, 7))])


WITHOUT_CLICK = ("import atexit, sys\n"
                 "atexit.register(lambda: sys.stderr.write(f\"click imported: {'click' in sys.modules}\\n\"))\n"
                 "sys.argv = ['pykvm'] + sys.argv[1:]\n"
                 "from pykvm.__main__ import run\n"
                 "run()\n")


def pykvm_reporting_click(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`pykvm ARGV` (the console script's entry), saying at exit whether click was imported."""
    return subprocess.run([sys.executable, "-c", WITHOUT_CLICK, *argv], capture_output=True, text=True,
                          timeout=60, env=env)


def test_container_run_does_not_import_click(tmp_path):
    """The quick path end to end, up to an error the command itself reports (no IMAGE)."""
    done = pykvm_reporting_click("container", "run", "--rm", env={**os.environ, "PYKVM_STATE_ROOT": str(tmp_path)})
    assert done.returncode == 2, done
    assert done.stderr.splitlines() == [
        "pykvm: error: give an IMAGE or --rootfs DIR, then the command to run", "click imported: False"]


def test_boot_does_not_import_click():
    """Up to an error boot_machine() reports before any KVM work: more RAM than the host has."""
    done = pykvm_reporting_click("boot", "--mem", "1000000G")
    assert done.returncode == 2, done
    assert done.stderr.splitlines()[-1] == "click imported: False", done.stderr
    assert done.stderr.startswith("pykvm: error: --mem 1000000G: more than this host's"), done.stderr


def test_what_the_quick_path_leaves_to_click_is_said_by_click():
    done = pykvm_reporting_click("boot", "--cpus", "two")
    assert done.returncode == 2, done
    assert done.stderr.splitlines() == [
        "pykvm: error: Invalid value for '--cpus': 'two' is not a valid integer. (see `pykvm boot --help`)",
        "click imported: True"]
