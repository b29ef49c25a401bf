"""Build small bzImages for tests: a real-looking setup header around any protected-mode code."""
from __future__ import annotations

import struct

__all__ = ["make_bzimage"]


def make_bzimage(version=0x020F, setup_sects=4, xloadflags=0x3, pm_size=0x4000, cmdline_size=255,
                 init_size=0x100000, pref_address=0x1000000, initrd_addr_max=0x7FFFFFFF,
                 loadflags=0x01, fill=0xFF, kernel: bytes | None = None) -> bytes:
    """Boot sector + setup sectors (header end byte 0x6a, as Linux 6.1 has) + `kernel`.

    Without `kernel`, the protected-mode part is `pm_size` bytes of a counting
    pattern.  Bytes outside the header are `fill` (0xFF, as kernels >= 6.1.88
    pad their first sector), so a loader that copies too much is caught.
    """
    setup = bytearray([fill]) * ((setup_sects + 1) * 512)
    setup[0x1F1:0x270] = bytes(0x270 - 0x1F1)
    struct.pack_into("<B", setup, 0x1F1, setup_sects)
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x200:0x202] = b"\xeb\x6a"                     # jmp: header ends at 0x202 + 0x6a
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    struct.pack_into("<B", setup, 0x211, loadflags)
    struct.pack_into("<I", setup, 0x22C, initrd_addr_max)
    struct.pack_into("<I", setup, 0x230, 0x200000)       # kernel_alignment
    struct.pack_into("<B", setup, 0x234, 1)              # relocatable
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    struct.pack_into("<Q", setup, 0x258, pref_address)
    struct.pack_into("<I", setup, 0x260, init_size)
    setup[0x26C:0x270] = b"\xff" * 4                     # past the header: must not be copied
    if kernel is None:
        kernel = bytes(range(256)) * (pm_size // 256)
    return bytes(setup) + kernel
