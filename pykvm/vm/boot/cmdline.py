"""The kernel command line: what the VMM adds to the user's line.

Every loader passes the guest a command line (PVH: hvm_start_info.cmdline_paddr; Linux:
boot_params.hdr.cmd_line_ptr; Multiboot: the info structure's cmdline).  Besides what the
user gave, pykvm may add words that describe its devices: Linux's virtio_mmio.c
(CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES) reads `virtio_mmio.device=SIZE@BASE:IRQ`, the
syntax Firecracker and QEMU's microvm write, and so does the tiny kernel's driver.
"""
from __future__ import annotations

__all__ = ["virtio_mmio_arguments", "join_cmdline"]


def virtio_mmio_arguments(mmio_devices) -> str:
    """`virtio_mmio.device=SIZE@BASE:IRQ` per (base, size, irq) of a virtio-mmio transport."""
    return " ".join(f"virtio_mmio.device={size // 1024}K@{base:#x}:{irq}"
                    for base, size, irq in mmio_devices)


def join_cmdline(cmdline: str, extra: str) -> str:
    """`cmdline` with `extra` appended, one space between."""
    return " ".join(part for part in (cmdline, extra) if part)
