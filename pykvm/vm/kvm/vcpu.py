"""Vcpu: one virtual CPU's file descriptor and its shared `struct kvm_run` page.

KVM_RUN enters the guest and returns when the guest does something the kernel
leaves to user space.  The reason and its data sit in `struct kvm_run`, which
we mmap from the vCPU fd once; `run()` decodes it into a typed exit
(pykvm.vm.kvm.exits).  This is the hot path of the whole VMM (one call per exit,
~100k per second), so it reads kvm_run with precompiled struct formats whose
offsets come from the compiler (see the checks under _check_layouts).
"""
from __future__ import annotations

import errno
import mmap
import os
import struct

from pykvm.errors import KvmIoctlError
from pykvm.vm.kvm import exits
from pykvm.vm.kvm.bindings import ffi, lib
from pykvm.vm.kvm.fd import FdObject

__all__ = ["Vcpu"]

# --- struct kvm_run layout, from the compiled header -------------------------
RUN_IMMEDIATE_EXIT = ffi.offsetof("struct kvm_run", "immediate_exit")
RUN_EXIT_REASON = ffi.offsetof("struct kvm_run", "exit_reason")
RUN_IO = ffi.offsetof("struct kvm_run", "io")
RUN_MMIO = ffi.offsetof("struct kvm_run", "mmio")
RUN_FAIL_ENTRY = ffi.offsetof("struct kvm_run", "fail_entry")
RUN_HW = ffi.offsetof("struct kvm_run", "hw")
RUN_EX = ffi.offsetof("struct kvm_run", "ex")
RUN_INTERNAL = ffi.offsetof("struct kvm_run", "internal")
RUN_EMULATION = ffi.offsetof("struct kvm_run", "emulation_failure")
RUN_SYSTEM_EVENT = ffi.offsetof("struct kvm_run", "system_event")
RUN_DEBUG = ffi.offsetof("struct kvm_run", "debug")

U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
IO = struct.Struct("<BBHIQ")        # kvm_run.io: direction, size, port, count, data_offset
# exit_reason and the io union member in one read: the hot path's common case.
REASON_AND_IO = struct.Struct(f"<{RUN_EXIT_REASON}xI{RUN_IO - RUN_EXIT_REASON - 4}xBBHIQ")
MMIO = struct.Struct("<Q8sIB")      # kvm_run.mmio: phys_addr, data[8], len, is_write
IO_VALUE = {1: struct.Struct("<B"), 2: struct.Struct("<H"), 4: struct.Struct("<I")}  # by size
TWO_U32 = struct.Struct("<II")      # ex, internal and system_event heads
FAIL_ENTRY = struct.Struct("<QI")   # fail_entry: hardware_entry_failure_reason, cpu
DEBUG = struct.Struct("<I4xQQQ")    # debug.arch: exception, pc, dr6, dr7


def _check_layouts() -> None:
    """The struct formats above must agree with the compiler's layout of <linux/kvm.h>."""
    def offsets(ctype, fields):
        return [ffi.offsetof(ctype, f) for f in fields]

    assert offsets("kvm_run_io_t", ["direction", "size", "port", "count", "data_offset"]) == [0, 1, 2, 4, 8]
    assert offsets("kvm_run_mmio_t", ["phys_addr", "data", "len", "is_write"]) == [0, 8, 16, 20]
    assert offsets("kvm_run_fail_entry_t", ["hardware_entry_failure_reason", "cpu"]) == [0, 8]
    assert offsets("kvm_run_internal_t", ["suberror", "ndata", "data"]) == [0, 4, 8]
    assert offsets("kvm_run_emulation_failure_t", ["flags", "insn_size", "insn_bytes"]) == [8, 16, 17]
    assert offsets("kvm_run_system_event_t", ["type", "ndata", "data"]) == [0, 4, 8]
    assert offsets("struct kvm_debug_exit_arch", ["exception", "pc", "dr6", "dr7"]) == [0, 8, 16, 24]
    assert U32.size == ffi.sizeof("__u32") and IO.size == ffi.sizeof("kvm_run_io_t")
    assert REASON_AND_IO.size == RUN_IO + IO.size


_check_layouts()

MAX_CPUID_ENTRIES = 256         # upper bound on CPUID leaves we ask for; KVM answers E2BIG if it has more

INTERNAL_ERRORS = {
    lib.KVM_INTERNAL_ERROR_EMULATION: "emulation failure",
    lib.KVM_INTERNAL_ERROR_SIMUL_EX: "exception while delivering an exception",
    lib.KVM_INTERNAL_ERROR_DELIVERY_EV: "exit while delivering an event",
    lib.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: "unexpected hardware exit reason",
}
SYSTEM_EVENTS = {
    lib.KVM_SYSTEM_EVENT_SHUTDOWN: "shutdown",
    lib.KVM_SYSTEM_EVENT_RESET: "reset",
    lib.KVM_SYSTEM_EVENT_CRASH: "crash",
}
# Exits without data: one shared instance each.
HLT = exits.Hlt()
SHUTDOWN = exits.Shutdown()
INTERRUPTED = exits.Interrupted()
IRQ_WINDOW_OPEN = exits.IrqWindowOpen()

_kvm_run = lib.kvm_run
_kvm_run_answering = lib.kvm_run_answering
EXIT_IO = lib.KVM_EXIT_IO
EXIT_IO_OUT = lib.KVM_EXIT_IO_OUT
EXIT_MMIO = lib.KVM_EXIT_MMIO


class Vcpu(FdObject):
    """A vCPU created by Vm.create_vcpu()."""

    def __init__(self, fd: int, vm, vcpu_id: int):
        super().__init__(fd)
        self.vm = vm
        self.id = vcpu_id
        size = vm.kvm.vcpu_mmap_size()
        self._run_map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._run = memoryview(self._run_map)
        self._enter = lambda: _kvm_run(fd)          # answer_in_c() may replace it
        self._answered = None
        self.answered_counts = ffi.new("struct answered_counts *")
        self._decoders = {
            lib.KVM_EXIT_HLT: lambda: HLT,
            lib.KVM_EXIT_SHUTDOWN: lambda: SHUTDOWN,
            lib.KVM_EXIT_INTR: lambda: INTERRUPTED,
            lib.KVM_EXIT_IRQ_WINDOW_OPEN: lambda: IRQ_WINDOW_OPEN,
            lib.KVM_EXIT_INTERNAL_ERROR: self._internal_error,
            lib.KVM_EXIT_FAIL_ENTRY: self._fail_entry,
            lib.KVM_EXIT_SYSTEM_EVENT: self._system_event,
            lib.KVM_EXIT_EXCEPTION: self._exception,
            lib.KVM_EXIT_DEBUG: self._debug,
        }

    # --- KVM_RUN and the exit decoders ---------------------------------------
    def run(self) -> exits.VmExit:
        """Wraps KVM_RUN: run the guest until its next exit, and return that exit, typed.

        Each call returns a new exit (a small object; a `rep outs` keeps its
        bytes as a copy), so an exit kept by a caller never changes under it.
        Only the reply() of IoIn and MmioRead writes into kvm_run, and counts
        until the next run() (and, inside run(), the registers answer_in_c() answers).
        """
        if self._enter() < 0:
            err = ffi.errno
            if err in (errno.EINTR, errno.EAGAIN):
                return INTERRUPTED
            raise KvmIoctlError("KVM_RUN", err)
        run = self._run
        reason, direction, size, port, count, offset = REASON_AND_IO.unpack_from(run)
        if reason == EXIT_IO:
            end = offset + size * count
            if direction == EXIT_IO_OUT:
                if count == 1:
                    return exits.IoOut(port, size, 1, IO_VALUE[size].unpack_from(run, offset)[0])
                data = self._run_map[offset:end]        # rep outs: every byte, as bytes
                return exits.IoOut(port, size, count, int.from_bytes(data[:size], "little"), data)
            return exits.IoIn(port, size, count, run[offset:end])
        if reason == EXIT_MMIO:
            address, data, length, is_write = MMIO.unpack_from(run, RUN_MMIO)
            if is_write:
                return exits.MmioWrite(address, length, int.from_bytes(data[:length], "little"))
            data_at = RUN_MMIO + 8
            return exits.MmioRead(address, length, run[data_at:data_at + 8])
        decode = self._decoders.get(reason)
        if decode is None:
            return exits.Unknown(reason, U64.unpack_from(run, RUN_HW)[0])
        return decode()

    def answer_in_c(self, registers: list[tuple[int, int, object]]) -> None:
        """From now on, run() answers these registers in C and never returns for them.

        Each is (guest physical address, lib.ANSWER_READ or lib.ANSWER_WRITE_CLEARS,
        a `uint32_t *`): an aligned 4-byte load there reads the word; a store clears the
        bits it writes (answered.c says why).  `answered_counts` adds them up.  An empty
        list goes back to plain KVM_RUN.

        Two things follow: while the guest makes only answered exits, run() does not
        return, so a Python signal handler waits for the next exit or kick (pykvm runs
        vCPUs on their own threads; a kick sets immediate_exit); and C reads kvm_run with
        no Python check in between, so close() must wait until no thread is in run()
        (Machine.run waits for every vCPU thread before the machine closes)."""
        fd = self.fd                      # (the lambdas hold no `self`)
        if not registers:
            self._enter, self._answered = (lambda: _kvm_run(fd)), None
            return
        table = ffi.new("struct answered_register[]", len(registers))
        for entry, (address, kind, word) in zip(table, registers):
            entry.address, entry.kind, entry.word = address, kind, word
        buffer = ffi.from_buffer(self._run_map)
        run = ffi.cast("struct kvm_run *", buffer)
        words = tuple(word for _, _, word in registers)   # the caller's list may change
        self._answered = (table, words, buffer)           # kept alive while C uses them
        count, counts = len(table), self.answered_counts
        self._enter = lambda: _kvm_run_answering(fd, run, table, count, counts)

    def _internal_error(self) -> exits.InternalError:
        suberror, ndata = TWO_U32.unpack_from(self._run, RUN_INTERNAL)
        ndata = min(ndata, 16)
        data = struct.unpack_from(f"<{ndata}Q", self._run, RUN_INTERNAL + 8)
        insn = b""
        if suberror == lib.KVM_INTERNAL_ERROR_EMULATION and ndata >= 3:
            flags = U64.unpack_from(self._run, RUN_EMULATION + 8)[0]
            if flags & lib.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES:
                size = min(self._run[RUN_EMULATION + 16], 15)
                insn = bytes(self._run[RUN_EMULATION + 17:RUN_EMULATION + 17 + size])
        return exits.InternalError(suberror, INTERNAL_ERRORS.get(suberror, f"suberror {suberror}"),
                                   insn, data)

    def _fail_entry(self) -> exits.FailEntry:
        return exits.FailEntry(*FAIL_ENTRY.unpack_from(self._run, RUN_FAIL_ENTRY))

    def _system_event(self) -> exits.SystemEvent:
        kind = U32.unpack_from(self._run, RUN_SYSTEM_EVENT)[0]
        return exits.SystemEvent(SYSTEM_EVENTS.get(kind, kind))

    def _exception(self) -> exits.ExceptionExit:
        return exits.ExceptionExit(*TWO_U32.unpack_from(self._run, RUN_EX))

    def _debug(self) -> exits.Debug:
        return exits.Debug(*DEBUG.unpack_from(self._run, RUN_DEBUG))

    @property
    def immediate_exit(self) -> bool:
        """kvm_run.immediate_exit (KVM_CAP_IMMEDIATE_EXIT): when set, KVM_RUN returns EINTR at once."""
        return bool(self._run[RUN_IMMEDIATE_EXIT])

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        self._run[RUN_IMMEDIATE_EXIT] = 1 if value else 0

    # --- registers -------------------------------------------------------------
    def get_regs(self):
        """Wraps KVM_GET_REGS: the general-purpose registers, as a `struct kvm_regs *`."""
        regs = ffi.new("struct kvm_regs *")
        self._ioctl("KVM_GET_REGS", regs)
        return regs

    def set_regs(self, regs) -> None:
        """Wraps KVM_SET_REGS."""
        self._ioctl("KVM_SET_REGS", regs)

    def get_sregs(self):
        """Wraps KVM_GET_SREGS: segment, control and descriptor-table registers."""
        sregs = ffi.new("struct kvm_sregs *")
        self._ioctl("KVM_GET_SREGS", sregs)
        return sregs

    def set_sregs(self, sregs) -> None:
        """Wraps KVM_SET_SREGS."""
        self._ioctl("KVM_SET_SREGS", sregs)

    def get_fpu(self):
        """Wraps KVM_GET_FPU: x87/SSE state (fcw, mxcsr, ...)."""
        fpu = ffi.new("struct kvm_fpu *")
        self._ioctl("KVM_GET_FPU", fpu)
        return fpu

    def set_fpu(self, fpu) -> None:
        """Wraps KVM_SET_FPU."""
        self._ioctl("KVM_SET_FPU", fpu)

    def set_cpuid(self, entries) -> None:
        """Wraps KVM_SET_CPUID2 (KVM_CAP_EXT_CPUID): what CPUID returns inside the guest.

        `entries` are CpuidEntry tuples (see Kvm.supported_cpuid).  Must come
        before KVM_SET_MSRS: KVM checks some MSRs against the CPUID it was given.
        """
        cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": len(entries), "entries": len(entries)})
        for slot, e in zip(cpuid.entries, entries):
            slot.function, slot.index, slot.flags = e.function, e.index, e.flags
            slot.eax, slot.ebx, slot.ecx, slot.edx = e.eax, e.ebx, e.ecx, e.edx
        self._ioctl("KVM_SET_CPUID2", cpuid)

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        """Wraps KVM_GET_MSRS: read model-specific registers by index."""
        msrs = ffi.new("struct kvm_msrs *", {"nmsrs": len(indices), "entries": len(indices)})
        for slot, index in zip(msrs.entries, indices):
            slot.index = index
        done = self._ioctl("KVM_GET_MSRS", msrs)
        return {e.index: e.data for e in msrs.entries[0:done]}

    def set_msrs(self, values: dict[int, int]) -> None:
        """Wraps KVM_SET_MSRS: write model-specific registers; all of them or an error."""
        msrs = ffi.new("struct kvm_msrs *", {"nmsrs": len(values), "entries": len(values)})
        for slot, (index, data) in zip(msrs.entries, values.items()):
            slot.index, slot.data = index, data
        done = self._ioctl("KVM_SET_MSRS", msrs)
        if done != len(values):
            bad = list(values)[done]
            raise KvmIoctlError("KVM_SET_MSRS", errno.EINVAL, f"MSR {bad:#x} refused")

    def get_mp_state(self) -> int:
        """Wraps KVM_GET_MP_STATE (KVM_CAP_MP_STATE): KVM_MP_STATE_RUNNABLE, _HALTED, ...

        With an in-kernel irqchip, HLT is handled by KVM: the vCPU sleeps in
        the kernel and this is where user space can see it (api.rst 4.38).
        """
        state = ffi.new("struct kvm_mp_state *")
        self._ioctl("KVM_GET_MP_STATE", state)
        return state.mp_state

    def stats(self) -> dict[str, int]:
        """Wraps KVM_GET_STATS_FD (KVM_CAP_BINARY_STATS_FD): KVM's counters for this vCPU
        (`exits`, `mmio_exits`, `io_exits`, `halt_exits`, ...; see pykvm.vm.kvm.stats)."""
        from pykvm.vm.kvm.stats import read_stats

        fd = self._ioctl_int("KVM_GET_STATS_FD")
        try:
            return read_stats(fd)
        finally:
            os.close(fd)

    def get_lapic(self) -> bytearray:
        """Wraps KVM_GET_LAPIC: the local APIC's 1 KiB register page."""
        state = ffi.new("struct kvm_lapic_state *")
        self._ioctl("KVM_GET_LAPIC", state)
        return bytearray(ffi.buffer(state.regs))

    def set_lapic(self, regs: bytes) -> None:
        """Wraps KVM_SET_LAPIC."""
        state = ffi.new("struct kvm_lapic_state *")
        ffi.buffer(state.regs)[:] = bytes(regs)
        self._ioctl("KVM_SET_LAPIC", state)

    def get_cpuid(self) -> bytes:
        """Wraps KVM_GET_CPUID2: the CPUID table this vCPU was given, as `struct kvm_cpuid2` bytes
        (its header, then MAX_CPUID_ENTRIES entry slots of which `nent` are used)."""
        cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": MAX_CPUID_ENTRIES, "entries": MAX_CPUID_ENTRIES})
        self._ioctl("KVM_GET_CPUID2", cpuid)
        return bytes(ffi.buffer(cpuid, ffi.sizeof("struct kvm_cpuid2")
                                + cpuid.nent * ffi.sizeof("struct kvm_cpuid_entry2")))

    def set_cpuid_bytes(self, data: bytes) -> None:
        """Wraps KVM_SET_CPUID2 with a `struct kvm_cpuid2` as get_cpuid() returned it."""
        cpuid = ffi.new("char[]", bytes(data))
        self._ioctl("KVM_SET_CPUID2", ffi.cast("struct kvm_cpuid2 *", cpuid))

    def get_xsave(self) -> bytes:
        """Wraps KVM_GET_XSAVE (KVM_CAP_XSAVE): x87, SSE, AVX... state in the XSAVE layout, 4 KiB."""
        return self._ioctl_get("KVM_GET_XSAVE", "struct kvm_xsave")

    def set_xsave(self, data: bytes) -> None:
        """Wraps KVM_SET_XSAVE (KVM_CAP_XSAVE)."""
        self._ioctl_set("KVM_SET_XSAVE", "struct kvm_xsave", data)

    def get_xcrs(self) -> bytes:
        """Wraps KVM_GET_XCRS (KVM_CAP_XCRS): the extended control registers (XCR0: which state XSAVE keeps)."""
        return self._ioctl_get("KVM_GET_XCRS", "struct kvm_xcrs")

    def set_xcrs(self, data: bytes) -> None:
        """Wraps KVM_SET_XCRS (KVM_CAP_XCRS)."""
        self._ioctl_set("KVM_SET_XCRS", "struct kvm_xcrs", data)

    def get_fpu_bytes(self) -> bytes:
        """Wraps KVM_GET_FPU as bytes: the x87/SSE state, where XSAVE is absent."""
        return self._ioctl_get("KVM_GET_FPU", "struct kvm_fpu")

    def set_fpu_bytes(self, data: bytes) -> None:
        """Wraps KVM_SET_FPU with bytes from get_fpu_bytes()."""
        self._ioctl_set("KVM_SET_FPU", "struct kvm_fpu", data)

    def get_vcpu_events(self) -> bytes:
        """Wraps KVM_GET_VCPU_EVENTS (KVM_CAP_VCPU_EVENTS): pending exception, interrupt, NMI, SIPI."""
        return self._ioctl_get("KVM_GET_VCPU_EVENTS", "struct kvm_vcpu_events")

    def set_vcpu_events(self, data: bytes) -> None:
        """Wraps KVM_SET_VCPU_EVENTS (KVM_CAP_VCPU_EVENTS)."""
        self._ioctl_set("KVM_SET_VCPU_EVENTS", "struct kvm_vcpu_events", data)

    def get_debugregs(self) -> bytes:
        """Wraps KVM_GET_DEBUGREGS (KVM_CAP_DEBUGREGS): the guest's DR0-DR3, DR6, DR7."""
        return self._ioctl_get("KVM_GET_DEBUGREGS", "struct kvm_debugregs")

    def set_debugregs(self, data: bytes) -> None:
        """Wraps KVM_SET_DEBUGREGS (KVM_CAP_DEBUGREGS)."""
        self._ioctl_set("KVM_SET_DEBUGREGS", "struct kvm_debugregs", data)

    # --- debugging -----------------------------------------------------------
    def set_guest_debug(self, control: int, debugreg: list[int] | None = None) -> None:
        """Wraps KVM_SET_GUEST_DEBUG (KVM_CAP_SET_GUEST_DEBUG): how KVM stops this vCPU for a debugger.

        `control` is KVM_GUESTDBG_* bits (ENABLE, SINGLESTEP, USE_HW_BP, ...);
        `debugreg` the eight values DR0..DR7 that KVM loads while the guest
        runs under USE_HW_BP (DR4 and DR5 unused).  Control 0 gives the guest
        its own debug registers back.
        """
        debug = ffi.new("struct kvm_guest_debug *")
        debug.control = control
        for i, value in enumerate(debugreg or ()):
            debug.arch.debugreg[i] = value
        self._ioctl("KVM_SET_GUEST_DEBUG", debug)

    def translate(self, linear_address: int):
        """Wraps KVM_TRANSLATE: guest-virtual to guest-physical through the vCPU's current paging.

        Returns the `struct kvm_translation *` (physical_address, valid,
        writeable, usermode).
        """
        translation = ffi.new("struct kvm_translation *")
        translation.linear_address = linear_address
        self._ioctl("KVM_TRANSLATE", translation)
        return translation

    def set_mp_state(self, mp_state: int) -> None:
        """Wraps KVM_SET_MP_STATE (KVM_CAP_MP_STATE); e.g. KVM_MP_STATE_INIT_RECEIVED = wait for SIPI."""
        state = ffi.new("struct kvm_mp_state *", {"mp_state": mp_state})
        self._ioctl("KVM_SET_MP_STATE", state)

    def close(self) -> None:
        self._enter = lambda: _kvm_run(-1)             # EBADF, even if the fd's number is reused
        if getattr(self, "_answered", None) is not None:
            ffi.release(self._answered[2])          # answer_in_c()'s view of kvm_run
            self._answered = None
        if getattr(self, "_run", None) is not None:
            self._run.release()
            self._run = None
            try:
                self._run_map.close()
            except BufferError:
                pass  # an exit object still holds a view; the map goes with it
        super().close()
