"""Typed VM exits: what `Vcpu.run()` returns.

KVM reports why the vCPU stopped in `struct kvm_run` (exit_reason plus a union
of per-reason data; Documentation/virt/kvm/api.rst, "The kvm_run structure").
pykvm turns each reason into a small class, so the run loop is one `match`:

    match vcpu.run():
        case IoOut(port=port, size=size, data=data): ...
        case IoIn(port=port, size=size) as io: io.reply(value)
        case Hlt(): ...

Exits that need an answer (IoIn, MmioRead) carry `reply()`, which writes the
value back into kvm_run where KVM picks it up on the next KVM_RUN.

Every KVM_RUN returns a new exit object, so an exit a caller keeps (a trace, a
test) never changes under it; the exits without data (Hlt, Shutdown, ...) are
one shared instance each, which is the same thing, as they hold nothing.  The
reply buffers of IoIn and MmioRead point into kvm_run: a reply only counts
before the next KVM_RUN.
"""
from __future__ import annotations

__all__ = [
    "VmExit", "IoIn", "IoOut", "MmioRead", "MmioWrite", "Hlt", "Shutdown",
    "InternalError", "FailEntry", "SystemEvent", "Interrupted", "Unknown",
    "ExceptionExit", "IrqWindowOpen", "Debug",
]


class VmExit:
    """Base of every exit; `reason` is the KVM_EXIT_* name, for traces and summaries."""

    __slots__ = ()
    reason = "UNKNOWN"

    def __repr__(self) -> str:
        names = getattr(self, "_repr_fields", self.__match_args__)
        fields = ", ".join(f"{name}={_fmt(getattr(self, name))}" for name in names)
        return f"{type(self).__name__}({fields})"


def _fmt(value) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return hex(value)
    return repr(value)


class IoOut(VmExit):
    """KVM_EXIT_IO, direction out: the guest wrote `value` (`size` bytes) to `port`.

    A `rep outs` writes `count` values at once: `data` holds all of them
    (size * count bytes) and values() splits them; `value` is the first.
    """

    __slots__ = ("port", "size", "count", "value", "_data")
    __match_args__ = ("port", "size", "value")
    reason = "IO_OUT"
    _repr_fields = ("port", "size", "data")

    def __init__(self, port: int, size: int, count: int, value: int, data: bytes | None = None):
        self.port, self.size, self.count, self.value, self._data = port, size, count, value, data

    @property
    def data(self) -> bytes:
        """The bytes written, little-endian: size * count of them."""
        if self._data is None:
            return self.value.to_bytes(self.size, "little")
        return self._data

    def values(self) -> list[int]:
        """The written values, one per repetition."""
        if self.count == 1:
            return [self.value]
        s, data = self.size, self.data
        return [int.from_bytes(data[i:i + s], "little") for i in range(0, len(data), s)]


class IoIn(VmExit):
    """KVM_EXIT_IO, direction in: the guest reads `size` bytes from `port`, `count` times."""

    __slots__ = ("port", "size", "count", "_buffer")
    __match_args__ = ("port", "size")
    reason = "IO_IN"

    def __init__(self, port: int, size: int, count: int, buffer: memoryview):
        self.port, self.size, self.count, self._buffer = port, size, count, buffer

    def reply(self, value: int, index: int = 0) -> None:
        """Give the guest `value` for repetition `index` (0 unless it used `rep ins`)."""
        start = index * self.size
        self._buffer[start:start + self.size] = (value & ((1 << (8 * self.size)) - 1)).to_bytes(
            self.size, "little")


class MmioWrite(VmExit):
    """KVM_EXIT_MMIO, is_write: the guest stored `size` bytes (`data`, little-endian) at `address`."""

    __slots__ = ("address", "size", "data")
    __match_args__ = ("address", "size", "data")
    reason = "MMIO_WRITE"

    def __init__(self, address: int, size: int, data: int):
        self.address, self.size, self.data = address, size, data


class MmioRead(VmExit):
    """KVM_EXIT_MMIO, read: the guest loads `size` bytes from `address`; answer with reply()."""

    __slots__ = ("address", "size", "_buffer")
    __match_args__ = ("address", "size")
    reason = "MMIO_READ"

    def __init__(self, address: int, size: int, buffer: memoryview):
        self.address, self.size, self._buffer = address, size, buffer

    def reply(self, value: int) -> None:
        self._buffer[:self.size] = (value & ((1 << (8 * self.size)) - 1)).to_bytes(self.size, "little")


class Hlt(VmExit):
    """KVM_EXIT_HLT: the guest executed HLT (only seen without an in-kernel irqchip)."""

    __slots__ = ()
    __match_args__ = ()
    reason = "HLT"


class Shutdown(VmExit):
    """KVM_EXIT_SHUTDOWN: a triple fault (or an explicit shutdown) reset the vCPU."""

    __slots__ = ()
    __match_args__ = ()
    reason = "SHUTDOWN"


class InternalError(VmExit):
    """KVM_EXIT_INTERNAL_ERROR: KVM could not go on; `suberror` is a KVM_INTERNAL_ERROR_*.

    For emulation failures, `insn_bytes` holds the instruction KVM could not
    emulate, when the kernel reports it (KVM_CAP_INTERNAL_ERROR_DATA).
    """

    __slots__ = ("suberror", "description", "insn_bytes", "data")
    __match_args__ = ("suberror", "description")
    reason = "INTERNAL_ERROR"

    def __init__(self, suberror: int, description: str, insn_bytes: bytes, data: tuple[int, ...]):
        self.suberror, self.description, self.insn_bytes, self.data = (
            suberror, description, insn_bytes, data)


class FailEntry(VmExit):
    """KVM_EXIT_FAIL_ENTRY: the CPU refused to enter the guest (bad vCPU state)."""

    __slots__ = ("hardware_reason", "cpu")
    __match_args__ = ("hardware_reason", "cpu")
    reason = "FAIL_ENTRY"

    def __init__(self, hardware_reason: int, cpu: int):
        self.hardware_reason, self.cpu = hardware_reason, cpu


class SystemEvent(VmExit):
    """KVM_EXIT_SYSTEM_EVENT: `kind` is 'shutdown', 'reset', 'crash' or a number."""

    __slots__ = ("kind",)
    __match_args__ = ("kind",)
    reason = "SYSTEM_EVENT"

    def __init__(self, kind):
        self.kind = kind


class ExceptionExit(VmExit):
    """KVM_EXIT_EXCEPTION: an exception KVM hands to user space (rare on x86)."""

    __slots__ = ("vector", "error_code")
    __match_args__ = ("vector", "error_code")
    reason = "EXCEPTION"

    def __init__(self, vector: int, error_code: int):
        self.vector, self.error_code = vector, error_code


class Debug(VmExit):
    """KVM_EXIT_DEBUG: a debug event under KVM_SET_GUEST_DEBUG.

    `exception` is the vector (1 = #DB for single-step and debug-register
    hits, 3 = #BP for int3), `pc` the guest rip, `dr6` says which event:
    B0..B3 (bits 0-3) a debug register matched, BS (bit 14) a single step.
    """

    __slots__ = ("exception", "pc", "dr6", "dr7")
    __match_args__ = ("exception", "pc", "dr6", "dr7")
    reason = "DEBUG"

    def __init__(self, exception: int, pc: int, dr6: int, dr7: int):
        self.exception, self.pc, self.dr6, self.dr7 = exception, pc, dr6, dr7


class IrqWindowOpen(VmExit):
    """KVM_EXIT_IRQ_WINDOW_OPEN: the guest can take an interrupt now (user-space irqchip only)."""

    __slots__ = ()
    __match_args__ = ()
    reason = "IRQ_WINDOW_OPEN"


class Interrupted(VmExit):
    """KVM_RUN returned EINTR (a signal, or immediate_exit): not a guest event."""

    __slots__ = ()
    __match_args__ = ()
    reason = "INTR"


class Unknown(VmExit):
    """Any exit reason pykvm does not decode; `code` is the raw KVM_EXIT_* number."""

    __slots__ = ("code", "hardware_reason")
    __match_args__ = ("code", "hardware_reason")
    reason = "UNKNOWN"

    def __init__(self, code: int, hardware_reason: int = 0):
        self.code, self.hardware_reason = code, hardware_reason
