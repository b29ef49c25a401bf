"""Test tiers, as pytest markers (see pyproject.toml and docs/contributing-test-lanes.md).

    (no marker)  unit: pure Python, no KVM, no root
    kvm          needs a usable /dev/kvm
    root         needs root: namespaces, mounts, cgroups
    slow         takes more than a few seconds
    linux        needs hardware-style KVM and a Linux guest: the L1 lane (make test-hw)

A test whose capability is missing is skipped with the reason named, never
silently passed.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Test helpers (tiers, guestasm, vmkit) are imported by name from tests/ and tests/kvm/.
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "kvm")]

from tiers import kvm_flavour, kvm_problem, linux_problem  # noqa: E402

TEST_TIMEOUT = int(os.environ.get("PYKVM_TEST_TIMEOUT", "300"))  # seconds, per test
# `pykvm container run` defaults to a bridge in the host's network namespace when root; the
# tests stay off the host's network: those that want a bridge ask for one in a namespace of
# their own (tests/container/test_network.py).
os.environ.setdefault("PYKVM_NETWORK", "none")


def pytest_collection_modifyitems(config, items):
    reasons = {
        "kvm": kvm_problem(),
        "root": None if os.geteuid() == 0 else "needs root (namespaces, mounts, cgroups)",
        "linux": linux_problem(),
    }
    for item in items:
        for marker, reason in reasons.items():
            if reason and item.get_closest_marker(marker) is not None:
                item.add_marker(pytest.mark.skip(reason=reason))


def pytest_report_header(config):
    return f"pykvm: kvm={kvm_flavour()} euid={os.geteuid()}"


class TestTimeout(Exception):
    """A test ran past TEST_TIMEOUT: a hung guest must fail its test, not hang the suite."""


@pytest.fixture(autouse=True)
def _per_test_timeout():
    """SIGALRM after TEST_TIMEOUT seconds; KVM_RUN returns EINTR and the handler raises."""
    def expired(signum, frame):
        raise TestTimeout(f"test exceeded {TEST_TIMEOUT}s (PYKVM_TEST_TIMEOUT)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(TEST_TIMEOUT)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --- a network namespace of the test's own (the network tests: containers, VMs) ---------

NETNS_TIMEOUT = 60          # seconds for one command run inside it


@pytest.fixture
def netns():
    """A network namespace of the test's own, with lo up; deleted (with all in it) after."""
    if not os.path.exists("/usr/bin/nsenter"):
        pytest.skip("needs nsenter (util-linux)")
    name = f"pykvmt-{os.urandom(4).hex()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def in_ns(netns):
    """Run a command in the test's namespace (the containers' and VMs' "host")."""
    def run(*argv, **kw):
        kw.setdefault("capture_output", True)
        return subprocess.run(["nsenter", f"--net=/run/netns/{netns}", "--", *map(str, argv)],
                              text=True, timeout=NETNS_TIMEOUT, **kw)
    return run
