"""A seeded sample of the chaos harness (`make chaos` kills 20 times per operation): one
kill -9 each during a pull and a container run, every oracle."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPS = "pull,run"

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_a_seeded_sample_of_kills_leaks_nothing(tmp_path):
    for tool in ("docker-registry", "runc", "nsenter"):
        if not shutil.which(tool):
            pytest.skip(f"needs {tool} (make deps)")
    summary_path = tmp_path / "summary.json"
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "chaos" / "chaos.py"), "--count", "1",
                           "--seconds", "120", "--seed", "sample", "--ops", OPS,
                           "--summary", str(summary_path)],
                          capture_output=True, text=True, timeout=400)
    assert summary_path.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["findings"] == [], json.dumps(summary["findings"], indent=1)[:4000]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(summary["operations"]) == sorted(OPS.split(",")), summary
    assert all(op["kills"] == 1 for op in summary["operations"].values()), summary
