"""The student Multiboot kernel (guests/multiboot) under pykvm, and line for line beside QEMU.

Both images (ELF32, and the flat binary with the header's load addresses)
boot with the same command line and modules under `pykvm boot --kernel` and
`qemu-system-x86_64 -kernel`; the consoles must be identical.
"""
from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kvm

ROOT = Path(__file__).resolve().parents[2]
GUEST_DIR = ROOT / "guests" / "multiboot"
BANNER = "hello from a Multiboot kernel"
QEMU = "qemu-system-x86_64"
MEM_MIB = 128
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def modules(tmp_path_factory) -> list[tuple[Path, str]]:
    """Two modules: a file and its arguments, as --module FILE,ARGS (QEMU: -initrd 'FILE ARGS,...')."""
    folder = tmp_path_factory.mktemp("modules")
    (folder / "fs.img").write_bytes(b"ramdisk contents\0more")
    (folder / "config").write_bytes(b"answer=42\n")
    return [(folder / "fs.img", ""), (folder / "config", "verbose level=2")]


def kernel(name: str) -> Path:
    subprocess.run(["make", "-s", "-C", str(GUEST_DIR)], check=True)
    return GUEST_DIR / name


def pykvm_boot(image: Path, cmdline: str, modules) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "pykvm", "boot", "--kernel", str(image), "--mem", f"{MEM_MIB}M",
            "--cmdline", cmdline]
    for path, extra in modules:
        args += ["--module", f"{path},{extra}" if extra else str(path)]
    return subprocess.run(args, capture_output=True, timeout=TIMEOUT_S)


def qemu_boot(image: Path, cmdline: str, modules) -> subprocess.CompletedProcess:
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} is not installed (.ci/packages installs qemu-system-x86)")
    args = [QEMU, "-M", "pc", "-accel", "kvm", "-m", str(MEM_MIB), "-display", "none",
            "-serial", "stdio", "-monitor", "none", "-nic", "none", "-no-reboot",
            "-kernel", str(image), "-append", cmdline]
    if modules:
        args += ["-initrd", ",".join(f"{path} {extra}".rstrip() for path, extra in modules)]
    return subprocess.run(args, capture_output=True, timeout=TIMEOUT_S)


def console(done: subprocess.CompletedProcess) -> str:
    text = done.stdout.decode("utf-8", "replace").replace("\r\n", "\n")
    return text[text.find(BANNER):] if BANNER in text else text


@pytest.mark.parametrize("image", ["kernel.elf", "kernel.bin"])
def test_pykvm_boots_the_student_kernel(image, modules):
    path = kernel(image)
    done = pykvm_boot(path, "mmap hello", modules)
    assert done.returncode == 0, done.stderr.decode()
    lines = console(done).splitlines()
    assert lines[0] == BANNER
    assert lines[1] == f"command line: '{path} mmap hello'"     # argv[0] = the kernel, as QEMU
    assert lines[2] == f"lower memory: 639 KiB, upper memory: {MEM_MIB - 1} MiB"
    assert lines[3:6] == ["  0x000000000-0x00009fbff usable", "  0x00009fc00-0x0000fffff reserved",
                          f"  0x000100000-{MEM_MIB * 2**20 - 1:#011x} usable"]
    assert lines[6] == f"memory map: {MEM_MIB - 1} MiB usable in 2 regions"
    assert lines[7:] == ["modules: 2",
                         f"  '{modules[0][0]}' {modules[0][0].stat().st_size} bytes, "
                         "starts with 'ramdisk contents'",
                         f"  '{modules[1][0]} verbose level=2' {modules[1][0].stat().st_size} bytes, "
                         "starts with 'answer=42'",
                         "powering off"]


def test_the_multiboot2_build_reports_what_the_multiboot_build_does(modules):
    """kernel2.elf: the same code behind a Multiboot2 header; only the command line differs,
    as Multiboot2 passes the arguments alone (no kernel file name in front)."""
    v1 = console(pykvm_boot(kernel("kernel.elf"), "mmap", modules)).splitlines()
    v2 = console(pykvm_boot(kernel("kernel2.elf"), "mmap", modules)).splitlines()
    assert v2[1] == "(Multiboot2)" and v2[2] == "command line: 'mmap'"
    assert v1[1].startswith("command line: '") and v1[1].endswith("kernel.elf mmap'")
    assert v2[3:] == v1[2:] and v1[-1] == "powering off"


@pytest.mark.slow
@pytest.mark.parametrize("image", ["kernel.elf", "kernel.bin"])
def test_the_student_kernel_boots_identically_under_qemu_and_pykvm(image, modules):
    path = kernel(image)
    ours, qemus = pykvm_boot(path, "console=ttyS0", modules), qemu_boot(path, "console=ttyS0", modules)
    assert (ours.returncode, qemus.returncode) == (0, 0), (ours.stderr, qemus.stderr)
    assert console(ours) == console(qemus)
    assert console(ours).endswith("powering off\n")


def test_bad_multiboot_headers_are_one_line(tmp_path):
    magic, flags = 0x1BADB002, 1 << 5                     # a required flag bit nobody knows
    bad = tmp_path / "bad.bin"
    bad.write_bytes(struct.pack("<III", magic, flags, -(magic + flags) & 0xFFFFFFFF) + bytes(64))
    mb2 = tmp_path / "mb2.bin"
    mb2.write_bytes(struct.pack("<IIII", 0xE85250D6, 0, 16, -(0xE85250D6 + 16) & 0xFFFFFFFF))
    for path, message in [(bad, "requires flags 0x20"), (mb2, "Multiboot2 header length 16 is wrong")]:
        done = subprocess.run([sys.executable, "-m", "pykvm", "boot", "--kernel", str(path)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("pykvm: error:"), done.stderr
        assert message in done.stderr


def test_module_option_is_for_multiboot_kernels_only(tmp_path):
    hello = ROOT / "guests" / "hello" / "hello.elf"
    done = subprocess.run([sys.executable, "-m", "pykvm", "boot", "--kernel", str(hello),
                           "--module", str(hello)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--module is for Multiboot kernels" in done.stderr, done.stderr
