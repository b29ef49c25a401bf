"""A small AML encoder: ACPI Machine Language terms, one class per term.

Spec: ACPI 6.5, chapter 20 "ACPI Machine Language (AML) Specification"
(20.2 the grammar) and 6.4 "Resource Data Types for ACPI" (the descriptors
inside a ResourceTemplate).  rust-vmm's acpi_tables::aml is the model: each
term is a value with to_aml_bytes(), so a DSDT is written as values that
read like the ASL they encode:

    Scope("\\\\_SB_", [
        Device("VR00", [
            Name("_HID", String("LNRO0005")),      # ASL: Name (_HID, "LNRO0005")
            Name("_UID", Integer(0)),
            Name("_CRS", ResourceTemplate([
                Memory32Fixed(0xD0000000, 0x1000),
                Interrupt(5),
            ])),
        ]),
    ])

"LNRO0005" is the ACPI ID Linux's virtio_mmio driver matches (its
of/acpi table), the one QEMU's microvm DSDT uses for virtio-mmio.
"""
from __future__ import annotations

import struct

__all__ = ["Term", "Integer", "String", "Name", "Device", "Scope", "Package", "ResourceTemplate",
           "Memory32Fixed", "Interrupt", "pkg_length", "name_string", "virtio_mmio_device"]

# 20.2 opcodes
ZERO_OP, ONE_OP, ONES_OP = 0x00, 0x01, 0xFF
BYTE_PREFIX, WORD_PREFIX, DWORD_PREFIX, STRING_PREFIX, QWORD_PREFIX = 0x0A, 0x0B, 0x0C, 0x0D, 0x0E
NAME_OP = 0x08
SCOPE_OP = 0x10
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
EXT_OP_PREFIX = 0x5B
DEVICE_OP = 0x82                       # after EXT_OP_PREFIX
ROOT_CHAR = ord("\\")
DUAL_NAME_PREFIX, MULTI_NAME_PREFIX = 0x2E, 0x2F
NAME_SEG = 4                           # a NameSeg is 4 characters, padded with '_'

# 6.4 resource descriptors
MEMORY32_FIXED_TAG = 0x86              # large item 0x06
MEMORY32_FIXED_LENGTH = 9
MEMORY_READ_WRITE = 1
EXTENDED_INTERRUPT_TAG = 0x89          # large item 0x09
INTERRUPT_CONSUMER = 1 << 0            # the device consumes the interrupt
INTERRUPT_EDGE = 1 << 1                # 0 = level-triggered
INTERRUPT_ACTIVE_LOW = 1 << 2          # 0 = active-high
INTERRUPT_SHARED = 1 << 3              # 0 = exclusive
END_TAG = bytes([0x79, 0x00])          # small item 0x0F, checksum 0 ("treat as correct")

# pkg_length (20.2.4): one byte up to 63, else 1-3 more bytes, the lead byte saying how many
PKG_LENGTH_LIMITS = (1 << 6, 1 << 12, 1 << 20, 1 << 28)


class Term:
    """Anything that encodes to AML."""

    def to_aml_bytes(self) -> bytes:
        raise NotImplementedError


def pkg_length(payload: int) -> bytes:
    """The PkgLength of a term whose body is `payload` bytes: the length counts itself."""
    for extra, limit in enumerate(PKG_LENGTH_LIMITS):
        total = payload + 1 + extra
        if total < limit:
            if extra == 0:
                return bytes([total])
            rest = (total >> 4).to_bytes(extra, "little")
            return bytes([(extra << 6) | (total & 0x0F)]) + rest
    raise ValueError(f"AML package of {payload} bytes is too long")


def name_string(name: str) -> bytes:
    """20.2.2 NameString: optional root '\\', then NameSegs (dotted), padded to 4 characters."""
    prefix = b""
    if name.startswith("\\"):
        prefix, name = bytes([ROOT_CHAR]), name[1:]
    segments = [s.ljust(NAME_SEG, "_").encode("ascii") for s in name.split(".")] if name else []
    if any(len(s) != NAME_SEG for s in segments):
        raise ValueError(f"AML name {name!r}: each segment is at most {NAME_SEG} characters")
    if len(segments) == 2:
        return prefix + bytes([DUAL_NAME_PREFIX]) + b"".join(segments)
    if len(segments) > 2:
        return prefix + bytes([MULTI_NAME_PREFIX, len(segments)]) + b"".join(segments)
    return prefix + b"".join(segments)


class Integer(Term):
    """20.2.3 ComputationalData: the shortest encoding of an integer."""

    def __init__(self, value: int):
        self.value = value

    def to_aml_bytes(self) -> bytes:
        v = self.value
        if v in (0, 1):
            return bytes([ZERO_OP if v == 0 else ONE_OP])
        for prefix, fmt, limit in ((BYTE_PREFIX, "<B", 1 << 8), (WORD_PREFIX, "<H", 1 << 16),
                                   (DWORD_PREFIX, "<I", 1 << 32), (QWORD_PREFIX, "<Q", 1 << 64)):
            if 0 <= v < limit:
                return bytes([prefix]) + struct.pack(fmt, v)
        raise ValueError(f"AML integer {v} out of range")


class String(Term):
    """A String constant: StringPrefix, ASCII, NUL."""

    def __init__(self, text: str):
        self.text = text

    def to_aml_bytes(self) -> bytes:
        return bytes([STRING_PREFIX]) + self.text.encode("ascii") + b"\0"


class Name(Term):
    """DefName: Name (NAME, value)."""

    def __init__(self, name: str, value: Term):
        self.name, self.value = name, value

    def to_aml_bytes(self) -> bytes:
        return bytes([NAME_OP]) + name_string(self.name) + self.value.to_aml_bytes()


class Package(Term):
    """DefPackage: Package (n) { elements }."""

    def __init__(self, elements: list[Term]):
        self.elements = elements

    def to_aml_bytes(self) -> bytes:
        body = bytes([len(self.elements)]) + b"".join(e.to_aml_bytes() for e in self.elements)
        return bytes([PACKAGE_OP]) + pkg_length(len(body)) + body


class _Block(Term):
    """A named term holding other terms: OPCODE PkgLength NameString TermList."""

    opcode = b""

    def __init__(self, name: str, terms: list[Term]):
        self.name, self.terms = name, terms

    def to_aml_bytes(self) -> bytes:
        body = name_string(self.name) + b"".join(t.to_aml_bytes() for t in self.terms)
        return self.opcode + pkg_length(len(body)) + body


class Scope(_Block):
    """DefScope: Scope (NAME) { terms }."""

    opcode = bytes([SCOPE_OP])


class Device(_Block):
    """DefDevice: Device (NAME) { terms }."""

    opcode = bytes([EXT_OP_PREFIX, DEVICE_OP])


class Memory32Fixed(Term):
    """6.4.3.4 32-Bit Fixed Memory Range Descriptor: Memory32Fixed (ReadWrite, base, length)."""

    def __init__(self, base: int, length: int, writable: bool = True):
        self.base, self.length, self.writable = base, length, writable

    def to_aml_bytes(self) -> bytes:
        return struct.pack("<BHBII", MEMORY32_FIXED_TAG, MEMORY32_FIXED_LENGTH,
                           MEMORY_READ_WRITE if self.writable else 0, self.base, self.length)


class Interrupt(Term):
    """6.4.3.6 Extended Interrupt Descriptor: Interrupt (ResourceConsumer, Edge, ActiveHigh,
    Exclusive) { irq }.  Edge: pykvm's irqfd and KVM_IRQ_LINE pulses are edges."""

    def __init__(self, irq: int, edge: bool = True):
        self.irq, self.edge = irq, edge

    def to_aml_bytes(self) -> bytes:
        flags = INTERRUPT_CONSUMER | (INTERRUPT_EDGE if self.edge else 0)
        return struct.pack("<BHBBI", EXTENDED_INTERRUPT_TAG, 2 + 4, flags, 1, self.irq)


class ResourceTemplate(Term):
    """A Buffer of resource descriptors closed by an End Tag (ASL's ResourceTemplate)."""

    def __init__(self, descriptors: list[Term]):
        self.descriptors = descriptors

    def to_aml_bytes(self) -> bytes:
        data = b"".join(d.to_aml_bytes() for d in self.descriptors) + END_TAG
        body = Integer(len(data)).to_aml_bytes() + data
        return bytes([BUFFER_OP]) + pkg_length(len(body)) + body


VIRTIO_MMIO_HID = "LNRO0005"           # Linux virtio_mmio's ACPI match, as QEMU microvm


def virtio_mmio_device(index: int, base: int, size: int, irq: int) -> Device:
    """One virtio-mmio transport, as QEMU microvm's DSDT describes it (device VRnn)."""
    return Device(f"VR{index:02X}", [
        Name("_HID", String(VIRTIO_MMIO_HID)),
        Name("_UID", Integer(index)),
        Name("_CCA", Integer(1)),      # cache-coherent DMA (6.2.17)
        Name("_CRS", ResourceTemplate([Memory32Fixed(base, size), Interrupt(irq)])),
    ])
