"""What this machine can run: the facts behind the test tiers (see conftest.py)."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["kvm_problem", "kvm_flavour", "linux_problem", "nested_under_tcg", "NESTED_TCG_ENV"]

# tests/hw/lane.py sets this inside its L1, whose KVM runs nested in QEMU's TCG.
NESTED_TCG_ENV = "PYKVM_NESTED_TCG"


def nested_under_tcg() -> bool:
    """True inside the hardware lane's L1: KVM is real SVM, but QEMU's TCG emulates it."""
    return os.environ.get(NESTED_TCG_ENV) == "1"


def kvm_problem() -> str | None:
    """Why /dev/kvm cannot be used here, or None when it can."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return f"/dev/kvm unusable: {e.strerror}"
    os.close(fd)
    return None


def kvm_flavour() -> str:
    """'pvm' (software KVM, as on the project's dev machines), 'svm', 'vmx' or 'none'."""
    if kvm_problem():
        return "none"
    if Path("/sys/module/kvm_pvm").exists():
        return "pvm"
    if Path("/sys/module/kvm_amd").exists():
        return "svm"
    if Path("/sys/module/kvm_intel").exists():
        return "vmx"
    return "unknown"


def linux_problem() -> str | None:
    """Why the `linux` tier cannot run here, or None when it can."""
    flavour = kvm_flavour()
    if flavour == "none":
        return kvm_problem()
    if flavour == "pvm":
        return "stock Linux cannot finish booting on PVM-backed KVM; run `make test-hw` (the L1 lane)"
    return None
