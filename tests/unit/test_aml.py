"""The AML encoder (ACPI 6.5 chapter 20, 6.4) and the DSDT that describes virtio-mmio devices."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from pykvm.vm.arch.x86 import acpi, aml
from pykvm.vm import layout


@pytest.mark.parametrize("payload, encoded", [
    (0, "01"), (62, "3f"), (63, "4104"), (0xFFD, "4fff"), (0x1000, "830001"),
])
def test_pkg_length_counts_itself(payload, encoded):
    assert aml.pkg_length(payload).hex() == encoded


@pytest.mark.parametrize("value, encoded", [
    (0, "00"), (1, "01"), (5, "0a05"), (0x1234, "0b3412"), (0xD0000000, "0c000000d0"),
    (1 << 32, "0e0000000001000000"),
])
def test_integer_shortest_encoding(value, encoded):
    assert aml.Integer(value).to_aml_bytes().hex() == encoded


def test_name_strings():
    assert aml.name_string("_HID") == b"_HID"
    assert aml.name_string("\\_SB") == b"\\_SB_"
    assert aml.name_string("\\_SB.PCI0") == b"\\\x2e_SB_PCI0"
    with pytest.raises(ValueError):
        aml.name_string("TOOLONG")


def test_resource_template_bytes():
    crs = aml.ResourceTemplate([aml.Memory32Fixed(0xD0000000, 0x1000), aml.Interrupt(5)])
    assert crs.to_aml_bytes().hex() == (
        "11" "1a" "0a17"                               # Buffer, PkgLength 26, 23 bytes
        "860900" "01" "000000d0" "00100000"            # Memory32Fixed (ReadWrite, base, length)
        "890600" "03" "01" "05000000"                  # Interrupt (Consumer, Edge, ...) { 5 }
        "7900")                                        # End Tag


def windows(n):
    return [(*layout.virtio_mmio_slot(i)[:1], layout.VIRTIO_MMIO_SIZE, layout.virtio_mmio_slot(i)[1])
            for i in range(n)]


def test_dsdt_grows_with_devices_and_keeps_its_checksum():
    plain, with_two = acpi.dsdt(), acpi.dsdt(windows(2))
    assert len(with_two) > len(plain) and sum(with_two) % 256 == 0
    assert with_two.count(b"LNRO0005") == 2
    blob = acpi.acpi_tables(layout.ACPI_TABLES, mmio_devices=windows(7))
    assert blob.count(b"LNRO0005") == 7
    assert layout.ACPI_TABLES + len(blob) <= layout.HIMEM_START


@pytest.mark.skipif(shutil.which("iasl") is None, reason="needs iasl (apt-get install acpica-tools)")
def test_acpica_reads_the_virtio_devices(tmp_path):
    (tmp_path / "dsdt.dat").write_bytes(acpi.dsdt(windows(2)))
    proc = subprocess.run(["iasl", "-d", "dsdt.dat"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dsl = (tmp_path / "dsdt.dsl").read_text()
    for text in ('Device (VR00)', 'Device (VR01)', 'Name (_HID, "LNRO0005")', "0xD0001000",
                 "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )", "0x00000006,",
                 "Name (_S5, Package (0x04)"):
        assert text in dsl, dsl
