"""`pykvm container run` parsed without click (commands/container/running.py) is parsed as
click parses it (commands/container/run.py), or left to click.

running.OPTIONS mirrors run.py's @click.option lines; if one changes alone, the first test
says which spelling differs.  The corpus and the random command lines then check the
parsing rules themselves: whatever parse() accepts, click accepts with the same values,
and whatever click refuses, parse() leaves to it.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys

import click
import pytest

from pykvm.commands.container import running
from pykvm.commands.container.run import run_cmd


def click_kind(option: click.Option):
    """What running.OPTIONS calls this click option's kind of value."""
    if option.is_flag:
        return running.FLAG
    if option.multiple:
        return running.MANY
    if isinstance(option.type, click.Choice):
        return tuple(option.type.choices)
    if isinstance(option.type, click.Path):
        assert not option.type.file_okay and not option.type.exists   # what DIRECTORY checks
        return running.DIRECTORY
    if option.type is click.INT:
        return running.INT
    assert option.type is click.STRING, option
    return running.TEXT


def click_params(argv: list[str]) -> dict | None:
    """click's parameters for `container run ARGV`, or None where click refuses it."""
    try:
        with run_cmd.make_context("run", list(argv)) as ctx:
            return dict(ctx.params)
    except (click.UsageError, click.exceptions.Exit):   # a bad command line, or --help
        return None


def test_the_table_declares_what_run_py_declares():
    declared = {}
    for param in run_cmd.params:
        if isinstance(param, click.Option):
            for spelling in param.opts + param.secondary_opts:
                declared[spelling] = (param.name, click_kind(param))
    assert running.OPTIONS == declared
    assert running.DEFAULTS == {**click_params(["image"]), "args": ()}


def test_run_container_takes_the_commands_parameters():
    import inspect
    names = list(inspect.signature(running.run_container).parameters)
    assert names == [p.name for p in run_cmd.params]


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
def test_a_command_line_is_parsed_as_click_parses_it_or_left_to_click(argv):
    quick = running.parse(argv)
    if quick is not None:
        assert quick == click_params(argv)
    if click_params(argv) is None:
        assert quick is None


def test_the_everyday_command_lines_skip_click():
    for argv in (["--rm", "busybox", "true"], ["-it", "--rm", "-e", "A=1", "busybox", "sh"],
                 ["-d", "--name", "web", "-p", "8080:80", "nginx"], ["--rootfs", "/", "true"]):
        assert running.parse(argv) is not None, argv


def test_rootfs_must_not_be_a_file_or_unreadable_as_click_says(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    for where in (tmp_path, a_file, tmp_path / "missing"):
        argv = ["--rootfs", str(where), "true"]
        quick, slow = running.parse(argv), click_params(argv)
        assert quick == slow or (quick is None and slow is None), where
    assert running.parse(["--rootfs", str(a_file), "true"]) is None


TOKENS = sorted(running.OPTIONS) + ["--", "-", "img", "sh", "A=1", "10", "none", "vm", "-it", "-dit",
                                    "-ite", "-eX=1", "--name=n", "--rm=1", "--network=host", "-x",
                                    "--pids-limit=0", "--help", "=", ""]


def test_random_command_lines_are_parsed_alike():
    rng = random.Random(20261203)
    for _ in range(1500):
        argv = [rng.choice(TOKENS) for _ in range(rng.randint(0, 7))]
        quick, slow = running.parse(argv), click_params(argv)
        if quick is not None:
            assert quick == slow, argv
        if slow is None:
            assert quick is None, argv


def test_container_run_does_not_import_click(tmp_path):
    """The quick path end to end, up to an error the command itself reports (no IMAGE)."""
    code = ("import atexit, sys\n"
            "atexit.register(lambda: sys.stderr.write(f\"click imported: {'click' in sys.modules}\\n\"))\n"
            "sys.argv = ['pykvm', 'container', 'run', '--rm']\n"
            "from pykvm.__main__ import run\n"
            "run()\n")
    env = {**os.environ, "PYKVM_STATE_ROOT": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2, done
    assert done.stderr.splitlines() == [
        "pykvm: error: give an IMAGE or --rootfs DIR, then the command to run", "click imported: False"]
