"""A seeded sample of the guest fuzzer (`make fuzz-guest` runs thousands): 200 guests, every oracle.

The guests are the same on every run (seed FUZZ_SEED); the run is bounded in
time as well, since a loaded host may not get through all of them.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FUZZ_SEED = "sample"
COUNT = 200
SECONDS = 110
CLI_EVERY = 40

pytestmark = [pytest.mark.kvm, pytest.mark.slow]


def test_a_seeded_sample_of_hostile_guests_finds_nothing(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "fuzz" / "guest_fuzz.py"), "--count", str(COUNT),
                           "--seconds", str(SECONDS), "--seed", FUZZ_SEED, "--jobs", "2",
                           "--cli-every", str(CLI_EVERY), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=SECONDS + 300)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["findings"] == [], json.dumps(summary["findings"], indent=1)[:4000]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert summary["guests"] > 0, summary
    kinds = summary["outcomes"]
    assert not any(kind.startswith("FINDING") for kind in kinds), kinds
    # the sample reaches more than one way of ending (a fuzzer stuck on one path tests little)
    assert len([k for k in kinds if not k.startswith("cli:")]) >= 3, kinds
