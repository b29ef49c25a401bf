"""The SVM state a hung L1 left in its memory: every VMCB in its RAM, read from the host.

A VMCB (AMD64 APM vol. 2, appendix B) is one 4 KiB page: a control area at
offset 0 (intercepts, ASID, the last exit code, nested paging) and a state
save area at 0x400 (segments, CRs, RFLAGS, RIP, RSP, RAX).  L1's KVM keeps
one per L2 vCPU, and VMRUN stores L1's own state in a host save area (a page
of the same layout, its control area unused) that #VMEXIT reloads.

When L1 hangs, QEMU still holds its RAM (a shared memfd: -object
memory-backend-memfd).  lane.py reads it through /proc/PID/fd and lists:

    guest VMCB   a page with the VMRUN intercept set (required for VMRUN),
                 an ASID, nested paging on, page-aligned I/O and MSR
                 permission maps, an exit code SVM defines (or -1), and
                 EFER.SVME in its save area
    host save    a page whose control area is empty and whose save area
                 holds a 64-bit kernel's state with EFER.SVME (L1 at a VMRUN)

each with its saved CPL, RIP, RSP and CR3, and the RIP named with L1's KVM
symbols when it falls in a KVM module.  A guest VMCB whose RIP is an L1 KVM
address holds L1's own state: what a #VMEXIT emulated while L1 was already in
host mode would write there.
"""
from __future__ import annotations

import mmap
import os
import struct
from bisect import bisect_right
from collections.abc import Sequence
from pathlib import Path

PAGE = 4096
# Control area (APM vol. 2, table B-1)
INTERCEPT_VEC4 = 0x010           # bit 0: intercept VMRUN
IOPM_BASE, MSRPM_BASE = 0x040, 0x048   # physical addresses of the I/O and MSR permission maps
ASID = 0x058
EXIT_CODE = 0x070
NP_ENABLE = 0x090                # bit 0: nested paging
# State save area (table B-2), at 0x400
SAVE = 0x400
CS_SELECTOR = SAVE + 0x010
CPL = SAVE + 0x0CB
EFER = SAVE + 0x0D0
CR3 = SAVE + 0x150
RIP = SAVE + 0x178
RSP = SAVE + 0x1D8
EFER_SVME, EFER_LMA = 1 << 12, 1 << 10
LAST_EXIT_CODE = 0x403            # VMGEXIT, the highest exit code (table C-1)
SVM_EXIT_ERR = (0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF)   # VMRUN refused the VMCB (-1, or as QEMU 7.2 writes it)
KERNEL_HALF = 0xFFFF800000000000  # a 64-bit kernel's addresses


def guest_memfd(pid: int) -> Path | None:
    """QEMU's RAM memfd among its open files (-object memory-backend-memfd,id=mem)."""
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir():
        try:
            if os.readlink(fd).startswith("/memfd:mem"):
                return fd
        except OSError:
            continue
    return None


def kvm_symbols(path: Path) -> list[tuple[int, str]]:
    """(address, "name [module]") of the text symbols in an l1-kallsyms-N.txt, sorted."""
    symbols = []
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] in "tT":
            symbols.append((int(fields[0], 16), f"{fields[2]} {fields[3]}"))
    return sorted(symbols)


def name(address: int, symbols: Sequence[tuple[int, str]]) -> str:
    """'__svm_vcpu_run+0x9d [kvm_amd]' for an address inside L1's KVM modules, else ''."""
    at = bisect_right(symbols, (address, "\uffff")) - 1
    if at < 0 or address - symbols[at][0] > 0x10000:     # below the first, or far past the last
        return ""
    symbol, module = symbols[at][1].rsplit(" ", 1)
    return f"{symbol}+{address - symbols[at][0]:#x} {module}"


def scan(memory, symbols: Sequence[tuple[int, str]] = ()) -> list[str]:
    """A line for each guest VMCB and host save area in `memory` (a buffer of L1's RAM from
    physical address 0)."""
    lines = []

    def u16(offset): return struct.unpack_from("<H", memory, offset)[0]
    def u32(offset): return struct.unpack_from("<I", memory, offset)[0]
    def u64(offset): return struct.unpack_from("<Q", memory, offset)[0]

    for page in range(0, len(memory) - PAGE + 1, PAGE):
        efer = u64(page + EFER)
        if not efer & EFER_SVME or efer >> 16:
            continue                                   # the usual page: no EFER with SVME there
        asid, exit_code = u32(page + ASID), u64(page + EXIT_CODE)
        maps = u64(page + IOPM_BASE), u64(page + MSRPM_BASE)
        if (u32(page + INTERCEPT_VEC4) & 1 and 0 < asid <= 0xFFFF and u64(page + NP_ENABLE) == 1
                and all(base and not base % PAGE for base in maps)
                and (exit_code <= LAST_EXIT_CODE or exit_code in SVM_EXIT_ERR)):
            kind = "guest VMCB"
        elif (not any(memory[page:page + 0x100]) and efer & EFER_LMA
              and u64(page + RIP) >= KERNEL_HALF):
            kind = "host save"
        else:
            continue
        rip = u64(page + RIP)
        where = name(rip, symbols)
        lines.append(f"{kind} at {page:#x}: asid {asid}, exit code {exit_code:#x}, "
                     f"cs {u16(page + CS_SELECTOR):#x} cpl {memory[page + CPL]}, rip {rip:#x}"
                     f"{f' ({where})' if where else ''}, rsp {u64(page + RSP):#x}, "
                     f"cr3 {u64(page + CR3):#x}"
                     + ("  <- L1's KVM code in a guest's saved state" if where and kind == "guest VMCB" else ""))
    return lines


def scan_qemu(pid: int, symbols_file: Path | None) -> list[str]:
    """scan() of the RAM of the QEMU process `pid`; a line saying why not, if it cannot."""
    path = guest_memfd(pid)
    if path is None:
        return [f"no RAM memfd among QEMU {pid}'s files"]
    symbols = kvm_symbols(symbols_file) if symbols_file and symbols_file.exists() else []
    with open(path, "rb") as ram, mmap.mmap(ram.fileno(), 0, prot=mmap.PROT_READ) as memory:
        lines = scan(memory, symbols)
    return lines or ["no VMCB found in L1's RAM"]
