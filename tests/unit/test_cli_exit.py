"""How the `pykvm` program ends (pykvm/commands/fast_exit.py): fast, yet losing nothing."""
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


def test_a_status_wider_than_8_bits_ends_as_its_low_byte():
    """debug-exit's (V << 1) | 1 for V = 0xffffffff is 33 bits: the process status is 0xff, as
    QEMU's exit() gives, not an OverflowError (found by the guest fuzzer)."""
    for code, status in ((2**33 - 1, 0xFF), (0x101, 1), (-1, 0xFF)):
        code_line = f"from pykvm.commands.fast_exit import exit_now; exit_now({code})"
        done = subprocess.run([sys.executable, "-c", code_line], capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stderr) == (status, ""), (code, done)
