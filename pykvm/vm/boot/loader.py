"""Pick the loader for a kernel file and load it: PVH ELF, Linux bzImage, Multiboot, or raw.

Detection, as QEMU's -kernel does it (hw/i386/x86.c, x86_load_linux), by
content, never by file name, in this order:
- "HdrS" at offset 0x202: a Linux bzImage (boot protocol setup header);
- a Multiboot header in the first 8 KiB: a Multiboot kernel (ELF or not);
- a Multiboot2 header in the first 32 KiB (GRUB 2's protocol; not QEMU's);
- "\\x7fELF" at offset 0: an ELF, booted through its PVH entry note;
- anything else is refused, unless the user said `--format raw`.
"""
from __future__ import annotations

from pathlib import Path

from pykvm.vm.arch.x86.boot_state import Entry
from pykvm.vm.boot.cmdline import virtio_mmio_arguments
from pykvm.vm.boot.elf import is_elf
from pykvm.errors import ConfigError, LoaderError

__all__ = ["load_kernel", "detect_format", "FORMATS", "read_file"]

FORMATS = ("auto", "pvh", "bzimage", "multiboot", "multiboot2", "raw")
BZIMAGE_MAGIC_OFFSET = 0x202   # boot.rst: setup header field "header" = "HdrS"
BZIMAGE_MAGIC = b"HdrS"


def detect_format(data: bytes) -> str | None:
    """The loader for `data`, in the order of the module docstring; None if nothing fits."""
    from pykvm.vm.boot.multiboot import find_header
    from pykvm.vm.boot.multiboot2 import is_multiboot2

    if data[BZIMAGE_MAGIC_OFFSET:BZIMAGE_MAGIC_OFFSET + 4] == BZIMAGE_MAGIC:
        return "bzimage"
    if find_header(data) is not None:
        return "multiboot"
    if is_multiboot2(data):
        return "multiboot2"
    if is_elf(data):
        return "pvh"
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




def load_kernel(memory, vcpus: list, config, mmio_devices: list[tuple[int, int, int]] = ()) -> Entry:
    """Load config.kernel (and config.initrd) into `memory`; return where vCPU 0 starts.

    `vcpus`: every vCPU, the bootstrap processor first (the firmware state
    covers them all: the MADT lists them, each gets its boot MSRs).
    `mmio_devices`: (base, size, irq) of each virtio-mmio device, described to
    the kernel on its command line and in the ACPI DSDT.
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
            raise LoaderError(f"{name}: not an ELF, bzImage, Multiboot or Multiboot2 kernel "
                              "(for a raw flat binary, add --format raw)")
    if fmt in ("multiboot", "multiboot2"):
        return _load_multiboot(memory, vcpus, config, data, initrd, name, fmt, mmio_devices)
    if config.modules:
        raise ConfigError("--module is for Multiboot kernels; this kernel is not one")
    if fmt == "pvh":
        from pykvm.vm.boot.firmware import leave_firmware_state
        from pykvm.vm.boot.pvh import load_pvh

        rsdp = leave_firmware_state(memory, vcpus, mmio_devices)
        return load_pvh(memory, data, config.cmdline, initrd, name, acpi_rsdp=rsdp,
                        cmdline_extra=virtio_mmio_arguments(mmio_devices))
    if fmt == "bzimage":
        from pykvm.vm.boot.bzimage import load_bzimage

        return load_bzimage(memory, vcpus, data, config.cmdline, initrd, name, mmio_devices)
    from pykvm.vm.boot.flat import load_flat

    if initrd is not None or config.cmdline or config.modules:
        raise ConfigError("a raw flat binary takes no --initrd, --module or --cmdline")
    return load_flat(memory, data, name)


def _load_multiboot(memory, vcpus, config, data: bytes, initrd: bytes | None, name: str,
                    fmt: str, mmio_devices=()) -> Entry:
    """A Multiboot (v1 or 2) kernel: --initrd is its first module, then each --module FILE[,ARGS]."""
    from pykvm.vm.boot.firmware import leave_firmware_state
    from pykvm.vm.boot.multiboot import Module, load_multiboot
    from pykvm.vm.boot.multiboot2 import load_multiboot2

    modules = [Module(initrd, str(config.initrd))] if initrd is not None else []
    for path, args in config.modules:
        modules.append(Module(read_file(path, "module"), f"{path} {args}".rstrip()))
    rsdp = leave_firmware_state(memory, vcpus, mmio_devices)
    if fmt == "multiboot2":
        return load_multiboot2(memory, data, config.cmdline, modules, name, acpi_rsdp=rsdp)
    return load_multiboot(memory, data, config.cmdline, modules, name)
