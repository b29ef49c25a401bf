"""Pick the loader for a kernel file and load it: PVH ELF, Linux bzImage, or a raw flat binary.

Detection, as QEMU's -kernel does it, by content, never by file name:
- "\\x7fELF" at offset 0: an ELF, booted through its PVH entry note;
- "HdrS" at offset 0x202: a Linux bzImage (boot protocol setup header);
- anything else is refused, unless the user said `--format raw`.
"""
from __future__ import annotations

from pathlib import Path

from pykvm.vm.arch.x86.boot_state import Entry
from pykvm.vm.boot.elf import is_elf
from pykvm.errors import ConfigError, LoaderError

__all__ = ["load_kernel", "detect_format", "FORMATS", "read_file"]

FORMATS = ("auto", "pvh", "bzimage", "raw")
BZIMAGE_MAGIC_OFFSET = 0x202   # boot.rst: setup header field "header" = "HdrS"
BZIMAGE_MAGIC = b"HdrS"


def detect_format(data: bytes) -> str | None:
    if is_elf(data):
        return "pvh"
    if data[BZIMAGE_MAGIC_OFFSET:BZIMAGE_MAGIC_OFFSET + 4] == BZIMAGE_MAGIC:
        return "bzimage"
    return None


def read_file(path: Path, what: str) -> bytes:
    """A whole input file, or one clear error line."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise LoaderError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise LoaderError(f"{what} {path}: is a directory") from None
    except OSError as e:
        raise LoaderError(f"{what} {path}: {e.strerror}") from None


def load_kernel(memory, vcpus: list, config) -> Entry:
    """Load config.kernel (and config.initrd) into `memory`; return where vCPU 0 starts.

    `vcpus`: every vCPU, the bootstrap processor first (the firmware state
    covers them all: the MADT lists them, each gets its boot MSRs).
    """
    name = str(config.kernel)
    data = read_file(config.kernel, "kernel")
    initrd = read_file(config.initrd, "initrd") if config.initrd else None
    fmt = config.kernel_format
    if fmt not in FORMATS:
        raise ConfigError(f"unknown kernel format {fmt!r} (choose from {', '.join(FORMATS)})")
    if fmt == "auto":
        fmt = detect_format(data)
        if fmt is None:
            raise LoaderError(f"{name}: not an ELF or bzImage kernel "
                              "(for a raw flat binary, add --format raw)")
    if fmt == "pvh":
        from pykvm.vm.boot.firmware import leave_firmware_state
        from pykvm.vm.boot.pvh import load_pvh

        rsdp = leave_firmware_state(memory, vcpus)
        return load_pvh(memory, data, config.cmdline, initrd, name, acpi_rsdp=rsdp)
    if fmt == "bzimage":
        try:
            from pykvm.vm.boot.bzimage import load_bzimage
        except ModuleNotFoundError:
            raise LoaderError(f"{name}: a Linux bzImage; this pykvm cannot boot bzImages yet") from None
        return load_bzimage(memory, vcpus, data, config.cmdline, initrd, name)
    from pykvm.vm.boot.flat import load_flat

    if initrd is not None or config.cmdline:
        raise ConfigError("a raw flat binary takes no --initrd or --cmdline")
    return load_flat(memory, data, name)
