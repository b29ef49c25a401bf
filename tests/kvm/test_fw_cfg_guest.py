"""A guest reads QEMU's fw_cfg through pykvm's ports 0x510/0x511, as kvm-unit-tests does."""
import pytest

from guestasm import assemble
from pykvm.vm.machine import Machine, MachineConfig

pytestmark = pytest.mark.kvm

# Select an item (16-bit write to 0x510), copy N data bytes (0x511) to the UART, power off.
READ_ITEM = """
    mov $0x510, %dx
    mov ${key}, %ax
    out %ax, %dx
    mov ${count}, %cx
1:  mov $0x511, %dx
    in %dx, %al
    mov $0x3f8, %dx
    out %al, %dx
    loop 1b
    mov $0x604, %dx
    mov $0x2000, %ax
    out %ax, %dx
"""


def read_item(tmp_path, key: int, count: int, memory: int = 64 << 20) -> bytes:
    kernel = tmp_path / "fwcfg.bin"
    kernel.write_bytes(assemble(READ_ITEM.format(key=key, count=count)))
    output = bytearray()
    config = MachineConfig(kernel=kernel, memory=memory, kernel_format="raw", output=output.extend)
    with Machine(config) as machine:
        assert machine.run() == 0
    return bytes(output)


def test_signature_cpu_count_and_ram_size(tmp_path):
    assert read_item(tmp_path, 0x00, 4) == b"QEMU"
    assert read_item(tmp_path, 0x05, 2) == (1).to_bytes(2, "little")
    assert read_item(tmp_path, 0x03, 8, memory=96 << 20) == (96 << 20).to_bytes(8, "little")


def test_the_file_directory_lists_etc_e820(tmp_path):
    directory = read_item(tmp_path, 0x19, 4 + 64)
    assert int.from_bytes(directory[:4], "big") == 1
    assert directory[12:20] == b"etc/e820"
