"""The smallest ACPI tables that let a guest find its CPUs and power itself off.

Spec: ACPI 6.5, chapter 5 "ACPI Software Programming Model": 5.2.5 RSDP,
5.2.6 system description table header, 5.2.8 XSDT, 5.2.9 FADT, 5.2.10 FACS,
5.2.11.1 DSDT, 5.2.12 MADT; chapter 20 for the AML byte codes; 7.4.2 for \\_S5.

Linux's `poweroff` ends in acpi_power_off(): it looks up the \\_S5 ("soft
off") package in the DSDT for the sleep type, then writes SLP_TYP and SLP_EN
into the PM1a control register whose port the FADT gives.  Without ACPI
tables the kernel has no way to turn the machine off, so this module writes:

    base + 0x000  RSDP  "RSD PTR "  -> XSDT      (boot_params.acpi_rsdp_addr / PVH rsdp_paddr point here)
    base + 0x040  FACS  "FACS"                   (waking vector and global lock: required without HW_REDUCED)
    base + 0x080  XSDT  "XSDT"      -> FADT, MADT
    base + 0x0c0  FADT  "FACP"      -> DSDT, FACS; PM1a_EVT 0x600, PM1a_CNT 0x604
    base + 0x200  MADT  "APIC"      one local APIC per vCPU, the IOAPIC, overrides
    base + 0x800  DSDT  "DSDT"      Name (_S5_, Package () { 0, 0, 0, 0 }), and in \\_SB
                                    a Device per virtio-mmio transport (aml.py); it comes
                                    last because it grows with the devices

PM1a control at 0x604 and \\_S5 = 0 are QEMU's (pc and q35), so the same
guest powers off on both VMMs.  The MADT is how a kernel finds its CPUs: the
Debian kernel parses no MP table, so without it Linux sees one CPU.  It lists
one processor-local APIC per vCPU (APIC id = vCPU index, as KVM_CREATE_VCPU
numbered them), KVM's in-kernel IOAPIC, and one interrupt source override
(see madt()).
"""
from __future__ import annotations

import struct

from pykvm.vm import layout
from pykvm.vm.arch.x86 import aml

__all__ = ["acpi_tables", "checksum", "sdt_header", "table", "dsdt", "madt", "ACPI_TABLES_SIZE",
           "RSDP_OFFSET", "PM1A_EVT_PORT", "PM1A_CNT_PORT", "S5_SLEEP_TYPE", "SCI_IRQ", "FACS_OFFSET",
           "waking_vector", "MAX_CPUS"]

# Where each table sits inside the blob (each 64-byte aligned; the FACS must be).
RSDP_OFFSET = 0x000
FACS_OFFSET = 0x040
XSDT_OFFSET = 0x080
FADT_OFFSET = 0x0C0
MADT_OFFSET = 0x200
DSDT_OFFSET = 0x800            # room for the MADT of MAX_CPUS vCPUs before it
ACPI_TABLES_SIZE = 0x1000      # the blob's size without virtio devices (the DSDT grows past it)

OEM_ID = b"PYKVM "             # 6 bytes: who made the tables
OEM_TABLE_ID = b"PYKVMVM "     # 8 bytes
OEM_REVISION = 1
CREATOR_ID = b"PYKV"           # 4 bytes: the tool that made them
CREATOR_REVISION = 1

# Ports of the power-management block (QEMU pc/q35 put PM_BASE at 0x600).
PM1A_EVT_PORT = 0x600          # PM1a_STS (2 bytes) + PM1a_EN (2 bytes)
PM1A_CNT_PORT = 0x604          # PM1a_CNT: SLP_TYP bits 10-12, SLP_EN bit 13
PM1_EVT_LEN = 4
PM1_CNT_LEN = 2
SCI_IRQ = 9                    # the ACPI interrupt on PCs (never raised by pykvm)
S5_SLEEP_TYPE = 0              # SLP_TYP for soft off: QEMU's value, what AcpiPmControl powers off on

# RSDP (5.2.5.3)
RSDP_SIGNATURE = b"RSD PTR "
RSDP_REVISION = 2              # ACPI 2.0+: has XsdtAddress
RSDP = struct.Struct("<8sB6sBIIQB3x")    # 36 bytes
RSDP_V1_LENGTH = 20            # the first checksum covers only the ACPI 1.0 part

# System description table header (5.2.6), 36 bytes
SDT_HEADER = struct.Struct("<4sIBB6s8sI4sI")
SDT_CHECKSUM_OFFSET = 9

# FACS (5.2.10), 64 bytes
FACS_SIGNATURE = b"FACS"
FACS_LENGTH = 64
FACS_VERSION = 2
FACS_WAKING_VECTOR = 12        # u32 Firmware Waking Vector: where the OS resumes, in real mode

# FADT (5.2.9): revision 6, 276 bytes.  Offsets of the fields we fill.
FADT_REVISION = 6
FADT_MINOR_REVISION = 5
FADT_LENGTH = 276
FADT_FIRMWARE_CTRL = 36        # u32 physical address of the FACS
FADT_DSDT = 40                 # u32 physical address of the DSDT
FADT_SCI_INT = 46              # u16
FADT_PM1A_EVT_BLK = 56         # u32 port
FADT_PM1A_CNT_BLK = 64         # u32 port
FADT_PM1_EVT_LEN = 88          # u8
FADT_PM1_CNT_LEN = 89          # u8
FADT_IAPC_BOOT_ARCH = 109      # u16
FADT_FLAGS = 112               # u32
FADT_MINOR_VERSION = 131       # u8
FADT_X_FIRMWARE_CTRL = 132     # u64
FADT_X_DSDT = 140              # u64
FADT_X_PM1A_EVT_BLK = 148      # Generic Address Structure, 12 bytes
FADT_X_PM1A_CNT_BLK = 172      # Generic Address Structure

# FADT flags (table 5.10)
FADT_WBINVD = 1 << 0           # WBINVD works
FADT_PROC_C1 = 1 << 2          # C1 (HLT) works on all processors
FADT_PWR_BUTTON = 1 << 4       # 1 = no fixed-feature power button
FADT_SLP_BUTTON = 1 << 5       # 1 = no fixed-feature sleep button
FADT_FLAGS_VALUE = FADT_WBINVD | FADT_PROC_C1 | FADT_PWR_BUTTON | FADT_SLP_BUTTON

# IA-PC boot architecture flags (table 5.11)
IAPC_8042 = 1 << 1             # an 8042 keyboard controller is present
IAPC_VGA_NOT_PRESENT = 1 << 2  # do not probe VGA
IAPC_MSI_NOT_SUPPORTED = 1 << 3
IAPC_BOOT_ARCH_VALUE = IAPC_8042 | IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_SUPPORTED

# Generic Address Structure (5.2.3.2): space id, bit width, bit offset, access size, address
GAS = struct.Struct("<BBBBQ")
GAS_SYSTEM_IO = 1
GAS_ACCESS_WORD = 2
GAS_ACCESS_DWORD = 3

# MADT (5.2.12): the interrupt controllers, and through them the CPUs
MADT_REVISION = 5
IOAPIC_ID = 0                    # what KVM's IOAPIC ID register holds after reset
MADT_PCAT_COMPAT = 1 << 0        # flags: dual 8259 PICs present too (to be masked)
MADT_HEAD = struct.Struct("<II")              # local APIC address, flags
MADT_LOCAL_APIC = struct.Struct("<BBBBI")     # type 0, length 8, processor UID, APIC id, flags
MADT_IO_APIC = struct.Struct("<BBBBII")       # type 1, length 12, id, reserved, address, GSI base
MADT_SOURCE_OVERRIDE = struct.Struct("<BBBBIH")  # type 2, length 10, bus, source, GSI, flags
MADT_LOCAL_APIC_NMI = struct.Struct("<BBBHB")  # type 4, length 6, processor UID, flags, LINT#
LOCAL_APIC_ENABLED = 1 << 0      # Processor Local APIC flags: usable
ALL_PROCESSORS = 0xFF            # Local APIC NMI: applies to every processor
ISA_BUS = 0
MPS_ACTIVE_HIGH = 0b01           # MPS INTI flags (table 5.50): polarity bits 1:0
MPS_LEVEL = 0b11 << 2            # trigger mode bits 3:2
LINT1 = 1
MAX_CPUS = (DSDT_OFFSET - MADT_OFFSET - SDT_HEADER.size - MADT_HEAD.size - MADT_IO_APIC.size
            - MADT_SOURCE_OVERRIDE.size - MADT_LOCAL_APIC_NMI.size) // MADT_LOCAL_APIC.size
MAX_XAPIC_ID = 0xFE              # 0xFF is the broadcast id: 8-bit xAPIC ids stop below it

# AML (chapter 20): Name (_S5_, Package (4) { S5, S5, 0, 0 })
AML_NAME_OP = 0x08
AML_PACKAGE_OP = 0x12
AML_BYTE_PREFIX = 0x0A
AML_ZERO_OP = 0x00
DSDT_REVISION = 2              # 64-bit integers in AML


def checksum(data: bytes) -> int:
    """The byte that makes `data` plus itself sum to 0 mod 256 (every ACPI table's rule)."""
    return -sum(data) & 0xFF


def _with_checksum(table: bytes, offset: int) -> bytes:
    """`table` with its checksum byte at `offset` filled in."""
    body = bytearray(table)
    body[offset] = 0
    body[offset] = checksum(body)
    return bytes(body)


def sdt_header(signature: bytes, length: int, revision: int) -> bytes:
    """The 36-byte header every table but the RSDP and FACS starts with (checksum left 0)."""
    return SDT_HEADER.pack(signature, length, revision, 0, OEM_ID, OEM_TABLE_ID, OEM_REVISION,
                           CREATOR_ID, CREATOR_REVISION)


def table(signature: bytes, revision: int, body: bytes) -> bytes:
    """A system description table: the header (5.2.6) with its length and checksum, then `body`."""
    length = SDT_HEADER.size + len(body)
    return _with_checksum(sdt_header(signature, length, revision) + body, SDT_CHECKSUM_OFFSET)


def rsdp(xsdt_addr: int) -> bytes:
    """Root System Description Pointer, revision 2, with both checksums."""
    raw = bytearray(RSDP.pack(RSDP_SIGNATURE, 0, OEM_ID, RSDP_REVISION, 0, RSDP.size, xsdt_addr, 0))
    raw[8] = checksum(raw[:RSDP_V1_LENGTH])
    raw[32] = checksum(raw)
    return bytes(raw)


def facs() -> bytes:
    """Firmware ACPI Control Structure: signature, length, version; everything else 0."""
    raw = bytearray(FACS_LENGTH)
    struct.pack_into("<4sI", raw, 0, FACS_SIGNATURE, FACS_LENGTH)
    raw[32] = FACS_VERSION
    return bytes(raw)


def waking_vector(facs_table: bytes) -> int:
    """The Firmware Waking Vector the OS wrote into its FACS before sleeping (5.2.10, table 5.14)."""
    return struct.unpack_from("<I", facs_table, FACS_WAKING_VECTOR)[0]


def xsdt(tables: list[int]) -> bytes:
    """Extended System Description Table: 64-bit addresses of the other tables."""
    return table(b"XSDT", 1, b"".join(struct.pack("<Q", t) for t in tables))


def fadt(dsdt_addr: int, facs_addr: int) -> bytes:
    """Fixed ACPI Description Table: where the DSDT, FACS and PM1 registers are."""
    body = bytearray(FADT_LENGTH)
    struct.pack_into("<I", body, FADT_FIRMWARE_CTRL, facs_addr)
    struct.pack_into("<I", body, FADT_DSDT, dsdt_addr)
    struct.pack_into("<H", body, FADT_SCI_INT, SCI_IRQ)
    struct.pack_into("<I", body, FADT_PM1A_EVT_BLK, PM1A_EVT_PORT)
    struct.pack_into("<I", body, FADT_PM1A_CNT_BLK, PM1A_CNT_PORT)
    body[FADT_PM1_EVT_LEN] = PM1_EVT_LEN
    body[FADT_PM1_CNT_LEN] = PM1_CNT_LEN
    struct.pack_into("<H", body, FADT_IAPC_BOOT_ARCH, IAPC_BOOT_ARCH_VALUE)
    struct.pack_into("<I", body, FADT_FLAGS, FADT_FLAGS_VALUE)
    body[FADT_MINOR_VERSION] = FADT_MINOR_REVISION
    struct.pack_into("<Q", body, FADT_X_FIRMWARE_CTRL, facs_addr)
    struct.pack_into("<Q", body, FADT_X_DSDT, dsdt_addr)
    GAS.pack_into(body, FADT_X_PM1A_EVT_BLK, GAS_SYSTEM_IO, PM1_EVT_LEN * 8, 0, GAS_ACCESS_WORD,
                  PM1A_EVT_PORT)
    GAS.pack_into(body, FADT_X_PM1A_CNT_BLK, GAS_SYSTEM_IO, PM1_CNT_LEN * 8, 0, GAS_ACCESS_WORD,
                  PM1A_CNT_PORT)
    header = sdt_header(b"FACP", FADT_LENGTH, FADT_REVISION)
    return _with_checksum(header + bytes(body[SDT_HEADER.size:]), SDT_CHECKSUM_OFFSET)


def s5_aml() -> bytes:
    """AML for `Name (_S5_, Package (4) { S5, S5, 0, 0 })` (ACPI 7.4.2: SLP_TYPa, SLP_TYPb)."""
    elements = bytes([AML_BYTE_PREFIX, S5_SLEEP_TYPE, AML_BYTE_PREFIX, S5_SLEEP_TYPE,
                      AML_ZERO_OP, AML_ZERO_OP])
    package = bytes([4]) + elements                    # NumElements, then the elements
    pkg_length = 1 + len(package)                      # a one-byte PkgLength counts itself
    assert pkg_length < 0x40                           # (larger needs the multi-byte encoding)
    return bytes([AML_NAME_OP]) + b"_S5_" + bytes([AML_PACKAGE_OP, pkg_length]) + package


def dsdt(mmio_devices=()) -> bytes:
    """Differentiated System Description Table: \\_S5, and a virtio-mmio device in \\_SB for
    each (base, size, irq) of `mmio_devices` (pykvm.vm.arch.x86.aml)."""
    body = s5_aml()
    if mmio_devices:
        devices = [aml.virtio_mmio_device(i, *window) for i, window in enumerate(mmio_devices)]
        body += aml.Scope("\\_SB_", devices).to_aml_bytes()
    return table(b"DSDT", DSDT_REVISION, body)


def madt(cpus: int) -> bytes:
    """Multiple APIC Description Table for `cpus` vCPUs with APIC ids 0 .. cpus-1.

    Interrupt routing: KVM's default GSI routing sends ISA IRQ n to PIC pin n
    and IOAPIC pin n, so ISA IRQs need no override, except for the mode of the
    SCI: an ISA interrupt without an override is edge/active-high, but the SCI
    defaults to level/active-low (ACPI 5.2.12.5), and KVM's IOAPIC would see
    an undriven active-low line as always asserted.  QEMU's MADT says the same
    (IRQ 9, level, active high).  LINT1 of every CPU is the NMI input (the
    Local APIC NMI entry), as on a PC.
    """
    assert 1 <= cpus <= min(MAX_CPUS, MAX_XAPIC_ID + 1)
    body = MADT_HEAD.pack(layout.LOCAL_APIC_ADDRESS, MADT_PCAT_COMPAT)
    for cpu in range(cpus):
        body += MADT_LOCAL_APIC.pack(0, MADT_LOCAL_APIC.size, cpu, cpu, LOCAL_APIC_ENABLED)
    body += MADT_IO_APIC.pack(1, MADT_IO_APIC.size, IOAPIC_ID, 0, layout.IOAPIC_ADDRESS, 0)
    body += MADT_SOURCE_OVERRIDE.pack(2, MADT_SOURCE_OVERRIDE.size, ISA_BUS, SCI_IRQ, SCI_IRQ,
                                      MPS_ACTIVE_HIGH | MPS_LEVEL)
    body += MADT_LOCAL_APIC_NMI.pack(4, MADT_LOCAL_APIC_NMI.size, ALL_PROCESSORS, 0, LINT1)
    return table(b"APIC", MADT_REVISION, body)


def acpi_tables(base: int, cpus: int = 1, mmio_devices=()) -> bytes:
    """All tables as one blob to copy to guest-physical `base`; the RSDP is at `base`.
    The DSDT comes last: it grows with the virtio-mmio devices."""
    table = dsdt(mmio_devices)
    blob = bytearray(max(ACPI_TABLES_SIZE, DSDT_OFFSET + len(table)))
    parts = {
        RSDP_OFFSET: rsdp(base + XSDT_OFFSET),
        FACS_OFFSET: facs(),
        XSDT_OFFSET: xsdt([base + FADT_OFFSET, base + MADT_OFFSET]),
        FADT_OFFSET: fadt(base + DSDT_OFFSET, base + FACS_OFFSET),
        MADT_OFFSET: madt(cpus),
        DSDT_OFFSET: table,
    }
    for offset, data in parts.items():
        blob[offset:offset + len(data)] = data
    return bytes(blob)
