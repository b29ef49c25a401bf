"""Boot guests/tiny/tiny.elf under a VMM and capture its serial console.

Two VMMs run the very same ELF with the very same kernel command line:

    qemu      qemu-system-x86_64 -M pc -accel kvm (PVH through -kernel), with the
              isa-debug-exit device and the PIIX4 ACPI power-off port
    qemu-tcg  the same with -accel tcg: a software CPU with hardware semantics
              (`int 0x80` arrives through IDT gate 0x80, not as #UD as on PVM)
    pykvm     `pykvm boot --kernel ELF --cmdline ...`

and, for virtio disks, QEMU's microvm machine (microvm_command).

Used by tests/kvm/test_tiny_kernel.py and tests/bench/bench_tiny_boot.py.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from clitools import output_until_exit

__all__ = [
    "TINY_ELF", "MEM_MIB", "BANNER", "Run", "build_tiny", "vmm_problem",
    "qemu_command", "pykvm_command", "command", "boot", "Disk", "microvm_command", "run",
    "output_of", "pykvm_has_disks",
]

ROOT = Path(__file__).resolve().parents[2]
TINY_DIR = ROOT / "guests" / "tiny"
TINY_ELF = TINY_DIR / "tiny.elf"
MEM_MIB = 128
BANNER = "tiny 1.0: booting"          # the kernel's first line (main.c)
QEMU = "qemu-system-x86_64"
DEBUG_EXIT = "isa-debug-exit,iobase=0xf4,iosize=0x04"   # what pykvm emulates too
MODERN_VIRTIO_MMIO = "virtio-mmio.force-legacy=false"   # QEMU's default is the legacy version 1
TIMEOUT_S = 120                       # of silence: a boot that prints nothing this long is stopped


@dataclass
class Run:
    """One boot: the VMM's exit status and the guest's console from its banner on."""

    status: int
    console: str

    @property
    def lines(self) -> list[str]:
        return self.console.splitlines()


def output_of(run: Run, command: str) -> list[str]:
    """The lines a shell command printed: from its prompt line to the next prompt."""
    lines = run.lines
    start = lines.index(f"tiny$ {command}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("tiny$ ")), len(lines))
    return lines[start:end]


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


def pykvm_has_disks() -> bool:
    """Does this checkout's `pykvm boot` take --disk (the virtio-blk device model)?"""
    help_text = subprocess.run([sys.executable, "-m", "pykvm", "boot", "--help"],
                               capture_output=True, text=True).stdout
    return "--disk" in help_text


def command(vmm: str, elf: Path, cmdline: str, cpus: int = 1) -> list[str]:
    """The command line that boots `elf` on `cpus` vCPUs under `vmm` ("qemu", "qemu-tcg" or "pykvm")."""
    if vmm == "pykvm":
        return pykvm_command(elf, cmdline, cpus)
    return qemu_command(elf, cmdline, accel="tcg" if vmm == "qemu-tcg" else "kvm", cpus=cpus)


@dataclass
class Disk:
    """A raw image for a virtio-blk device."""

    path: Path
    read_only: bool = False


MICROVM_POWEROFF = 1        # microvm has no ACPI PM block: tiny's poweroff writes 0 to isa-debug-exit, status (0 << 1) | 1


def microvm_command(elf: Path, cmdline: str, disks: list[Disk], auto_cmdline: bool = True,
                    mem: str = f"{MEM_MIB}M") -> list[str]:
    """QEMU microvm without ACPI, a virtio-blk-device per disk (serial tinydisk0, 1, ...).

    With acpi=off and auto-kernel-cmdline on (its default), QEMU appends
    ` virtio_mmio.device=512@BASE:IRQ` for each device to the command line itself.
    microvm has no ACPI PM block: tiny's poweroff leaves through debug-exit, status 1.
    """
    machine = "microvm,acpi=off" + ("" if auto_cmdline else ",auto-kernel-cmdline=off")
    command = [QEMU, "-M", machine, "-accel", "kvm", "-m", mem,
               "-display", "none", "-serial", "stdio", "-monitor", "none",
               "-nic", "none", "-no-reboot", "-device", DEBUG_EXIT,
               "-global", MODERN_VIRTIO_MMIO, "-kernel", str(elf), "-append", cmdline]
    for i, disk in enumerate(disks):
        drive = f"if=none,id=disk{i},file={disk.path},format=raw"
        command += ["-drive", drive + (",readonly=on" if disk.read_only else ""),
                    "-device", f"virtio-blk-device,drive=disk{i},serial=tinydisk{i}"]
    return command


def console_from_banner(raw: bytes) -> str:
    """The console text from the kernel's banner on (drops firmware output), LF line ends."""
    text = raw.decode("utf-8", "replace").replace("\r\n", "\n")
    start = text.find(BANNER)
    return text[start:] if start >= 0 else text


def run(vmm_command: list[str], stdin: bytes = b"") -> Run:
    """Run a VMM's command line, feed `stdin` to the serial port, wait for it to exit
    (or for TIMEOUT_S of silence)."""
    proc = subprocess.Popen(vmm_command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    with proc:
        proc.stdin.write(stdin)
        proc.stdin.close()
        console = output_until_exit(proc, TIMEOUT_S)
    return Run(proc.returncode, console_from_banner(console))


def boot(vmm: str, cmdline: str, stdin: bytes = b"", elf: Path = TINY_ELF, cpus: int = 1) -> Run:
    """Boot under `vmm` on `cpus` vCPUs, feed `stdin` to the serial port, wait for the VMM to exit
    (or for TIMEOUT_S of silence)."""
    return run(command(vmm, elf, cmdline, cpus), stdin)
