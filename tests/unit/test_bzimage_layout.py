"""struct boot_params as the compiler lays it out (<asm/bootparam.h>) is what the loader writes.

Two checks: the compiler's offsets are the ones zero-page.rst and boot.rst
document, and the bytes pack_boot_params returns read back field by field
through that struct.
"""
import pytest

from fake_bzimage import make_bzimage
from pykvm.vm import layout
from pykvm.vm.boot.bzimage import pack_boot_params, read_setup_header
from pykvm.vm.kvm.bindings import ffi

# zero-page.rst: offset of each boot_params field pykvm writes
ZERO_PAGE_OFFSETS = {
    "acpi_rsdp_addr": 0x070, "ext_ramdisk_image": 0x0C0, "ext_ramdisk_size": 0x0C4,
    "ext_cmd_line_ptr": 0x0C8, "e820_entries": 0x1E8, "sentinel": 0x1EF, "hdr": 0x1F1,
    "e820_table": 0x2D0,
}
# boot.rst "THE REAL-MODE KERNEL HEADER": offset of each setup header field, from 0x1f1
SETUP_HEADER_OFFSETS = {
    "setup_sects": 0x1F1, "root_flags": 0x1F2, "syssize": 0x1F4, "ram_size": 0x1F8,
    "vid_mode": 0x1FA, "root_dev": 0x1FC, "boot_flag": 0x1FE, "jump": 0x200, "header": 0x202,
    "version": 0x206, "realmode_swtch": 0x208, "start_sys_seg": 0x20C, "kernel_version": 0x20E,
    "type_of_loader": 0x210, "loadflags": 0x211, "setup_move_size": 0x212, "code32_start": 0x214,
    "ramdisk_image": 0x218, "ramdisk_size": 0x21C, "bootsect_kludge": 0x220, "heap_end_ptr": 0x224,
    "ext_loader_ver": 0x226, "ext_loader_type": 0x227, "cmd_line_ptr": 0x228,
    "initrd_addr_max": 0x22C, "kernel_alignment": 0x230, "relocatable_kernel": 0x234,
    "min_alignment": 0x235, "xloadflags": 0x236, "cmdline_size": 0x238, "hardware_subarch": 0x23C,
    "hardware_subarch_data": 0x240, "payload_offset": 0x248, "payload_length": 0x24C,
    "setup_data": 0x250, "pref_address": 0x258, "init_size": 0x260, "handover_offset": 0x264,
    "kernel_info_offset": 0x268,
}


def test_compiler_layout_is_the_documented_one():
    assert ffi.sizeof("struct boot_params") == 4096
    assert ffi.sizeof("struct boot_e820_entry") == 20
    found = {name: ffi.offsetof("struct boot_params", name) for name in ZERO_PAGE_OFFSETS}
    assert found == ZERO_PAGE_OFFSETS
    hdr = ZERO_PAGE_OFFSETS["hdr"]
    found = {name: hdr + ffi.offsetof("struct setup_header", name) for name in SETUP_HEADER_OFFSETS}
    assert found == SETUP_HEADER_OFFSETS


@pytest.fixture
def written():
    """boot_params for a command line and an initrd above 4 GiB, read through the C struct."""
    hdr = read_setup_header(make_bzimage(setup_sects=7, cmdline_size=100))
    e820 = layout.memory_map([(0, 64 << 20)])
    data = pack_boot_params(hdr, 0x1_2345_6000, 0x2_0000_1000, 0x3_0000_0123, e820,
                            acpi_rsdp=layout.ACPI_TABLES)
    return hdr, e820, ffi.from_buffer("struct boot_params *", data)


def test_loader_fields_read_back_through_the_struct(written):
    hdr, _, bp = written
    assert (bp.hdr.cmd_line_ptr, bp.ext_cmd_line_ptr) == (0x2345_6000, 0x1)
    assert (bp.hdr.ramdisk_image, bp.ext_ramdisk_image) == (0x0000_1000, 0x2)
    assert (bp.hdr.ramdisk_size, bp.ext_ramdisk_size) == (0x0000_0123, 0x3)
    assert bp.acpi_rsdp_addr == layout.ACPI_TABLES
    assert bp.hdr.type_of_loader == 0xFF and bp.hdr.heap_end_ptr == 0xFE00
    assert bp.sentinel == 0


def test_image_header_fields_read_back_through_the_struct(written):
    hdr, _, bp = written
    assert bp.hdr.header.to_bytes(4, "little") == hdr.header == b"HdrS"
    for name in ("setup_sects", "version", "cmdline_size", "xloadflags", "init_size", "pref_address"):
        assert getattr(bp.hdr, name) == getattr(hdr, name), name


def test_e820_table_reads_back_through_the_struct(written):
    _, e820, bp = written
    assert bp.e820_entries == len(e820) == 3
    rows = [(bp.e820_table[i].addr, bp.e820_table[i].size, bp.e820_table[i].type) for i in range(4)]
    assert rows == [*e820, (0, 0, 0)]
