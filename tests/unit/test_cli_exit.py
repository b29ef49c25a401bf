"""How the `pykvm` program ends (pykvm/cli.py _exit_now): fast, yet losing nothing."""
from __future__ import annotations

import subprocess
import sys


def _pykvm(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *prefix, "-m", "pykvm", *args], capture_output=True,
                          text=True, timeout=60)


def test_buffered_output_to_a_pipe_is_flushed_before_the_fast_exit():
    """stdout is a pipe (block-buffered): all of --help must arrive, not just whole blocks."""
    done = _pykvm("--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: pykvm") and "compare" in done.stdout
    assert done.stdout.endswith("\n")


def test_a_profiler_still_gets_its_results(tmp_path):
    """`python -m cProfile -o F -m pykvm` writes F after the module returns: the fast
    exit must step aside, as it does for threads."""
    out = tmp_path / "pykvm.prof"
    done = _pykvm("--version", prefix=("-m", "cProfile", "-o", str(out)))
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size > 0


def test_bad_input_keeps_its_status_and_one_line():
    done = _pykvm("boot", "--mem", "banana")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("pykvm: error:"), done.stderr
