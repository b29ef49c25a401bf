"""`pykvm compare` bounds a run's silence, not its length: a guest that keeps printing may
take as long as a loaded host makes it take; one that goes quiet is stopped.

Real child processes (sh), no KVM.  `slow`: the live run lasts about 4 s.
"""
from __future__ import annotations

import pytest

from pykvm.comparison.measure import RunFailed, run_once

pytestmark = pytest.mark.slow

SILENCE_S = 3.0


def test_a_run_longer_than_the_bound_that_keeps_printing_finishes():
    sample = run_once(["sh", "-c", "for i in $(seq 80); do echo line $i; sleep 0.05; done"],
                      timeout=SILENCE_S)
    assert sample.status == 0
    assert sample.exit_s > SILENCE_S, "the run must outlast the bound for this test to mean anything"
    assert sample.lines[:2] == ["line 1", "line 2"] and "line 80" in sample.lines


def test_a_run_that_goes_quiet_is_stopped_with_one_line():
    with pytest.raises(RunFailed, match=r"^the quiet run printed nothing for 3 s; stopped it$"):
        run_once(["sh", "-c", "echo booted; exec sleep 60"], timeout=SILENCE_S, label="the quiet run")
