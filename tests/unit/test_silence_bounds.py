"""Guest runs are bounded by their silence, not their length: a guest that keeps printing
may take as long as a loaded host makes it take (nested virtualization in the L1 lane);
one that goes quiet is stopped.  The same rule in the three places that wait for a guest:
`pykvm compare`'s runs, the VMM sessions of the tests (tiny, the lane's L2), the Linux
serial console.

Real child processes (sh), no KVM.  `slow`: each live run outlasts its bound (a few s).
"""
from __future__ import annotations

import subprocess

import pytest

from clitools import output_until_exit
from linux_guest import SerialSession
from pykvm.comparison.measure import RunFailed, run_once

pytestmark = pytest.mark.slow

SILENCE_S = 2.0
CHATTY = "for i in $(seq 50); do echo line $i; sleep 0.05; done"    # >2.5 s, never quiet 0.1 s
QUIET = "echo booted; exec sleep 60"


def test_a_compare_run_longer_than_the_bound_that_keeps_printing_finishes():
    sample = run_once(["sh", "-c", CHATTY], timeout=SILENCE_S)
    assert sample.status == 0
    assert sample.exit_s > SILENCE_S, "the run must outlast the bound for this test to mean anything"
    assert sample.lines[:2] == ["line 1", "line 2"] and "line 50" in sample.lines


def test_a_compare_run_that_goes_quiet_is_stopped_with_one_line():
    with pytest.raises(RunFailed, match=r"^the quiet run printed nothing for 2 s; stopped it$"):
        run_once(["sh", "-c", QUIET], timeout=SILENCE_S, label="the quiet run")


def test_a_tiny_session_is_bounded_by_its_silence():
    chatty = subprocess.Popen(["sh", "-c", CHATTY], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with chatty:
        assert output_until_exit(chatty, SILENCE_S).endswith(b"line 50\n")
    quiet = subprocess.Popen(["sh", "-c", QUIET], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with quiet, pytest.raises(AssertionError, match="printed nothing for 2 s; stopped it"):
        output_until_exit(quiet, SILENCE_S)
    assert quiet.returncode is not None, "the quiet VMM was stopped"


def test_the_serial_console_waits_while_the_guest_prints():
    chatty = SerialSession(["sh", "-c", CHATTY + "; echo login:"])
    try:
        chatty.expect("login:", timeout=SILENCE_S)
    finally:
        chatty.close()
    quiet = SerialSession(["sh", "-c", QUIET])
    try:
        with pytest.raises(AssertionError, match=r"nothing new for 2.0 s"):
            quiet.expect("login:", timeout=SILENCE_S)
    finally:
        quiet.close()


def test_a_vmm_with_stderr_on_stdout_is_read_the_same_way():
    """The lane's L2 QEMU: its console and its warnings on one pipe."""
    both = subprocess.Popen(["sh", "-c", "echo console; echo warning >&2"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    with both:
        assert sorted(output_until_exit(both, SILENCE_S).split()) == [b"console", b"warning"]
    assert both.returncode == 0
