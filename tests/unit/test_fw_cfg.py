"""QEMU's fw_cfg, port interface: what a guest reads through 0x510/0x511.  No KVM."""
from __future__ import annotations

import struct

from pykvm.vm.devices.fw_cfg import (FILE_ENTRY, FW_CFG_FILE_DIR, FW_CFG_ID, FW_CFG_MAX_CPUS,
                                  FW_CFG_NB_CPUS, FW_CFG_RAM_SIZE, FW_CFG_SIGNATURE, FwCfg,
                                  e820_file)

SELECTOR, DATA = 0, 1


def read_item(dev: FwCfg, key: int, length: int) -> bytes:
    """As a guest does it: a 16-bit selector write, then byte reads from the data port."""
    dev.write(SELECTOR, 2, key)
    return bytes(dev.read(DATA, 1) for _ in range(length))


def test_signature_id_ram_and_cpus():
    dev = FwCfg(ram_size=256 << 20, cpus=2, max_cpus=4)
    assert read_item(dev, FW_CFG_SIGNATURE, 4) == b"QEMU"
    assert struct.unpack("<I", read_item(dev, FW_CFG_ID, 4))[0] == 1     # port interface, no DMA
    assert struct.unpack("<Q", read_item(dev, FW_CFG_RAM_SIZE, 8))[0] == 256 << 20
    assert struct.unpack("<H", read_item(dev, FW_CFG_NB_CPUS, 2))[0] == 2
    assert struct.unpack("<H", read_item(dev, FW_CFG_MAX_CPUS, 2))[0] == 4


def test_selecting_again_rewinds_and_reading_past_the_end_gives_zeros():
    dev = FwCfg(ram_size=1 << 20)
    assert read_item(dev, FW_CFG_SIGNATURE, 2) == b"QE"
    assert read_item(dev, FW_CFG_SIGNATURE, 6) == b"QEMU\0\0"
    assert read_item(dev, 0x1234, 4) == bytes(4)                         # no such item


def test_file_directory_is_big_endian_and_names_each_file():
    files = {"etc/e820": e820_file([(0, 0x9FC00, 1), (0x100000, 0x700000, 1)]), "etc/b": b"xyz"}
    dev = FwCfg(ram_size=8 << 20, files=files)
    count = struct.unpack(">I", read_item(dev, FW_CFG_FILE_DIR, 4))[0]
    assert count == 2
    directory = read_item(dev, FW_CFG_FILE_DIR, 4 + count * FILE_ENTRY.size)[4:]
    found = {}
    for i in range(count):
        size, select, _, name = FILE_ENTRY.unpack_from(directory, i * FILE_ENTRY.size)
        found[name.rstrip(b"\0").decode()] = read_item(dev, select, size)
    assert found == files
    assert struct.unpack_from("<QQI", found["etc/e820"], 20) == (0x100000, 0x700000, 1)


def test_writes_to_the_data_port_and_byte_writes_to_the_selector_are_ignored():
    dev = FwCfg(ram_size=1 << 20)
    dev.write(SELECTOR, 2, FW_CFG_SIGNATURE)
    dev.write(DATA, 1, 0x55)
    dev.write(SELECTOR, 1, FW_CFG_ID)
    assert bytes(dev.read(DATA, 1) for _ in range(4)) == b"QEMU"


def test_a_wide_read_takes_bytes_in_order_first_byte_highest():
    dev = FwCfg(ram_size=1 << 20)
    dev.write(SELECTOR, 2, FW_CFG_SIGNATURE)
    assert dev.read(DATA, 2) == (ord("Q") << 8) | ord("E")
