"""The lane's proof that it runs on hardware-style KVM: int3 in guest kernel mode.

A breakpoint (int3, opcode CC) raises #BP, vector 3, delivered through the IDT
(Intel SDM vol. 3A, 6.4.2 "Software-Generated Exceptions"; 6.10-6.12 for the
IDT and the interrupt gate).  The guest here runs at CPL 0 in flat 32-bit
protected mode: its #BP handler writes a byte to one port and returns with
iretd, then the main code writes to a second port and halts.

On hardware KVM (SVM or VMX, also in the L1 lane) the CPU delivers #BP itself
and both writes arrive.  On PVM, guest kernel mode runs in KVM's instruction
emulator, which cannot emulate int3: KVM_RUN stops with
KVM_EXIT_INTERNAL_ERROR / KVM_INTERNAL_ERROR_EMULATION before the handler runs.
So the first test passes only where VM tests get hardware semantics, and the
second shows the probe can tell the difference.

Written on the raw cffi bindings (pykvm.kvm._kvm_cffi) so that the lane could
be proven before pykvm's Kvm/Vm/Vcpu layer existed.
"""
from __future__ import annotations

import mmap
import os
import struct

import pytest

from conftest import kvm_flavour

pytestmark = pytest.mark.kvm

# --- guest memory map (guest-physical) ---------------------------------------
#   0x0500  GDT: null, flat code, flat data
#   0x0600  IDT: 32 gates, only vector 3 present
#   0x1000  main code
#   0x2000  #BP handler
#   0x8000  top of stack (grows down)
MEM_SIZE = 0x10000
GDT_ADDR = 0x0500
IDT_ADDR = 0x0600
CODE_ADDR = 0x1000
HANDLER_ADDR = 0x2000
STACK_TOP = 0x8000

# --- descriptors (SDM vol. 3A 3.4.5 segment descriptors, 6.11 IDT gates) -----
GDT = struct.pack("<QQQ",
                  0x0000000000000000,     # null descriptor
                  0x00CF9A000000FFFF,     # 0x08: code, base 0, limit 4 GiB, 32-bit, DPL 0
                  0x00CF92000000FFFF)     # 0x10: data, base 0, limit 4 GiB, writable, DPL 0
CODE_SELECTOR = 0x08
DATA_SELECTOR = 0x10
IDT_ENTRIES = 32                          # the architecturally defined exceptions
INTERRUPT_GATE_32 = 0x8E                  # P=1, DPL=0, type 1110b: 32-bit interrupt gate
BP_VECTOR = 3                             # #BP, raised by int3
CR0_PE = 1 << 0                           # CR0.PE: protected mode
RFLAGS_RESERVED = 1 << 1                  # RFLAGS bit 1 always reads as 1

# --- guest code --------------------------------------------------------------
HANDLER_PORT, HANDLER_BYTE = 0x10, 0x33   # written by the #BP handler
AFTER_PORT, AFTER_BYTE = 0x11, 0x44       # written after iretd returns
HANDLER = bytes([0xB0, HANDLER_BYTE,      # mov al, 0x33
                 0xE6, HANDLER_PORT,      # out 0x10, al
                 0xCF])                   # iretd
MAIN = bytes([0xCC,                       # int3
              0xB0, AFTER_BYTE,           # mov al, 0x44
              0xE6, AFTER_PORT,           # out 0x11, al
              0xF4])                      # hlt
MAX_EXITS = 16                            # the guest needs 3; more means it went astray


def idt_gate(offset: int, selector: int) -> bytes:
    """A 32-bit interrupt gate: offset 15..0, selector, 0, type/attributes, offset 31..16."""
    return struct.pack("<HHBBH", offset & 0xFFFF, selector, 0, INTERRUPT_GATE_32, offset >> 16)


def guest_memory() -> mmap.mmap:
    mem = mmap.mmap(-1, MEM_SIZE)
    mem[GDT_ADDR:GDT_ADDR + len(GDT)] = GDT
    gate = IDT_ADDR + BP_VECTOR * 8
    mem[gate:gate + 8] = idt_gate(HANDLER_ADDR, CODE_SELECTOR)
    mem[CODE_ADDR:CODE_ADDR + len(MAIN)] = MAIN
    mem[HANDLER_ADDR:HANDLER_ADDR + len(HANDLER)] = HANDLER
    return mem


class RawVm:
    """/dev/kvm, one VM, one vCPU: just enough to run the probe (closes all fds)."""

    def __init__(self) -> None:
        from pykvm.kvm._kvm_cffi import ffi, lib
        self.ffi, self.lib = ffi, lib
        self.fds: list[int] = []
        self.kvm = self._open_fd(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
        self.vm = self._open_fd(self._ioctl(self.kvm, "KVM_CREATE_VM", 0))
        self.mem = guest_memory()
        region = ffi.new("struct kvm_userspace_memory_region *")
        region.slot, region.guest_phys_addr, region.memory_size = 0, 0, MEM_SIZE
        region.userspace_addr = int(ffi.cast("uintptr_t", ffi.from_buffer(self.mem)))
        self._ioctl(self.vm, "KVM_SET_USER_MEMORY_REGION", region)
        self.vcpu = self._open_fd(self._ioctl(self.vm, "KVM_CREATE_VCPU", 0))
        size = self._ioctl(self.kvm, "KVM_GET_VCPU_MMAP_SIZE", 0)
        self.run_map = mmap.mmap(self.vcpu, size)
        self.run = ffi.cast("struct kvm_run *", ffi.from_buffer(self.run_map))

    def _open_fd(self, fd: int) -> int:
        self.fds.append(fd)
        return fd

    def _ioctl(self, fd: int, name: str, arg) -> int:
        request = getattr(self.lib, name)
        if isinstance(arg, int):
            result = self.lib.ioctl_int(fd, request, arg)
        else:
            result = self.lib.ioctl_ptr(fd, request, arg)
        if result < 0:
            raise OSError(self.ffi.errno, f"{name}: {os.strerror(self.ffi.errno)}")
        return result

    def enter_protected_mode(self) -> None:
        """Flat 32-bit protected mode at CPL 0, paging off, IDT and GDT loaded."""
        sregs = self.ffi.new("struct kvm_sregs *")
        self._ioctl(self.vcpu, "KVM_GET_SREGS", sregs)
        sregs.gdt.base, sregs.gdt.limit = GDT_ADDR, len(GDT) - 1
        sregs.idt.base, sregs.idt.limit = IDT_ADDR, IDT_ENTRIES * 8 - 1
        sregs.cr0 |= CR0_PE
        for name in ("cs", "ds", "es", "fs", "gs", "ss"):
            seg = getattr(sregs, name)
            code = name == "cs"
            seg.base, seg.limit, seg.g, seg.db = 0, 0xFFFFFFFF, 1, 1   # flat, 4 KiB units, 32-bit
            seg.s, seg.present, seg.dpl = 1, 1, 0                     # code/data, present, ring 0
            seg.selector = CODE_SELECTOR if code else DATA_SELECTOR
            seg.type = 0xB if code else 0x3   # execute/read accessed; read/write accessed
        self._ioctl(self.vcpu, "KVM_SET_SREGS", sregs)
        regs = self.ffi.new("struct kvm_regs *")
        regs.rip, regs.rsp, regs.rflags = CODE_ADDR, STACK_TOP, RFLAGS_RESERVED
        self._ioctl(self.vcpu, "KVM_SET_REGS", regs)

    def run_to_stop(self) -> tuple[list[tuple[int, int]], int, int | None]:
        """Run until any exit but a port write: (port writes, exit reason, internal suberror)."""
        lib, run = self.lib, self.run
        writes = []
        for _ in range(MAX_EXITS):
            if lib.kvm_run(self.vcpu) < 0:
                raise OSError(self.ffi.errno, f"KVM_RUN: {os.strerror(self.ffi.errno)}")
            if run.exit_reason != lib.KVM_EXIT_IO or run.io.direction != lib.KVM_EXIT_IO_OUT:
                break
            byte = self.ffi.cast("uint8_t *", run)[run.io.data_offset]
            writes.append((run.io.port, byte))
        suberror = run.internal.suberror if run.exit_reason == lib.KVM_EXIT_INTERNAL_ERROR else None
        return writes, run.exit_reason, suberror

    def close(self) -> None:
        self.run_map.close()
        for fd in reversed(self.fds):
            os.close(fd)
        self.mem.close()


def run_probe():
    vm = RawVm()
    try:
        vm.enter_protected_mode()
        return vm.run_to_stop(), vm.lib
    finally:
        vm.close()


def test_int3_in_kernel_mode_reaches_its_handler():
    flavour = kvm_flavour()
    if flavour not in ("svm", "vmx"):
        pytest.skip(f"needs hardware-style KVM, this is {flavour}: "
                    "PVM's emulator cannot run int3 in kernel mode; run `make test-hw`")
    (writes, reason, suberror), lib = run_probe()
    assert writes == [(HANDLER_PORT, HANDLER_BYTE), (AFTER_PORT, AFTER_BYTE)], \
        f"port writes {writes}, exit reason {reason}, suberror {suberror}"
    assert reason == lib.KVM_EXIT_HLT, f"exit reason {reason}, expected KVM_EXIT_HLT"


def test_pvm_cannot_emulate_int3_in_kernel_mode():
    if kvm_flavour() != "pvm":
        pytest.skip(f"shows a limit of PVM only; this is {kvm_flavour()}")
    (writes, reason, suberror), lib = run_probe()
    assert writes == [], f"the handler ran on PVM: writes {writes}"
    assert (reason, suberror) == (lib.KVM_EXIT_INTERNAL_ERROR, lib.KVM_INTERNAL_ERROR_EMULATION), \
        f"exit reason {reason} suberror {suberror}, expected an emulation failure"
