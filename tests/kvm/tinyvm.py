"""Boot guests/tiny/tiny.elf under a VMM and capture its serial console.

Two VMMs run the very same ELF with the very same kernel command line:

    qemu      qemu-system-x86_64 -M pc -accel kvm (PVH through -kernel), with the
              isa-debug-exit device and the PIIX4 ACPI power-off port
    qemu-tcg  the same with -accel tcg: a software CPU with hardware semantics
              (`int 0x80` arrives through IDT gate 0x80, not as #UD as on PVM)
    pykvm     `pykvm boot --kernel ELF --cmdline ...`

Used by tests/kvm/test_tiny_kernel.py and tests/bench/bench_tiny_boot.py.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "TINY_ELF", "MEM_MIB", "BANNER", "Run", "build_tiny", "vmm_problem",
    "qemu_command", "pykvm_command", "command", "boot",
]

ROOT = Path(__file__).resolve().parents[2]
TINY_DIR = ROOT / "guests" / "tiny"
TINY_ELF = TINY_DIR / "tiny.elf"
MEM_MIB = 128
BANNER = "tiny 1.0: booting"          # the kernel's first line (main.c)
QEMU = "qemu-system-x86_64"
DEBUG_EXIT = "isa-debug-exit,iobase=0xf4,iosize=0x04"   # what pykvm emulates too
TIMEOUT_S = 120


@dataclass
class Run:
    """One boot: the VMM's exit status and the guest's console from its banner on."""

    status: int
    console: str

    @property
    def lines(self) -> list[str]:
        return self.console.splitlines()


def build_tiny() -> Path:
    """Build the kernel (a no-op when it is up to date) and return the ELF's path."""
    subprocess.run(["make", "-s", "-C", str(TINY_DIR)], check=True)
    return TINY_ELF


def vmm_problem(vmm: str) -> str | None:
    """Why `vmm` cannot run here, or None."""
    if vmm.startswith("qemu") and shutil.which(QEMU) is None:
        return f"{QEMU} is not installed (.ci/run installs qemu-system-x86)"
    if vmm == "pykvm" and importlib.util.find_spec("pykvm.commands.boot") is None:
        return "`pykvm boot` is not in this checkout yet (the VMM core issue)"
    return None


def qemu_command(elf: Path, cmdline: str, accel: str = "kvm", cpus: int = 1) -> list[str]:
    """QEMU booting `elf` through PVH, console on stdio, no firmware screen or NIC."""
    return [QEMU, "-M", "pc", "-accel", accel, "-smp", str(cpus), "-m", str(MEM_MIB),
            "-display", "none", "-serial", "stdio", "-monitor", "none",
            "-nic", "none", "-no-reboot", "-device", DEBUG_EXIT,
            "-kernel", str(elf), "-append", cmdline]


def pykvm_command(elf: Path, cmdline: str, cpus: int = 1) -> list[str]:
    """pykvm's CLI booting `elf`, run by this interpreter (the venv's)."""
    return [sys.executable, "-m", "pykvm", "boot", "--kernel", str(elf), "--cpus", str(cpus),
            "--mem", f"{MEM_MIB}M", "--cmdline", cmdline]


def command(vmm: str, elf: Path, cmdline: str, cpus: int = 1) -> list[str]:
    """The command line that boots `elf` on `cpus` vCPUs under `vmm` ("qemu", "qemu-tcg" or "pykvm")."""
    if vmm == "pykvm":
        return pykvm_command(elf, cmdline, cpus)
    return qemu_command(elf, cmdline, accel="tcg" if vmm == "qemu-tcg" else "kvm", cpus=cpus)


def console_from_banner(raw: bytes) -> str:
    """The console text from the kernel's banner on (drops firmware output), LF line ends."""
    text = raw.decode("utf-8", "replace").replace("\r\n", "\n")
    start = text.find(BANNER)
    return text[start:] if start >= 0 else text


def boot(vmm: str, cmdline: str, stdin: bytes = b"", elf: Path = TINY_ELF, cpus: int = 1) -> Run:
    """Boot under `vmm` on `cpus` vCPUs, feed `stdin` to the serial port, wait for the VMM to exit."""
    proc = subprocess.run(command(vmm, elf, cmdline, cpus), input=stdin, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=TIMEOUT_S)
    return Run(proc.returncode, console_from_banner(proc.stdout))
