"""Pick the loader for a kernel file and load it: PVH ELF, Linux bzImage, Multiboot, or raw.

Two steps of the machine's recipe, with the firmware's between them:
read_kernel reads the files and checks the options against the format, before
anything is written; load_kernel writes the kernel, its command line and its
boot information into guest memory and returns the Entry where vCPU 0 starts.
Loaders only load: the ACPI tables and the memory map come from the firmware
step (pykvm.vm.boot.firmware), the vCPU's registers from
pykvm.vm.arch.x86.vcpu.configure_vcpu.

Detection, as QEMU's -kernel does it (hw/i386/x86.c, x86_load_linux), by
content, never by file name, in this order:
- "HdrS" at offset 0x202: a Linux bzImage (boot protocol setup header);
- a Multiboot header in the first 8 KiB: a Multiboot kernel (ELF or not);
- a Multiboot2 header in the first 32 KiB (GRUB 2's protocol; not QEMU's);
- "\\x7fELF" at offset 0: an ELF, booted through its PVH entry note;
- anything else is refused, unless the user said `--format raw`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pykvm.vm.arch.x86.boot_state import Entry
from pykvm.vm.boot.cmdline import join_cmdline, virtio_mmio_arguments
from pykvm.vm.boot.elf import is_elf
from pykvm.vm.boot.firmware import Firmware
from pykvm.errors import ConfigError, LoaderError

__all__ = ["Kernel", "read_kernel", "load_kernel", "detect_format", "FORMATS", "read_file"]

FORMATS = ("auto", "pvh", "bzimage", "multiboot", "multiboot2", "raw")
BZIMAGE_MAGIC_OFFSET = 0x202   # boot.rst: setup header field "header" = "HdrS"
BZIMAGE_MAGIC = b"HdrS"


@dataclass(frozen=True)
class Kernel:
    """What to boot, read and checked: the kernel's bytes, its format, and what goes with it."""

    name: str                      # for messages: the kernel's path
    data: bytes
    format: str                    # one of FORMATS, never "auto"
    cmdline: str = ""
    initrd: bytes | None = None    # PVH and bzImage; a Multiboot kernel gets it as its first module
    modules: tuple = ()            # Multiboot: pykvm.vm.boot.multiboot.Module, one per file
    cmdline_extra: str = ""        # PVH and bzImage: words after the virtio-mmio ones (ip=)

    @property
    def wants_firmware(self) -> bool:
        """Every protocol but a raw flat binary expects what a PC firmware leaves (firmware.py)."""
        return self.format != "raw"


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


def read_kernel(config) -> Kernel:
    """config.kernel (and config.initrd, config.modules) read, its format found, the options checked."""
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
        return Kernel(name, data, fmt, config.cmdline, modules=_multiboot_modules(config, initrd))
    if config.modules:
        raise ConfigError("--module is for Multiboot kernels; this kernel is not one")
    if fmt == "raw" and (initrd is not None or config.cmdline):
        raise ConfigError("a raw flat binary takes no --initrd, --module or --cmdline")
    return Kernel(name, data, fmt, config.cmdline, initrd, cmdline_extra=config.cmdline_extra)


def _multiboot_modules(config, initrd: bytes | None) -> tuple:
    """A Multiboot kernel's modules: --initrd first, then each --module FILE[,ARGS]."""
    from pykvm.vm.boot.multiboot import Module

    modules = [Module(initrd, str(config.initrd))] if initrd is not None else []
    for path, args in config.modules:
        modules.append(Module(read_file(path, "module"), f"{path} {args}".rstrip()))
    return tuple(modules)


def load_kernel(memory, kernel: Kernel, firmware: Firmware | None,
                mmio_devices: list[tuple[int, int, int]] = ()) -> Entry:
    """Load `kernel` into `memory`; return where vCPU 0 starts.

    `firmware`: what the firmware step left (the RSDP's address, the e820
    map), passed on in the boot protocol's structures; None for a raw flat
    binary, which gets nothing of it.  `mmio_devices`: (base, size, irq) of
    each virtio-mmio device, described on a PVH or Linux command line.
    """
    if kernel.format == "raw":
        from pykvm.vm.boot.flat import load_flat

        return load_flat(memory, kernel.data, kernel.name)
    assert firmware is not None, f"a {kernel.format} kernel is loaded after the firmware step"
    rsdp, e820 = firmware.acpi_rsdp, firmware.e820
    if kernel.format == "multiboot":
        from pykvm.vm.boot.multiboot import load_multiboot

        return load_multiboot(memory, kernel.data, kernel.cmdline, kernel.modules, kernel.name, e820=e820)
    if kernel.format == "multiboot2":
        from pykvm.vm.boot.multiboot2 import load_multiboot2

        return load_multiboot2(memory, kernel.data, kernel.cmdline, kernel.modules, kernel.name,
                               acpi_rsdp=rsdp, e820=e820)
    extra = join_cmdline(virtio_mmio_arguments(mmio_devices), kernel.cmdline_extra)
    if kernel.format == "pvh":
        from pykvm.vm.boot.pvh import load_pvh

        return load_pvh(memory, kernel.data, kernel.cmdline, kernel.initrd, kernel.name,
                        acpi_rsdp=rsdp, cmdline_extra=extra, e820=e820)
    from pykvm.vm.boot.bzimage import load_bzimage

    return load_bzimage(memory, kernel.data, kernel.cmdline, kernel.initrd, kernel.name,
                        acpi_rsdp=rsdp, e820=e820, cmdline_extra=extra)
