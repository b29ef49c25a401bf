"""A CI-sized sample of the load harness (`make load` runs 100 at once, then 1,000 one after
another, beside runc): every exit status right, and the same fds, mounts, cgroups,
processes and state directories after as before."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONCURRENT = 8
SEQUENTIAL = 12

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_a_sample_of_concurrent_and_sequential_runs_leaks_nothing(tmp_path):
    summary_path = tmp_path / "summary.json"
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "load" / "load.py"), "--runtimes", "pykvm",
                           "--concurrent", str(CONCURRENT), "--sequential", str(SEQUENTIAL),
                           "--seconds", "600", "--summary", str(summary_path)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(summary_path.read_text())["pykvm"]
    assert {name: p["runs"] for name, p in result["phases"].items()} == \
        {"concurrent": CONCURRENT, "sequential": SEQUENTIAL}, result
    assert all(p["wrong"] == [] for p in result["phases"].values()), result
    assert result["before"] == result["after"], result
