"""The parser fuzzers' seeds, and a short seeded coverage-guided run of each (tests/fuzz/parser_fuzz.py).

`make fuzz` runs every target for thousands of inputs; here each target's
seeds go through it in this process (the oracle: success or a PyKvmError,
nothing written outside the sandbox), and a few hundred atheris inputs per
target run in a subprocess with a fixed seed.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "fuzz"))

import parser_fuzz  # noqa: E402

SAMPLE_RUNS = 100
ATHERIS = importlib.util.find_spec("atheris")


@pytest.mark.parametrize("name", parser_fuzz.TARGETS)
def test_seeds_pass_the_oracle(name):
    seeds = parser_fuzz.seeds(name)
    assert seeds, f"{name} has no seeds"
    for seed in seeds:
        parser_fuzz.run_one(name, seed)


@pytest.mark.skipif(ATHERIS is None, reason="atheris is not installed (pip install -e '.[test]')")
@pytest.mark.parametrize("name", parser_fuzz.TARGETS)
def test_short_seeded_fuzz_run(name, tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "fuzz" / "parser_fuzz.py"), name,
                           f"-runs={SAMPLE_RUNS}", "-seed=1", "-max_len=4096", f"-artifact_prefix={tmp_path}/",
                           str(tmp_path / "corpus")],           # the seeds alone: the same run every time
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Done {SAMPLE_RUNS} runs" in done.stderr, done.stderr[-3000:]
