"""Raw flat binaries: a few bytes of machine code, started in 16-bit real mode.

The smallest possible guest, as in the KVM API's classic examples: the file
is copied to FLAT_LOAD and the vCPU starts there with CS base 0.  No headers,
no boot protocol: what the bytes do is all there is.
"""
from __future__ import annotations

from pykvm.vm.arch.x86.boot_state import CpuMode, Entry
from pykvm.vm import layout
from pykvm.errors import LoaderError

__all__ = ["load_flat", "FLAT_MAX"]

FLAT_MAX = layout.EBDA_START - layout.FLAT_LOAD  # real mode code must stay below the EBDA


def load_flat(memory, data: bytes, name: str = "binary") -> Entry:
    """Copy `data` to FLAT_LOAD; the guest starts there in real mode."""
    if not data:
        raise LoaderError(f"{name}: empty file")
    if len(data) > FLAT_MAX:
        raise LoaderError(f"{name}: {len(data)} bytes; a flat binary must fit in {FLAT_MAX} bytes "
                          f"between {layout.FLAT_LOAD:#x} and {layout.EBDA_START:#x}")
    memory.write(layout.FLAT_LOAD, data)
    return Entry(CpuMode.REAL, layout.FLAT_LOAD, protocol="flat binary (real mode)")
