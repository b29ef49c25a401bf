"""pykvm-runc's command line (no container is started here): runc's parsing, its version,
its error reports, features; and that it starts without click."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pykvm.commands.runc import COMMANDS, RuncError, parse_args, parse_signal, rfc3339

PYKVM_RUNC = Path(sys.executable).with_name("pykvm-runc")
RUNC = shutil.which("runc")


def runtime(*args, program=PYKVM_RUNC) -> subprocess.CompletedProcess:
    if not Path(program).exists():
        pytest.skip(f"{program} is missing: `make venv` installs it")
    return subprocess.run([str(program), *map(str, args)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args, expected", [
    (["--bundle", "/b", "--pid-file=/p", "c1"], ({"bundle": "/b", "pid-file": "/p"}, ["c1"])),
    (["-b", "/b", "--no-pivot", "c1"], ({"bundle": "/b", "no-pivot": True}, ["c1"])),
    (["-bundle", "/b", "--", "-c1"], ({"bundle": "/b"}, ["-c1"])),
    (["--no-new-keyring=false", "c1"], ({"no-new-keyring": False}, ["c1"])),
])
def test_options_are_read_as_runc_reads_them(args, expected):
    assert parse_args(args, COMMANDS["create"]) == expected


def test_an_unknown_option_or_a_missing_value_is_refused():
    with pytest.raises(RuncError, match="flag provided but not defined: -nope"):
        parse_args(["--nope", "c1"], COMMANDS["create"])
    with pytest.raises(RuncError, match="flag needs an argument: -bundle"):
        parse_args(["--bundle"], COMMANDS["create"])


@pytest.mark.parametrize("text", ["KILL", "SIGKILL", "kill", "9"])
def test_signals_by_name_or_number(text):
    assert parse_signal(text) == 9


@pytest.mark.parametrize("text", ["NOPE", "0", "999", "-1"])
def test_bad_signals_are_refused(text):
    with pytest.raises(RuncError, match="unknown signal"):
        parse_signal(text)


def test_created_is_go_rfc3339nano():
    assert rfc3339(1.5) == "1970-01-01T00:00:01.5Z"
    assert rfc3339(86400) == "1970-01-02T00:00:00Z"


def test_version_is_three_lines_that_go_runc_parses():
    r = runtime("--version")
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == 3, r.stdout
    assert lines[0].startswith("runc version ") and "pykvm" in lines[0]
    assert lines[1].startswith("commit: ") and lines[2] == "spec: 1.0.2"


def test_missing_container_in_runcs_words_text_log(tmp_path):
    r = runtime("--root", tmp_path, "state", "nope")
    assert r.returncode == 1
    assert r.stderr.endswith(' level=error msg="container does not exist"\n'), r.stderr
    assert r.stderr.startswith('time="') and r.stderr.count("\n") == 1


def test_missing_container_json_log_and_stderr(tmp_path):
    log = tmp_path / "log.json"
    r = runtime("--root", tmp_path, "--log", log, "--log-format", "json", "kill", "nope", "KILL")
    assert (r.returncode, r.stderr) == (1, "container does not exist\n")
    entry = json.loads(log.read_text())
    assert entry["level"] == "error" and entry["msg"] == "container does not exist"
    assert set(entry) == {"level", "msg", "time"}


def test_delete_force_of_a_missing_container_succeeds(tmp_path):
    assert runtime("--root", tmp_path, "delete", "--force", "nope").returncode == 0
    assert runtime("--root", tmp_path, "delete", "nope").returncode == 1


def test_systemd_cgroup_is_refused_in_one_line(tmp_path):
    r = runtime("--root", tmp_path, "--systemd-cgroup", "state", "x")
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "--systemd-cgroup is not supported" in r.stderr and "cgroupfs" in r.stderr


def test_unknown_command(tmp_path):
    r = runtime("--root", tmp_path, "frobnicate", "x")
    assert r.returncode == 1 and "frobnicate" in r.stderr and "Traceback" not in r.stderr


def test_runcs_other_commands_are_refused_by_name(tmp_path):
    r = runtime("--root", tmp_path, "checkpoint", "x")
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "checkpoint is not supported by pykvm-runc" in r.stderr


def test_features_has_runcs_keys():
    ours = json.loads(runtime("features").stdout)
    assert ours["linux"]["cgroup"]["systemd"] is False
    assert "poststop" in ours["hooks"] and "rbind" in ours["mountOptions"]
    if RUNC is None:
        pytest.skip("needs runc (Debian package runc) for the other half of the comparison")
    theirs = json.loads(runtime("features", program=RUNC).stdout)
    assert set(ours) == set(theirs)
    assert set(ours["linux"]) <= set(theirs["linux"])


def test_starts_without_click(tmp_path):
    """An engine runs the program several times per container: no click, no runtime modules
    for `state` beyond what it reads."""
    code = ("import sys\nfrom pykvm.commands.runc import main\n"
            f"try:\n    main(['--root', {str(tmp_path)!r}, 'state', 'nope'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m == 'click' or m.startswith('pykvm.container.runtime.')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "['pykvm.container.runtime.jsonload', 'pykvm.container.runtime.state']", r.stdout


def test_only_create_imports_dataclasses_and_no_call_imports_pathlib(tmp_path):
    """Each call pays its imports: dataclasses (it imports inspect) costs ~8 ms, pathlib
    (with urllib.parse) ~4.  `state`, `start` and `delete`'s modules (lifecycle, cgroups,
    namespaces) import neither; `create`'s (bundle, launcher) no pathlib, and dataclasses
    for RunConfig.  Counted from what the interpreter had before (site.py may have imported
    pathlib for an editable install's finder)."""
    code = ("import json, sys\nbefore = set(sys.modules)\nfrom pykvm.commands.runc import main\n"
            f"try:\n    main(['--root', {str(tmp_path)!r}, 'state', 'nope'])\nexcept SystemExit:\n    pass\n"
            "import pykvm.container.runtime.lifecycle\nstart = set(sys.modules) - before\n"
            "import pykvm.container.runtime.cgroups, pykvm.container.runtime.namespaces\n"
            "delete = set(sys.modules) - before\n"
            "import pykvm.container.runtime.bundle, pykvm.container.runtime.launcher\n"
            "create = set(sys.modules) - before\n"
            "print(json.dumps({name: sorted(new & {'dataclasses', 'inspect', 'pathlib', 'urllib.parse'}) "
            "for name, new in (('start', start), ('delete', delete), ('create', create))}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert json.loads(r.stdout) == {"start": [], "delete": [], "create": ["dataclasses", "inspect"]}, \
        r.stdout + r.stderr


@pytest.mark.parametrize("value, message", [
    ("x1", 'invalid value "x1" for flag -preserve-fds: parse error'),
    ("-2", 'invalid value "-2" for flag -preserve-fds: want 0 or more fds'),
    ("1", "unable to stat preserved-fd 0 (of 1): fd 3 is not open"),
])
def test_a_bad_preserve_fds_is_refused_before_anything_is_made(tmp_path, value, message):
    """runc's words where it has them, in its text log line (the message quoted, as logrus
    quotes it); the fds above 2 are closed here (close_fds)."""
    r = runtime("--root", tmp_path / "state", "create", "--preserve-fds", value, "--bundle", tmp_path, "c1")
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert json.dumps(message)[1:-1] in r.stderr, r.stderr
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("command", ["state", "start", "delete", "kill"])
def test_a_damaged_state_json_is_one_line(tmp_path, command):
    """What a crash or a full disk can leave: one error entry and status 1, no traceback."""
    (tmp_path / "c1").mkdir()
    (tmp_path / "c1" / "state.json").write_text('{"id": "c1", "pid": ')
    r = runtime("--root", tmp_path, command, "c1")
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "container c1: its state.json is damaged" in r.stderr, r.stderr
