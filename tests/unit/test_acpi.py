"""ACPI tables for poweroff: checksums, pointers, and the Intel ACPICA disassembler's reading."""
from __future__ import annotations

import shutil
import struct
import subprocess

import pytest

from pykvm.vm.arch.x86 import acpi

BASE = 0xE0000


def table_at(blob: bytes, addr: int) -> bytes:
    off = addr - BASE
    length = struct.unpack_from("<I", blob, off + 4)[0]
    return blob[off:off + length]


def test_every_table_sums_to_zero_and_points_at_the_next():
    blob = acpi.acpi_tables(BASE)
    rsdp = blob[:36]
    assert rsdp[:8] == b"RSD PTR " and sum(rsdp[:20]) % 256 == 0 and sum(rsdp) % 256 == 0
    xsdt = table_at(blob, struct.unpack_from("<Q", rsdp, 24)[0])
    assert xsdt[:4] == b"XSDT" and sum(xsdt) % 256 == 0
    fadt = table_at(blob, struct.unpack_from("<Q", xsdt, 36)[0])
    assert fadt[:4] == b"FACP" and len(fadt) == 276 and sum(fadt) % 256 == 0
    facs_addr, dsdt_addr = struct.unpack_from("<QQ", fadt, 132)
    assert struct.unpack_from("<II", fadt, 36) == (facs_addr, dsdt_addr)
    assert blob[facs_addr - BASE:facs_addr - BASE + 4] == b"FACS" and facs_addr % 64 == 0
    dsdt = table_at(blob, dsdt_addr)
    assert dsdt[:4] == b"DSDT" and sum(dsdt) % 256 == 0
    assert struct.unpack_from("<I", fadt, 64)[0] == 0x604


def test_s5_aml_bytes():
    # Name (_S5_, Package (4) { 0x0A 0, 0x0A 0, Zero, Zero }): PkgLength 8 covers itself + 7 bytes
    assert acpi.s5_aml() == bytes.fromhex("08 5F53355F 12 08 04 0A00 0A00 00 00")


@pytest.mark.skipif(shutil.which("iasl") is None, reason="needs iasl (apt-get install acpica-tools)")
def test_acpica_disassembles_fadt_and_dsdt(tmp_path):
    (tmp_path / "dsdt.dat").write_bytes(acpi.dsdt())
    (tmp_path / "facp.dat").write_bytes(acpi.fadt(BASE + 0x200, BASE + 0x40))
    for name in ("dsdt", "facp"):
        proc = subprocess.run(["iasl", "-d", f"{name}.dat"], cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    dsl = (tmp_path / "dsdt.dsl").read_text()
    assert "Name (_S5, Package (0x04)" in dsl, dsl
    facp = (tmp_path / "facp.dsl").read_text()
    assert "PM1A Control Block Address : 00000604" in facp, facp
    assert "DSDT Address : 000E0200" in facp and "FACS Address : 000E0040" in facp
    assert "Invalid" not in facp and "Error" not in facp


def madt_entries(madt: bytes) -> list[tuple[int, bytes]]:
    """(type, body) of every MADT interrupt controller structure, after the 44-byte head."""
    entries, offset = [], 44
    while offset < len(madt):
        kind, length = madt[offset], madt[offset + 1]
        assert length >= 2, f"entry at {offset} has length {length}"
        entries.append((kind, madt[offset:offset + length]))
        offset += length
    assert offset == len(madt)
    return entries


@pytest.mark.parametrize("cpus", [1, 2, 8])
def test_madt_lists_each_cpu_the_ioapic_and_the_sci_override(cpus):
    blob = acpi.acpi_tables(BASE, cpus)
    xsdt = table_at(blob, struct.unpack_from("<Q", blob, 24)[0])
    pointers = struct.unpack_from("<2Q", xsdt, 36)
    madt = table_at(blob, pointers[1])
    assert madt[:4] == b"APIC" and sum(madt) % 256 == 0
    assert struct.unpack_from("<II", madt, 36) == (0xFEE00000, 1)       # LAPIC address, PCAT_COMPAT
    entries = madt_entries(madt)
    cpus_found = [struct.unpack("<BBBBI", e) for kind, e in entries if kind == 0]
    assert [(uid, apic, flags) for _, _, uid, apic, flags in cpus_found] == \
        [(i, i, 1) for i in range(cpus)]
    ioapics = [struct.unpack("<BBBBII", e) for kind, e in entries if kind == 1]
    assert [(address, gsi_base) for *_, address, gsi_base in ioapics] == [(0xFEC00000, 0)]
    overrides = [struct.unpack("<BBBBIH", e) for kind, e in entries if kind == 2]
    assert [(source, gsi, flags) for _, _, _, source, gsi, flags in overrides] == [(9, 9, 0xD)]
    assert [e[-1] for kind, e in entries if kind == 4] == [1]             # NMI on LINT1


@pytest.mark.skipif(shutil.which("iasl") is None, reason="needs iasl (apt-get install acpica-tools)")
def test_acpica_disassembles_the_madt(tmp_path):
    (tmp_path / "apic.dat").write_bytes(acpi.madt(2))
    proc = subprocess.run(["iasl", "-d", "apic.dat"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dsl = (tmp_path / "apic.dsl").read_text()
    assert dsl.count("Subtable Type : 00 [Processor Local APIC]") == 2, dsl
    assert "Subtable Type : 01 [I/O APIC]" in dsl and "Address : FEC00000" in dsl, dsl
    assert "Subtable Type : 02 [Interrupt Source Override]" in dsl, dsl
    assert "Invalid" not in dsl and "Error" not in dsl, dsl
