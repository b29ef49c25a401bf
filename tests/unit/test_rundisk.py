"""The run disk (pykvm/vm/rundisk.py): pykvm's request to the guest's container-init and its answer.

Both ends are checked against each other: the request pykvm writes is read back by the
guest's own parser, guests/linux/container-init.c, compiled here and run with --print
(outside a VM it only parses and prints, one line per field).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pykvm.errors import ConfigError
from pykvm.vm.rundisk import (ANSWER_OFFSET, DISK_SIZE, END_OF_INPUT, REQUEST_SIZE, RunRequest,
                              encode_request, escape_stdin, read_exit_status, signal_message,
                              write_run_disk)

INIT_SOURCE = Path(__file__).resolve().parents[2] / "guests" / "linux" / "container-init.c"


@pytest.fixture(scope="module")
def container_init(tmp_path_factory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build guests/linux/container-init.c")
    program = tmp_path_factory.mktemp("init") / "container-init"
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(program), str(INIT_SOURCE)],
                   check=True)
    return program


def guest_reads(container_init: Path, disk: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(container_init), "--print", str(disk)], capture_output=True, text=True)


def test_the_guest_init_reads_exactly_what_pykvm_wrote(container_init, tmp_path):
    request = RunRequest(args=["/bin/sh", "-c", "echo 'a  b' \"$X\"\nexit 3", ""],
                         env=["PATH=/usr/bin:/bin", "X=with spaces=and equals", "EMPTY="],
                         cwd="/srv/app", uid=1000, gid=100, groups=[10, 4294967294], hostname="box-1",
                         stdin="pipe")
    disk = tmp_path / "run.img"
    write_run_disk(disk, request)
    assert disk.stat().st_size == DISK_SIZE
    proc = guest_reads(container_init, disk)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ("arg /bin/sh\narg -c\narg echo 'a  b' \"$X\"\nexit 3\narg \n"
                           "env PATH=/usr/bin:/bin\nenv X=with spaces=and equals\nenv EMPTY=\n"
                           "cwd /srv/app\nuid 1000\ngid 100\ngroups 10 4294967294\nhostname box-1\nstdin pipe\n")


def test_the_most_the_guest_init_takes(container_init, tmp_path):
    """The limits rundisk.py checks are the guest's: 4096 arguments and 64 groups still parse."""
    disk = tmp_path / "run.img"
    write_run_disk(disk, RunRequest(args=["a"] * 4096, env=["E=1"] * 4096, groups=list(range(64))))
    proc = guest_reads(container_init, disk)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("arg a\n") == 4096 and proc.stdout.count("env E=1\n") == 4096
    assert "groups " + " ".join(str(g) for g in range(64)) + "\n" in proc.stdout


def test_no_groups_and_defaults(container_init, tmp_path):
    disk = tmp_path / "run.img"
    write_run_disk(disk, RunRequest(args=["true"]))
    assert guest_reads(container_init, disk).stdout == \
        "arg true\ncwd /\nuid 0\ngid 0\ngroups\nhostname pykvm\nstdin null\n"


def test_the_guest_init_refuses_a_disk_without_the_magic(container_init, tmp_path):
    disk = tmp_path / "root.img"
    disk.write_bytes(b"\0" * DISK_SIZE)
    proc = guest_reads(container_init, disk)
    assert proc.returncode == 125 and "no run request" in proc.stderr


def test_the_guest_init_refuses_a_bad_number(container_init, tmp_path):
    disk = tmp_path / "run.img"
    write_run_disk(disk, RunRequest(args=["true"], uid=5))
    data = disk.read_bytes().replace(b"uid=5\0", b"uid=x\0")
    disk.write_bytes(data)
    proc = guest_reads(container_init, disk)
    assert proc.returncode == 125 and "bad number in the run disk's field uid" in proc.stderr


def test_the_guest_init_refuses_an_unknown_stdin(container_init, tmp_path):
    disk = tmp_path / "run.img"
    write_run_disk(disk, RunRequest(args=["true"], stdin="tty"))
    disk.write_bytes(disk.read_bytes().replace(b"stdin=tty\0", b"stdin=tt\0\0"))
    proc = guest_reads(container_init, disk)
    assert proc.returncode == 125 and "bad stdin in the run disk" in proc.stderr, proc.stderr


@pytest.mark.parametrize("data", [b"", b"line\n", bytes(range(256)) * 40, b"\0", b"\0E", b"E\0\0E"])
def test_the_guest_relay_gets_back_exactly_the_stdin_pykvm_sent(container_init, data):
    """-i: what pykvm sends on hvc2 (escape_stdin, then END_OF_INPUT), unescaped by the guest
    init's own code; nothing after the end marker gets through (40 reads of 4 KiB cross the
    relay's buffer with escapes in it)."""
    sent = escape_stdin(data) + END_OF_INPUT + b"after the end"
    proc = subprocess.run([str(container_init), "--unescape"], input=sent, capture_output=True)
    assert (proc.returncode, proc.stdout) == (0, data), proc.stderr


def test_the_guest_relay_takes_signals_anywhere_even_after_the_end_of_stdin(container_init):
    """A signal message between two bytes of stdin (even between a NUL's two escapes' worth of
    data) and one after the end of input: each reaches the relay whole; the data is unchanged."""
    sent = (escape_stdin(b"a\0") + signal_message(15) + escape_stdin(b"\0b") + END_OF_INPUT +
            signal_message(9))
    proc = subprocess.run([str(container_init), "--unescape"], input=sent, capture_output=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"a\0\0b", b"signal 15\nsignal 9\n")


@pytest.mark.parametrize("request_, message", [
    (RunRequest(args=[]), "no command to run"),
    (RunRequest(args=[""]), "no command to run"),
    (RunRequest(args=["a\0b"]), "NUL byte"),
    (RunRequest(args=["true"], env=["NOEQUALS"]), "KEY=VALUE"),
    (RunRequest(args=["true"], cwd="relative"), "not absolute"),
    (RunRequest(args=["true"], hostname="h" * 65), "hostname"),
    (RunRequest(args=["true"], uid=-1), "uid -1 is out of range"),
    (RunRequest(args=["true"], groups=[2**32]), "group 4294967296 is out of range"),
    (RunRequest(args=["x" * REQUEST_SIZE]), "holds 65536"),
    (RunRequest(args=["a"] * 4097), "at most 4096 of each"),
    (RunRequest(args=["true"], groups=list(range(65))), "at most 64"),
    (RunRequest(args=["true"], stdin="file"), "stdin 'file': one of null, pipe, tty"),
])
def test_bad_requests_are_one_config_error(request_, message):
    with pytest.raises(ConfigError, match=message):
        encode_request(request_)


def answer_disk(tmp_path: Path, answer: bytes) -> Path:
    disk = tmp_path / "run.img"
    write_run_disk(disk, RunRequest(args=["true"]))
    with open(disk, "r+b") as f:
        f.seek(ANSWER_OFFSET)
        f.write(answer)
    return disk


@pytest.mark.parametrize("answer, status", [
    (b"exit=0\n", 0), (b"exit=1\n", 1), (b"exit=137\n", 137), (b"exit=255\n", 255),
    (b"", None),                       # the init never answered (it failed, or the kernel did)
    (b"exit=256\n", None), (b"exit=-1\n", None), (b"exit=1", None), (b"exit=0001\n", None),
    (b"status=0\n", None), (b"exit=\n", None),
])
def test_exit_status_is_read_back_only_when_well_formed(tmp_path, answer, status):
    assert read_exit_status(answer_disk(tmp_path, answer)) == status
