"""The x86-64 target description: which registers gdb sees, in which order, how wide.

GDB manual, "Target Descriptions" (and "Standard Target Features" >
"i386 Features"): the stub sends an XML document through
`qXfer:features:read:target.xml`; the order of <reg> elements is the register
numbering of the `g`, `G`, `p` and `P` packets.  gdb's amd64 support requires
the feature org.gnu.gdb.i386.core (general registers, eflags, the segment
selectors and the x87 registers); org.gnu.gdb.i386.segments adds fs_base and
gs_base.  The control registers and EFER have no standard feature: they come
in pykvm's own org.pykvm.x86.control, in gdb's "system" register group
(`info registers system`, `p/x $cr3`).

Each register is read from one KVM structure: kvm_regs (KVM_GET_REGS),
kvm_sregs (KVM_GET_SREGS) or kvm_fpu (KVM_GET_FPU).
"""
from __future__ import annotations

from dataclasses import dataclass

from pykvm.errors import PyKvmError

__all__ = ["Register", "REGISTERS", "TARGET_XML", "RegisterFile", "RegisterError"]


class RegisterError(PyKvmError):
    """A register gdb asked for does not exist here, or cannot be written."""


@dataclass(frozen=True)
class Register:
    """One <reg>: its name, width in bits, gdb type, and the KVM structure it lives in."""

    name: str
    bits: int
    type: str
    source: str            # "regs", "sregs" (segments and control), "fpu"
    feature: str


CORE, SEGMENTS, CONTROL = "org.gnu.gdb.i386.core", "org.gnu.gdb.i386.segments", "org.pykvm.x86.control"
_GENERAL = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"] + [f"r{i}" for i in range(8, 16)]
_POINTERS = {"rbp": "data_ptr", "rsp": "data_ptr"}
_SELECTORS = ["cs", "ss", "ds", "es", "fs", "gs"]
_X87_CONTROL = ["fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop"]

REGISTERS: list[Register] = (
    [Register(n, 64, _POINTERS.get(n, "int64"), "regs", CORE) for n in _GENERAL]
    + [Register("rip", 64, "code_ptr", "regs", CORE), Register("eflags", 32, "i386_eflags", "regs", CORE)]
    + [Register(n, 32, "int32", "sregs", CORE) for n in _SELECTORS]
    + [Register(f"st{i}", 80, "i387_ext", "fpu", CORE) for i in range(8)]
    + [Register(n, 32, "int", "fpu", CORE) for n in _X87_CONTROL]
    + [Register(n, 64, "int64", "sregs", SEGMENTS) for n in ("fs_base", "gs_base")]
    + [Register(n, 64, "int64", "sregs", CONTROL) for n in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer")]
)
INDEX = {r.name: i for i, r in enumerate(REGISTERS)}

# EFLAGS bits by name (SDM Vol. 1, 3.4.3), so `info registers eflags` shows [ IF ZF ].
EFLAGS_FIELDS = [("CF", 0), ("", 1), ("PF", 2), ("AF", 4), ("ZF", 6), ("SF", 7), ("TF", 8), ("IF", 9),
                 ("DF", 10), ("OF", 11), ("NT", 14), ("RF", 16), ("VM", 17), ("AC", 18), ("VIF", 19),
                 ("VIP", 20), ("ID", 21)]


def _feature_xml(feature: str) -> str:
    regs = "".join(
        f'  <reg name="{r.name}" bitsize="{r.bits}" type="{r.type}" regnum="{INDEX[r.name]}"'
        + (' group="system"' if feature == CONTROL else "") + "/>\n"
        for r in REGISTERS if r.feature == feature)
    flags = ""
    if feature == CORE:
        fields = "".join(f'    <field name="{n}" start="{b}" end="{b}"/>\n' for n, b in EFLAGS_FIELDS)
        flags = f'  <flags id="i386_eflags" size="4">\n{fields}  </flags>\n'
    return f'<feature name="{feature}">\n{flags}{regs}</feature>\n'


TARGET_XML = (
    '<?xml version="1.0"?>\n<!DOCTYPE target SYSTEM "gdb-target.dtd">\n<target version="1.0">\n'
    "<architecture>i386:x86-64</architecture>\n"
    + "".join(_feature_xml(f) for f in (CORE, SEGMENTS, CONTROL))
    + "</target>\n").encode()

# --- x87: kvm_fpu holds FXSAVE's layout (SDM Vol. 1, 10.5.1, Table 10-2) ------
X87_EMPTY, X87_VALID, X87_ZERO, X87_SPECIAL = 3, 0, 1, 2   # full tag word values (8.1.7)
X87_TOP_SHIFT = 11                                         # FSW bits 13:11, top of stack


def _x87_tag(value: bytes) -> int:
    """Classify an 80-bit register for the full tag word (SDM Vol. 1, 8.1.7)."""
    number = int.from_bytes(value[:10], "little")
    exponent, mantissa = (number >> 64) & 0x7FFF, number & ((1 << 64) - 1)
    if exponent == 0x7FFF or (exponent == 0 and mantissa != 0) or (exponent and not mantissa >> 63):
        return X87_SPECIAL
    return X87_ZERO if exponent == 0 else X87_VALID


def _full_tag_word(fpu) -> int:
    """FXSAVE keeps an abridged tag (1 bit per register); gdb wants 2 bits per register."""
    top = (fpu.fsw >> X87_TOP_SHIFT) & 7
    word = 0
    for physical in range(8):
        if fpu.ftwx & (1 << physical):
            stack_slot = (physical - top) & 7
            tag = _x87_tag(bytes(fpu.fpr[stack_slot]))
        else:
            tag = X87_EMPTY
        word |= tag << (2 * physical)
    return word


class RegisterFile:
    """Reads and writes one vCPU's registers by gdb's register number."""

    def __init__(self, vcpu):
        self.vcpu = vcpu

    def read_all(self) -> list[bytes]:
        """Every register, little-endian, in REGISTERS order (the `g` packet)."""
        regs, sregs, fpu = self.vcpu.get_regs(), self.vcpu.get_sregs(), self.vcpu.get_fpu()
        return [self._value(r, regs, sregs, fpu) for r in REGISTERS]

    def read(self, number: int) -> bytes:
        """One register (the `p` packet)."""
        return self.read_all()[self._check(number)]

    def _value(self, reg: Register, regs, sregs, fpu) -> bytes:
        width = reg.bits // 8
        if reg.source == "fpu":
            return self._fpu_value(reg.name, fpu)
        if reg.name == "eflags":
            value = regs.rflags
        elif reg.source == "regs":
            value = getattr(regs, reg.name)
        elif reg.name in _SELECTORS:
            value = getattr(sregs, reg.name).selector
        elif reg.name.endswith("_base"):
            value = getattr(sregs, reg.name[:2]).base
        else:
            value = getattr(sregs, reg.name)
        return (value & ((1 << reg.bits) - 1)).to_bytes(width, "little")

    @staticmethod
    def _fpu_value(name: str, fpu) -> bytes:
        if name.startswith("st"):
            return bytes(fpu.fpr[int(name[2:])])[:10]
        value = {"fctrl": fpu.fcw, "fstat": fpu.fsw, "ftag": _full_tag_word(fpu),
                 "fiseg": fpu.last_ip >> 32, "fioff": fpu.last_ip, "foseg": fpu.last_dp >> 32,
                 "fooff": fpu.last_dp, "fop": fpu.last_opcode}[name]
        return (value & 0xFFFFFFFF).to_bytes(4, "little")

    def write(self, number: int, data: bytes) -> None:
        """Write one register (the `P` packet): general registers, rip and eflags only.

        Selectors, bases and control registers change how the CPU reads
        memory; pykvm does not let a debugger change them behind the guest.
        """
        reg = REGISTERS[self._check(number)]
        if reg.source != "regs":
            raise RegisterError(f"{reg.name} is read-only under pykvm's gdb stub")
        if len(data) != reg.bits // 8:
            raise RegisterError(f"{reg.name} takes {reg.bits // 8} bytes, not {len(data)}")
        regs = self.vcpu.get_regs()
        setattr(regs, "rflags" if reg.name == "eflags" else reg.name, int.from_bytes(data, "little"))
        self.vcpu.set_regs(regs)

    def write_all(self, values: list[bytes]) -> None:
        """The `G` packet: general registers, rip and eflags change; the rest must not."""
        current = self.read_all()
        for number, (old, new) in enumerate(zip(current, values)):
            if old != new:
                self.write(number, new)

    @staticmethod
    def _check(number: int) -> int:
        if not 0 <= number < len(REGISTERS):
            raise RegisterError(f"no register number {number}")
        return number


def split_registers(data: bytes) -> list[bytes]:
    """Cut a `G` packet's bytes into registers; RegisterError if the length is wrong."""
    widths = [r.bits // 8 for r in REGISTERS]
    if len(data) != sum(widths):
        raise RegisterError(f"G packet has {len(data)} bytes, expected {sum(widths)}")
    out, at = [], 0
    for width in widths:
        out.append(data[at:at + width])
        at += width
    return out
