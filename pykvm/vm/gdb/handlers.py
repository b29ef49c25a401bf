"""One handler per packet letter, as the GDB manual's "Packets" section lists them.

Handlers.handle(payload) returns either the reply payload (bytes; b"" is the
empty reply, "not supported") or an action for the stub: Resume, Detach,
Kill.  Handlers see the target only through the stub (`target`): its
threads (one per vCPU), their registers, guest-virtual memory, and the
breakpoint slots.  A malformed packet gets an error reply (E01, E14 for
memory, E22 for a bad argument), never an exception.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass, field

from pykvm.vm.gdb import debugregs
from pykvm.vm.gdb.packets import MAX_PACKET, escape, unescape
from pykvm.vm.gdb.paging import UnmappedAddress
from pykvm.vm.gdb.tdesc import TARGET_XML, RegisterError, split_registers

__all__ = ["Handlers", "Resume", "Detach", "Kill", "STEP", "CONTINUE", "error"]

STEP, CONTINUE = "step", "continue"
OK = b"OK"
EMPTY = b""                 # "an empty response ... means the packet is not supported"
ALL_THREADS, ANY_THREAD = -1, 0
FEATURES_ANNEX = b"target.xml"
# Z/z types ("Packets": z type,addr,kind): what each asks for.
Z_SOFTWARE, Z_HARDWARE, Z_WRITE, Z_READ, Z_ACCESS = 0, 1, 2, 3, 4
WATCH_KINDS = {Z_WRITE: debugregs.WRITE, Z_ACCESS: debugregs.ACCESS}
MAX_MEMORY_REPLY = MAX_PACKET // 2     # bytes of memory per `m` reply: two hex digits each


def error(code: int) -> bytes:
    """`E NN`: an error reply, NN an errno value in hex (as gdbserver and QEMU send)."""
    return b"E%02x" % (code & 0xFF)


E_PACKET = error(1)
E_FAULT = error(errno.EFAULT)
E_INVALID = error(errno.EINVAL)
E_NO_SPACE = error(errno.ENOSPC)


@dataclass
class Resume:
    """c, s or vCont: what each thread (gdb thread id) does; `default` for the others."""

    actions: dict[int, str] = field(default_factory=dict)
    default: str | None = CONTINUE
    address: int | None = None      # c ADDR / s ADDR: resume there


@dataclass
class Detach:
    """D: remove every breakpoint, let the guest run on, drop the connection."""


@dataclass
class Kill:
    """k or vKill: end the VM.  `k` has no reply; vKill answers OK first."""

    reply: bytes | None = None


class BadPacket(Exception):
    """A packet whose arguments cannot be parsed."""


def _hex_int(text: bytes) -> int:
    try:
        return int(text, 16)
    except ValueError:
        raise BadPacket(f"{text!r} is not a hex number") from None


def _address_length(text: bytes) -> tuple[int, int]:
    address, _, length = text.partition(b",")
    return _hex_int(address), _hex_int(length)


def _thread_id(text: bytes) -> int:
    if text.startswith(b"p"):                 # multiprocess form p<pid>.<tid>
        text = text.partition(b".")[2] or b"-1"
    return ALL_THREADS if text == b"-1" else _hex_int(text)


class Handlers:
    """The packet table; `target` is the GdbStub serving one connection."""

    def __init__(self, target):
        self.target = target
        self.table = {
            "?": self.packet_stop_reason, "c": self.packet_c, "D": self.packet_D,
            "g": self.packet_g, "G": self.packet_G, "H": self.packet_H, "k": self.packet_k,
            "m": self.packet_m, "M": self.packet_M, "p": self.packet_p, "P": self.packet_P,
            "q": self.packet_q, "Q": self.packet_Q, "s": self.packet_s, "T": self.packet_T,
            "v": self.packet_v, "X": self.packet_X, "z": self.packet_z, "Z": self.packet_Z,
        }

    def handle(self, payload: bytes):
        """The reply (bytes) or action for one packet."""
        if not payload:
            return EMPTY
        handler = self.table.get(chr(payload[0]))
        if handler is None:
            return EMPTY
        try:
            return handler(payload[1:])
        except BadPacket:
            return E_PACKET

    # --- stop reason and resuming ----------------------------------------------
    def packet_stop_reason(self, args: bytes) -> bytes:
        """`?`: why the target stopped (the last stop reply)."""
        return self.target.last_stop

    def packet_c(self, args: bytes) -> Resume:
        """`c [addr]`: continue every thread."""
        return Resume({}, CONTINUE, _hex_int(args) if args else None)

    def packet_s(self, args: bytes) -> Resume:
        """`s [addr]`: single-step the Hc thread; the others stay stopped."""
        thread = self.target.continue_thread
        if thread in (ALL_THREADS, ANY_THREAD):
            thread = self.target.current_thread
        return Resume({thread: STEP}, None, _hex_int(args) if args else None)

    def packet_v(self, args: bytes):
        """`vCont?`, `vCont;action[:thread]...`, `vKill`; other v packets are unsupported."""
        if args == b"Cont?":
            return b"vCont;c;C;s;S"
        if args.startswith(b"Cont;"):
            return self._vcont(args[len(b"Cont;"):])
        if args.startswith(b"Kill"):
            return Kill(OK)
        return EMPTY

    def _vcont(self, text: bytes) -> Resume:
        resume = Resume({}, None)
        for item in text.split(b";"):
            action, _, thread = item.partition(b":")
            if not action or chr(action[0]) not in "cCsS":
                raise BadPacket(f"vCont action {item!r}")
            kind = STEP if action[:1] in (b"s", b"S") else CONTINUE
            if thread and _thread_id(thread) != ALL_THREADS:
                resume.actions.setdefault(_thread_id(thread), kind)
            elif resume.default is None:
                resume.default = kind         # "the first action that applies wins"
        return resume

    def packet_D(self, args: bytes) -> Detach:
        """`D` (or `D;pid`): detach; the guest runs on."""
        return Detach()

    def packet_k(self, args: bytes) -> Kill:
        """`k`: kill the target; no reply."""
        return Kill()

    # --- threads ----------------------------------------------------------------
    def packet_H(self, args: bytes) -> bytes:
        """`Hg id` / `Hc id`: the thread for register and memory access / for step and continue."""
        op, thread = args[:1], _thread_id(args[1:] or b"0")
        if thread not in (ALL_THREADS, ANY_THREAD) and not self.target.has_thread(thread):
            return E_INVALID
        if op == b"g":
            self.target.select_thread(thread)
        elif op == b"c":
            self.target.continue_thread = thread
        else:
            return EMPTY
        return OK

    def packet_T(self, args: bytes) -> bytes:
        """`T id`: is this thread alive?"""
        return OK if self.target.has_thread(_thread_id(args)) else E_INVALID

    # --- registers ----------------------------------------------------------------
    def packet_g(self, args: bytes) -> bytes:
        """`g`: every register of the Hg thread, in target-description order."""
        return b"".join(value.hex().encode() for value in self.target.registers().read_all())

    def packet_G(self, args: bytes) -> bytes:
        """`G XX...`: write every register (those that may change)."""
        try:
            self.target.registers().write_all(split_registers(bytes.fromhex(args.decode())))
        except (ValueError, RegisterError):
            return E_INVALID
        return OK

    def packet_p(self, args: bytes) -> bytes:
        """`p n`: register number n."""
        try:
            return self.target.registers().read(_hex_int(args)).hex().encode()
        except RegisterError:
            return E_INVALID

    def packet_P(self, args: bytes) -> bytes:
        """`P n=r`: write register n."""
        number, _, value = args.partition(b"=")
        try:
            self.target.registers().write(_hex_int(number), bytes.fromhex(value.decode()))
        except (ValueError, RegisterError):
            return E_INVALID
        return OK

    # --- memory -----------------------------------------------------------------------
    def packet_m(self, args: bytes) -> bytes:
        """`m addr,length`: read memory; a short reply where the mapping ends, E14 if none."""
        address, length = _address_length(args)
        try:
            data = self.target.read_memory(address, min(length, MAX_MEMORY_REPLY))
        except UnmappedAddress:
            return E_FAULT
        return data.hex().encode()

    def packet_M(self, args: bytes) -> bytes:
        """`M addr,length:XX...`: write memory from hex."""
        header, _, data = args.partition(b":")
        address, length = _address_length(header)
        try:
            raw = bytes.fromhex(data.decode())
        except ValueError:
            return E_PACKET
        return self._write(address, length, raw)

    def packet_X(self, args: bytes) -> bytes:
        """`X addr,length:binary`: write memory from escaped binary ("Binary Data")."""
        header, _, data = args.partition(b":")
        address, length = _address_length(header)
        return self._write(address, length, unescape(data))

    def _write(self, address: int, length: int, data: bytes) -> bytes:
        if len(data) != length:
            return E_INVALID
        try:
            self.target.write_memory(address, data)
        except UnmappedAddress:
            return E_FAULT
        return OK

    # --- breakpoints and watchpoints ----------------------------------------------------
    def packet_Z(self, args: bytes) -> bytes:
        """`Z type,addr,kind`: insert a breakpoint (0, 1) or watchpoint (2 write, 3 read, 4 access)."""
        ztype, address, kind = self._z_args(args)
        return self.target.insert_point(ztype, address, kind)

    def packet_z(self, args: bytes) -> bytes:
        """`z type,addr,kind`: remove it."""
        ztype, address, kind = self._z_args(args)
        return self.target.remove_point(ztype, address, kind)

    @staticmethod
    def _z_args(args: bytes) -> tuple[int, int, int]:
        fields = args.split(b";")[0].split(b",")
        if len(fields) != 3:
            raise BadPacket(f"Z/z needs type,addr,kind: {args!r}")
        return _hex_int(fields[0]), _hex_int(fields[1]), _hex_int(fields[2])

    # --- general queries -------------------------------------------------------------------
    def packet_q(self, args: bytes) -> bytes:
        """qSupported, qXfer:features:read, qAttached, qC, qfThreadInfo/qsThreadInfo, ..."""
        name, _, rest = args.partition(b":")
        if name == b"Supported":
            return (b"PacketSize=%x;qXfer:features:read+;QStartNoAckMode+;swbreak+;hwbreak+;"
                    b"vContSupported+" % MAX_PACKET)
        if name == b"Xfer" and rest.startswith(b"features:read:"):
            return self._features(rest[len(b"features:read:"):])
        if name == b"Attached":
            return b"1"               # attached to a running VM: gdb's `quit` detaches
        if name == b"C":
            return b"QC%02x" % self.target.current_thread
        if name == b"fThreadInfo":
            return b"m" + b",".join(b"%02x" % t for t in self.target.thread_ids())
        if name == b"sThreadInfo":
            return b"l"
        if name.startswith(b"ThreadExtraInfo,"):
            thread = _thread_id(name.partition(b",")[2])
            if not self.target.has_thread(thread):
                return E_INVALID
            return f"vCPU {thread - 1}".encode().hex().encode()
        return EMPTY

    def _features(self, text: bytes) -> bytes:
        annex, _, span = text.partition(b":")
        if annex != FEATURES_ANNEX:
            return E_INVALID
        offset, length = _address_length(span)
        chunk = TARGET_XML[offset:offset + min(length, MAX_MEMORY_REPLY)]
        more = offset + len(chunk) < len(TARGET_XML)
        return (b"m" if more else b"l") + escape(chunk)

    def packet_Q(self, args: bytes) -> bytes:
        """`QStartNoAckMode`: stop sending + and - from now on."""
        if args == b"StartNoAckMode":
            self.target.connection.ack_mode = False
            return OK
        return EMPTY
