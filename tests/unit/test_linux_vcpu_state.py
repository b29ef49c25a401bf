"""The vCPU state a firmware would leave for Linux: MSRs and the LAPIC's LINT pins."""
from __future__ import annotations

import struct

from pykvm.vm.arch.x86 import lapic, msrs


def test_lint0_extint_lint1_nmi_unmasked_and_rest_kept():
    page = bytearray(1024)
    struct.pack_into("<I", page, 0x350, 0x00010000)          # KVM's reset value: masked
    struct.pack_into("<I", page, 0x360, 0x00010000)
    struct.pack_into("<I", page, 0x320, 0x000100EF)          # LVT timer: must be left alone
    out = lapic.virtual_wire(bytes(page))
    assert struct.unpack_from("<I", out, 0x350)[0] == 0x700
    assert struct.unpack_from("<I", out, 0x360)[0] == 0x400
    assert struct.unpack_from("<I", out, 0x320)[0] == 0x000100EF
    assert len(out) == 1024


def test_boot_msrs():
    values = msrs.boot_msrs()
    assert values[msrs.IA32_MISC_ENABLE] & 1                  # fast strings
    assert values[msrs.IA32_MTRR_DEF_TYPE] == 0x806           # MTRRs on, default write-back
    assert values[msrs.IA32_LSTAR] == values[msrs.IA32_STAR] == values[msrs.IA32_SYSENTER_EIP] == 0
