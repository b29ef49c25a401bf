"""The bundled guests `pykvm boot NAME` knows, and where their built files are.

Guests are built from guests/ by `make guests` (`make boot` does it too);
nothing here is downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pykvm.errors import ConfigError

__all__ = ["Guest", "GUESTS", "DEFAULT_GUEST", "find_guest", "GUESTS_DIR", "LINUX_ON_PVM",
           "hardware_kvm_problem", "guest_list"]

GUESTS_DIR = Path(__file__).resolve().parents[2] / "guests"
LINUX_CACHE = GUESTS_DIR.parent / ".cache" / "linux"   # what `make linux-guest` produces

# What a PVM-backed /dev/kvm means for Linux guests, said once: `pykvm check`, `pykvm boot
# linux` and `pykvm compare --guest linux` print it; README.md, docs/05 and docs/30 say the same.
LINUX_ON_PVM = ("stock Linux cannot finish booting on this /dev/kvm: it is PVM (software "
                "virtualization), whose instruction emulator runs the guest kernel and lacks "
                "instructions Linux uses; Linux boots on hardware KVM (Intel VMX or AMD SVM), "
                "which `make test-hw` provides inside a nested VM")


@dataclass(frozen=True)
class Guest:
    name: str
    kernel: Path
    description: str
    cmdline: str = ""
    initrd: Path | None = None
    build: str = "make guests"
    needs_hardware_kvm: bool = False     # stock Linux: cannot finish booting on PVM


GUESTS = {
    "hello": Guest("hello", GUESTS_DIR / "hello" / "hello.elf",
                   "the smallest PVH guest: prints a greeting and powers off"),
    "multiboot": Guest("multiboot", GUESTS_DIR / "multiboot" / "kernel.elf",
                       "a student's Multiboot kernel: prints the loader's facts, powers off "
                       "(docs/05-multiboot.md)"),
    "tiny": Guest("tiny", GUESTS_DIR / "tiny" / "tiny.elf",
                  "the teaching kernel: a shell on the serial console (docs/04-tiny-kernel.md)"),
    "linux": Guest("linux", LINUX_CACHE / "vmlinuz",
                   "Debian's cloud kernel (bzImage) with a busybox initramfs: a shell on the console",
                   initrd=LINUX_CACHE / "initramfs.cpio", build="make linux-guest",
                   needs_hardware_kvm=True),
}
DEFAULT_GUEST = "tiny"


def hardware_kvm_problem() -> str | None:
    """Why a stock Linux guest cannot boot on this /dev/kvm, or None when it can."""
    from pykvm.vm.kvm.system import kvm_backend

    return LINUX_ON_PVM if kvm_backend().startswith("PVM") else None


def find_guest(name: str) -> Guest:
    """The guest called `name`, built and bootable here; else ConfigError saying why and what to do."""
    guest = GUESTS.get(name)
    if guest is None:
        raise ConfigError(f"unknown guest {name!r} (known: {', '.join(sorted(GUESTS))}; "
                          "or use --kernel FILE)")
    if guest.needs_hardware_kvm and (problem := hardware_kvm_problem()):
        raise ConfigError(f"guest {name!r}: {problem}")
    missing = [p for p in (guest.kernel, guest.initrd) if p is not None and not p.exists()]
    if missing:
        raise ConfigError(f"guest {name!r} is not built ({missing[0]} is missing): run `{guest.build}`")
    return guest


def guest_list(width: int = 78) -> str:
    """The bundled guests for `pykvm boot --help`: name, what it is, how it is built."""
    import textwrap

    lines = []
    for guest in GUESTS.values():
        notes = ["the default"] if guest.name == DEFAULT_GUEST else []
        notes += ["hardware KVM only"] if guest.needs_hardware_kvm else []
        notes.append(f"built by `{guest.build}`")
        lines += textwrap.wrap(f"{guest.name:<6} {guest.description} ({'; '.join(notes)})", width,
                               initial_indent="  ", subsequent_indent=" " * 9, break_on_hyphens=False)
    return "\n".join(lines)
