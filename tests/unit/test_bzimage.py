"""The Linux boot protocol loader: header parsing, boot_params packing, placement, bad input.

Synthetic images check each rule; the real Debian bzImage (fetched by the
guests/linux recipe) checks that we read what a distribution kernel says.
"""
from __future__ import annotations

import struct

import pytest

from pykvm.vm.arch.x86.boot_state import CpuMode
from pykvm.vm.boot import bzimage
from pykvm.vm import layout
from pykvm.vm.boot.bzimage import kernel_end, pack_boot_params, pack_e820_table, plan_bzimage, read_setup_header
from pykvm.vm.boot.plan import place_initrd
from pykvm.errors import LoaderError

from fake_bzimage import make_bzimage
from linux_guest import guest_file

MiB = 1 << 20
CMDLINE_ADDR = layout.CMDLINE_START
KERNEL_LOAD_ADDR = layout.HIMEM_START
ZERO_PAGE_ADDR = layout.ZERO_PAGE


def load_bzimage(image, mem_size, cmdline=b"", initrd=None, acpi_rsdp=0):
    """plan_bzimage for a guest with `mem_size` bytes of RAM from address 0."""
    return plan_bzimage(image, [(0, mem_size)], cmdline, initrd, acpi_rsdp)


def e820_map(mem_size):
    return layout.memory_map([(0, mem_size)])


def writes_at(plan, addr):
    return dict(plan.writes)[addr]


# --- the real Debian kernel ----------------------------------------------------
@pytest.fixture(scope="module")
def debian_bzimage():
    return guest_file("vmlinuz", "kernel").read_bytes()


def test_debian_kernel_header(debian_bzimage):
    hdr = read_setup_header(debian_bzimage)
    assert hdr.header == b"HdrS"
    assert hdr.version == 0x020F, hdr.version_string          # protocol 2.15 (Linux 6.1)
    assert hdr.setup_sects == 39
    assert hdr.xloadflags == 0x7F, hex(hdr.xloadflags)
    assert hdr.has_64bit_entry
    assert hdr.boot_flag == 0xAA55
    assert hdr.loadflags & bzimage.LOADED_HIGH
    assert hdr.cmdline_size == 2047
    assert hdr.pref_address == 0x1000000 and hdr.kernel_alignment == 0x200000
    assert hdr.relocatable_kernel == 1
    assert len(hdr.raw) == 0x202 + debian_bzimage[0x201] - 0x1F1
    assert debian_bzimage[0x1EF] == 0xFF    # >= 6.1.88 pads the first sector, sentinel included


def test_debian_kernel_boot_params(debian_bzimage):
    plan = load_bzimage(debian_bzimage, 256 * MiB, "console=ttyS0", initrd=b"\x01" * 3 * MiB)
    assert plan.entry.mode is CpuMode.LONG
    assert plan.entry.rip == KERNEL_LOAD_ADDR + 0x200
    assert plan.entry.registers == {"rsi": ZERO_PAGE_ADDR}
    assert plan.entry.protocol == "Linux boot protocol 2.15, 64-bit entry"
    bp = writes_at(plan, ZERO_PAGE_ADDR)
    hdr = read_setup_header(debian_bzimage)
    assert bp[0x1EF] == 0, "sentinel copied: the kernel would wipe boot_params"
    assert bp[0x202:0x206] == b"HdrS"
    assert writes_at(plan, KERNEL_LOAD_ADDR) == debian_bzimage[(39 + 1) * 512:]
    ramdisk, size = struct.unpack_from("<II", bp, 0x218)
    assert size == 3 * MiB and ramdisk + size <= 256 * MiB
    assert ramdisk >= hdr.pref_address + hdr.init_size     # clear of the decompressing kernel


def test_debian_kernel_needs_its_init_size(debian_bzimage):
    with pytest.raises(LoaderError, match="raise --mem"):
        load_bzimage(debian_bzimage, 32 * MiB)


# --- header parsing rules ---------------------------------------------------------
def test_synthetic_header_fields():
    hdr = read_setup_header(make_bzimage(setup_sects=7, cmdline_size=100))
    assert (hdr.setup_sects, hdr.cmdline_size, hdr.version_string) == (7, 100, "2.15")
    assert hdr.setup_size == 8 * 512
    assert len(hdr.raw) == 0x202 + 0x6A - 0x1F1


def test_zero_setup_sects_means_four():
    image = make_bzimage(setup_sects=4)
    image = image[:0x1F1] + b"\0" + image[0x1F2:]
    assert read_setup_header(image).setup_size == 5 * 512


def test_not_a_bzimage():
    image = bytearray(make_bzimage())
    image[0x202:0x206] = b"\x7fELF"
    with pytest.raises(LoaderError, match='no "HdrS"'):
        read_setup_header(bytes(image))
    with pytest.raises(LoaderError, match="not a bzImage"):
        read_setup_header(b"\x7fELF" + bytes(100))


def test_protocol_too_old():
    with pytest.raises(LoaderError, match="protocol 2.09.*2.10"):
        read_setup_header(make_bzimage(version=0x0209))


def test_zimage_refused():
    with pytest.raises(LoaderError, match="zImage"):
        read_setup_header(make_bzimage(loadflags=0))


def test_truncated_image():
    with pytest.raises(LoaderError, match="truncated"):
        read_setup_header(make_bzimage(setup_sects=4, pm_size=0)[:3 * 512])


# --- boot_params ----------------------------------------------------------------
def test_boot_params_copies_only_the_header():
    image = make_bzimage()
    hdr = read_setup_header(image)
    bp = pack_boot_params(hdr, CMDLINE_ADDR, 0, 0, e820_map(64 * MiB))
    assert len(bp) == 4096
    assert bp[:0x1E8] == bytes(0x1E8), "fields below e820_entries must start zero"
    assert bp[0x1EF] == 0
    end = 0x202 + 0x6A
    assert bp[0x202:0x206] == b"HdrS"
    assert bp[end:end + 4] == bytes(4), "bytes past the header's end were copied"
    assert bp[0x210] == 0xFF                                 # type_of_loader: undefined
    assert bp[0x211] & bzimage.CAN_USE_HEAP and bp[0x211] & bzimage.LOADED_HIGH
    assert struct.unpack_from("<H", bp, 0x224)[0] == 0xFE00  # heap_end_ptr
    assert struct.unpack_from("<I", bp, 0x228)[0] == CMDLINE_ADDR


def test_acpi_rsdp_pointer():
    plan = load_bzimage(make_bzimage(), 64 * MiB, acpi_rsdp=0xE0000)
    assert struct.unpack_from("<Q", writes_at(plan, ZERO_PAGE_ADDR), 0x70)[0] == 0xE0000


def test_e820_table_in_zero_page():
    entries = e820_map(128 * MiB)
    assert entries == [(0, 0x9FC00, 1), (0x9FC00, 0x60400, 2), (0x100000, 127 * MiB, 1)]
    bp = pack_boot_params(read_setup_header(make_bzimage()), CMDLINE_ADDR, 0, 0, entries)
    assert bp[0x1E8] == 3
    rows = [struct.unpack_from("<QQI", bp, 0x2D0 + 20 * i) for i in range(4)]
    assert rows == [(0, 0x9FC00, 1), (0x9FC00, 0x60400, 2), (0x100000, 127 * MiB, 1), (0, 0, 0)]


def test_e820_limits():
    with pytest.raises(LoaderError, match="holds 128"):
        pack_e820_table([(i, 1, 1) for i in range(129)])


# --- command line -----------------------------------------------------------------
def test_cmdline_written_with_nul():
    plan = load_bzimage(make_bzimage(), 64 * MiB, "console=ttyS0 panic=-1")
    assert writes_at(plan, CMDLINE_ADDR) == b"console=ttyS0 panic=-1\0"


def test_cmdline_at_limit_and_over():
    image = make_bzimage(cmdline_size=16)
    load_bzimage(image, 64 * MiB, "x" * 16)
    with pytest.raises(LoaderError, match="17 bytes.*at most 16 \\(cmdline_size\\)"):
        load_bzimage(image, 64 * MiB, "x" * 17)


def test_cmdline_with_nul_refused():
    with pytest.raises(LoaderError, match="NUL"):
        load_bzimage(make_bzimage(), 64 * MiB, "a\0b")


# --- placement -----------------------------------------------------------------
def test_entry_modes():
    plan64 = load_bzimage(make_bzimage(xloadflags=0x1), 64 * MiB).entry
    assert (plan64.rip, plan64.mode) == (0x100200, CpuMode.LONG)
    plan32 = load_bzimage(make_bzimage(xloadflags=0x0), 64 * MiB).entry
    assert (plan32.rip, plan32.mode) == (0x100000, CpuMode.PROTECTED)
    assert plan32.registers == {"rsi": ZERO_PAGE_ADDR, "rbp": 0, "rdi": 0, "rbx": 0}


def test_kernel_end_uses_pref_address_and_init_size():
    hdr = read_setup_header(make_bzimage(init_size=0x800000, pref_address=0x1000000))
    assert kernel_end(hdr, KERNEL_LOAD_ADDR, 0x4000) == 0x1800000


def test_kernel_larger_than_memory():
    with pytest.raises(LoaderError, match="needs 24 MiB.*has 20 MiB below 3 GiB"):
        load_bzimage(make_bzimage(init_size=0x800000), 20 * MiB)


def test_initrd_top_of_memory_page_aligned():
    hdr = read_setup_header(make_bzimage())
    addr = place_initrd(5000, 64 * MiB, 17 * MiB, limit=hdr.initrd_addr_max + 1)
    assert addr % 4096 == 0 and addr + 5000 <= 64 * MiB and addr == 64 * MiB - 2 * 4096


def test_initrd_below_initrd_addr_max():
    hdr = read_setup_header(make_bzimage(initrd_addr_max=0x2FFFFFF))      # last legal byte: 48 MiB - 1
    addr = place_initrd(1 * MiB, 256 * MiB, 17 * MiB, limit=hdr.initrd_addr_max + 1)
    assert addr + 1 * MiB <= 0x3000000 and addr == 47 * MiB


def test_initrd_larger_than_memory():
    image = make_bzimage()
    with pytest.raises(LoaderError, match="initrd of .* does not fit.*--mem"):
        load_bzimage(image, 64 * MiB, initrd=bytes(60 * MiB))
    plan = load_bzimage(image, 64 * MiB, initrd=bytes(40 * MiB))
    bp = writes_at(plan, ZERO_PAGE_ADDR)
    ramdisk, size = struct.unpack_from("<II", bp, 0x218)
    assert size == 40 * MiB and ramdisk >= 17 * MiB and ramdisk + size <= 64 * MiB


def test_writes_do_not_overlap():
    plan = load_bzimage(make_bzimage(), 64 * MiB, "quiet", initrd=bytes(MiB))
    spans = sorted((a, a + len(d)) for a, d in plan.writes)
    assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:])), spans
    assert spans[-1][1] <= 64 * MiB


def test_debian_kernel_payload_is_lz4_and_unpacks_to_a_pvh_elf(debian_bzimage):
    hdr = read_setup_header(debian_bzimage)
    payload = bzimage.compressed_payload(debian_bzimage, hdr)
    assert payload[:4] == b"\x02\x21\x4c\x18", payload[:4].hex()     # lz4 legacy frame
    assert len(payload) == hdr.payload_length
    vmlinux = guest_file("vmlinux", "kernel").read_bytes()          # made by extract-vmlinux.py
    assert vmlinux[:4] == b"\x7fELF"
    from pykvm.vm.boot.elf import parse_elf
    from pykvm.vm.boot.pvh import pvh_entry_point
    assert pvh_entry_point(parse_elf(vmlinux, "vmlinux"), "vmlinux") >= layout.HIMEM_START


def test_payload_outside_the_image():
    image = bytearray(make_bzimage())
    struct.pack_into("<II", image, 0x248, 0x100, 0x100000)            # payload_offset, _length
    with pytest.raises(LoaderError, match="no payload"):
        bzimage.compressed_payload(bytes(image), read_setup_header(bytes(image)))
