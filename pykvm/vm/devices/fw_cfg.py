"""QEMU's firmware configuration device (fw_cfg), in its legacy port-I/O form.

Spec: QEMU docs/specs/fw_cfg.rst ("QEMU Firmware Configuration (fw_cfg)
Device"), and hw/nvram/fw_cfg.c.  SeaBIOS, OVMF and test kernels such as
kvm-unit-tests ask the VMM about the machine through it: how much RAM, how
many CPUs, and named files ("etc/e820").

On x86 the legacy interface is two I/O ports:

    0x510  selector  16-bit write: choose an item; its read offset goes back to 0
    0x511  data      8-bit read: the item's next byte (0 past its end)

Items (fw_cfg.rst, "Firmware Configuration Items"; integers little-endian
unless said otherwise):

    0x0000  FW_CFG_SIGNATURE  "QEMU"
    0x0001  FW_CFG_ID         u32 feature bits: bit 0 = this traditional interface
                              (no DMA interface at 0x514 here, so bit 1 stays 0)
    0x0002  FW_CFG_UUID       16 bytes (all zero: pykvm VMs have no UUID)
    0x0003  FW_CFG_RAM_SIZE   u64 bytes of guest RAM
    0x0004  FW_CFG_NOGRAPHIC  u16 1: no display
    0x0005  FW_CFG_NB_CPUS    u16 CPUs at boot
    0x000f  FW_CFG_MAX_CPUS   u16 most CPUs the machine can have
    0x0019  FW_CFG_FILE_DIR   u32 count (big-endian), then per file: u32 size,
                              u16 select (both big-endian), u16 reserved, char name[56]
    0x0020  ...               the files, in directory order

Writes to the data port are ignored (QEMU ignores them since 2.4).  An item
that does not exist reads as zeros, as in QEMU.
"""
from __future__ import annotations

import struct

from pykvm.vm.devices.bus import BusDevice

__all__ = ["FwCfg", "FW_CFG_BASE", "FW_CFG_LENGTH", "e820_file"]

FW_CFG_BASE = 0x510         # x86 (hw/i386/fw_cfg.h FW_CFG_IO_BASE): selector; data at +1
FW_CFG_LENGTH = 2
SELECTOR_PORT = 0           # offsets from FW_CFG_BASE
DATA_PORT = 1

FW_CFG_SIGNATURE = 0x0000
FW_CFG_ID = 0x0001
FW_CFG_UUID = 0x0002
FW_CFG_RAM_SIZE = 0x0003
FW_CFG_NOGRAPHIC = 0x0004
FW_CFG_NB_CPUS = 0x0005
FW_CFG_MAX_CPUS = 0x000F
FW_CFG_FILE_DIR = 0x0019
FW_CFG_FILE_FIRST = 0x0020  # the first file's selector
SELECTOR_MASK = 0x3FFF      # bit 14 (write channel) and bit 15 (arch-local) are not part of the key

SIGNATURE = b"QEMU"
ID_TRADITIONAL = 1 << 0     # the port interface; bit 1 (DMA) is not offered
FILE_NAME_SIZE = 56         # FW_CFG_MAX_FILE_PATH
FILE_ENTRY = struct.Struct(">IHH56s")   # struct FWCfgFile: size, select, reserved, name
E820_ENTRY = struct.Struct("<QQI")      # QEMU's struct e820_entry: address, length, type


def e820_file(memory_map: list[tuple[int, int, int]]) -> bytes:
    """The "etc/e820" file: the memory map as QEMU's packed e820 entries."""
    return b"".join(E820_ENTRY.pack(address, length, kind) for address, length, kind in memory_map)


class FwCfg(BusDevice):
    """The selector and data ports over a table of items built once, at machine set-up."""

    def __init__(self, ram_size: int, cpus: int = 1, max_cpus: int | None = None,
                 files: dict[str, bytes] | None = None):
        self.items = {
            FW_CFG_SIGNATURE: SIGNATURE,
            FW_CFG_ID: struct.pack("<I", ID_TRADITIONAL),
            FW_CFG_UUID: bytes(16),
            FW_CFG_RAM_SIZE: struct.pack("<Q", ram_size),
            FW_CFG_NOGRAPHIC: struct.pack("<H", 1),
            FW_CFG_NB_CPUS: struct.pack("<H", cpus),
            FW_CFG_MAX_CPUS: struct.pack("<H", max_cpus or cpus),
        }
        self._add_files(files or {})
        self.key = 0
        self.selected = b""
        self.offset = 0

    def _add_files(self, files: dict[str, bytes]) -> None:
        directory = struct.pack(">I", len(files))
        for select, (name, data) in enumerate(sorted(files.items()), FW_CFG_FILE_FIRST):
            raw_name = name.encode()
            assert len(raw_name) < FILE_NAME_SIZE, f"fw_cfg file name too long: {name}"
            directory += FILE_ENTRY.pack(len(data), select, 0, raw_name)
            self.items[select] = data
        self.items[FW_CFG_FILE_DIR] = directory

    def select(self, key: int) -> None:
        """Choose item `key` (unknown keys read as zeros); reading starts at its first byte."""
        self.key = key & SELECTOR_MASK
        self.selected = self.items.get(self.key, b"")
        self.offset = 0

    def get_state(self) -> dict:
        """The guest-visible state: which item is selected and how far it has been read (the
        items themselves are the machine's facts, made again when it is built)."""
        return {"selector": self.key, "offset": self.offset}

    def set_state(self, state: dict) -> None:
        self.select(state["selector"])
        self.offset = min(state["offset"], len(self.selected))

    def next_byte(self) -> int:
        """The selected item's next byte, 0 once past its end."""
        if self.offset >= len(self.selected):
            return 0
        value = self.selected[self.offset]
        self.offset += 1
        return value

    def read(self, offset: int, size: int) -> int:
        """Any read returns data bytes; a wider read takes `size` bytes, first byte highest (QEMU)."""
        value = 0
        for _ in range(size):
            value = value << 8 | self.next_byte()
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        """A 16-bit write to the selector port selects; anything else is ignored."""
        if offset == SELECTOR_PORT and size == 2:
            self.select(value)
