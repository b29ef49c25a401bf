"""The kernel command line: what the VMM adds to the user's line, and the bytes it writes.

Every loader passes the guest a command line (PVH: hvm_start_info.cmdline_paddr; Linux:
boot_params.hdr.cmd_line_ptr; Multiboot: the info structure's cmdline).  Besides what the
user gave, pykvm may add words that describe its devices: Linux's virtio_mmio.c
(CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES) reads `virtio_mmio.device=SIZE@BASE:IRQ`, the
syntax Firecracker and QEMU's microvm write, and so does the tiny kernel's driver.
After those words come any the machine adds (MachineConfig.cmdline_extra): with
`pykvm boot --net bridge`, the guest's address as Linux's `ip=` (nfsroot.rst).
PVH and the Linux boot protocol write the line at layout.CMDLINE_START, checked by
encode_cmdline.
"""
from __future__ import annotations

from pykvm.vm import layout
from pykvm.errors import LoaderError

__all__ = ["virtio_mmio_arguments", "join_cmdline", "encode_cmdline"]


def virtio_mmio_arguments(mmio_devices) -> str:
    """`virtio_mmio.device=SIZE@BASE:IRQ` per (base, size, irq) of a virtio-mmio transport."""
    return " ".join(f"virtio_mmio.device={size // 1024}K@{base:#x}:{irq}"
                    for base, size, irq in mmio_devices)


def join_cmdline(cmdline: str, extra: str) -> str:
    """`cmdline` with `extra` appended, one space between."""
    return " ".join(part for part in (cmdline, extra) if part)


def encode_cmdline(cmdline: str | bytes, kernel_max: int | None = None) -> bytes:
    """`cmdline` as the NUL-terminated bytes written at CMDLINE_START, or LoaderError.

    A NUL inside would end the line early; with its NUL the line must fit the
    CMDLINE_MAX bytes pykvm keeps for it; `kernel_max` is the longest line the
    kernel itself accepts, without the NUL (a bzImage's cmdline_size).
    """
    raw = cmdline.encode() if isinstance(cmdline, str) else bytes(cmdline)
    if b"\0" in raw:
        raise LoaderError("kernel command line contains a NUL byte")
    if kernel_max is not None and len(raw) > kernel_max:
        raise LoaderError(f"kernel command line is {len(raw)} bytes; this kernel accepts at most "
                          f"{kernel_max} (cmdline_size)")
    if len(raw) >= layout.CMDLINE_MAX:
        raise LoaderError(f"kernel command line is {len(raw)} bytes; pykvm has room for "
                          f"{layout.CMDLINE_MAX - 1}")
    return raw + b"\0"
