"""The machine's virtio step on real KVM: slots, command line, DSDT, and console + rng in use.

The guest is a few instructions of driver (32-bit PVH, paging and interrupts
off): it sends a line through virtio-console's transmitq and asks virtio-rng
for 16 bytes, polling each used ring, then prints what it got on the UART.
"""
from __future__ import annotations

import struct

import pytest

from guestasm import pvh_elf
from pykvm.vm import layout
from pykvm.vm.arch.x86 import acpi
from pykvm.vm.devices.virtio.attach import DiskSpec, VirtioConfig
from pykvm.vm.machine import Machine, MachineConfig

pytestmark = pytest.mark.kvm

MESSAGE = "hello through virtio-console"
RING_BYTES = 0x1000                   # each queue's descriptor table, avail and used rings


def bring_up(base: int, queue: int, rings: int) -> str:
    """3.1.1 for the device at `base`, with queue `queue` of 8 entries at `rings`."""
    return f"""
    movl $0, {base + 0x70:#x}
    movl $3, {base + 0x70:#x}
    movl $1, {base + 0x24:#x}
    movl $1, {base + 0x20:#x}          # VIRTIO_F_VERSION_1
    movl $11, {base + 0x70:#x}
    movl ${queue}, {base + 0x30:#x}
    movl $8, {base + 0x38:#x}
    movl ${rings:#x}, {base + 0x80:#x}
    movl ${rings + 0x100:#x}, {base + 0x90:#x}
    movl ${rings + 0x200:#x}, {base + 0xa0:#x}
    movl $1, {base + 0x44:#x}
    movl $15, {base + 0x70:#x}
"""


def one_request(base: int, queue: int, rings: int, address: int, length: int, flags: int) -> str:
    """Descriptor 0 = (address, length, flags); offer it, kick, poll used.idx until it is 1."""
    return f"""
    movl ${address:#x}, {rings:#x}
    movl ${length}, {rings + 8:#x}
    movl ${flags}, {rings + 12:#x}
    movw $0, {rings + 0x104:#x}
    movw $1, {rings + 0x102:#x}
    movl ${queue}, {base + 0x50:#x}
    mov $3000000, %ecx
1:  cmpw $1, {rings + 0x202:#x}
    je 2f
    loop 1b
2:
"""


@pytest.fixture
def machine_parts(tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(4096))
    console_base, _ = layout.virtio_mmio_slot(1)
    rng_base, _ = layout.virtio_mmio_slot(2)
    message, rng_buffer = 0x300000, 0x301000
    source = "    cli\n" + "".join(f"    movb ${ord(c)}, {message + i:#x}\n" for i, c in enumerate(MESSAGE + "\n"))
    source += bring_up(console_base, 1, 0x200000)
    source += one_request(console_base, 1, 0x200000, message, len(MESSAGE) + 1, 0)
    source += bring_up(rng_base, 0, 0x210000)
    source += one_request(rng_base, 0, 0x210000, rng_buffer, 16, 2)
    source += f"""
    mov {rng_buffer:#x}, %eax
    or {rng_buffer + 4:#x}, %eax
    or {rng_buffer + 8:#x}, %eax
    or {rng_buffer + 12:#x}, %eax
    mov $0x3f8, %dx
    mov $'0', %al
    jz 3f
    mov $'1', %al
3:  out %al, %dx
    mov $'\\n', %al
    out %al, %dx
    mov $0x604, %dx
    mov $0x2000, %ax
    out %ax, %dx
"""
    kernel = pvh_elf(source, tmp_path / "guest.elf") or tmp_path / "guest.elf"
    virtio = VirtioConfig(disks=[DiskSpec(image)], console=True, rng=True)
    return kernel, virtio


def test_slots_command_line_and_dsdt(machine_parts):
    kernel, virtio = machine_parts
    with Machine(MachineConfig(kernel=kernel, cmdline="quiet", virtio=virtio)) as machine:
        cmdline = machine.memory.read_cstring(layout.CMDLINE_START, layout.CMDLINE_MAX).decode()
        dsdt_at = layout.ACPI_TABLES + acpi.DSDT_OFFSET
        length = struct.unpack("<I", machine.memory.read(dsdt_at + 4, 4))[0]
        dsdt = machine.memory.read(dsdt_at, length)
        bases = [base for base, _, device in machine.mmio.devices()]
    assert cmdline == ("quiet virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 "
                       "virtio_mmio.device=4K@0xd0002000:7")
    assert dsdt[:4] == b"DSDT" and sum(dsdt) % 256 == 0 and dsdt.count(b"LNRO0005") == 3
    assert bases == [layout.virtio_mmio_slot(i)[0] for i in range(3)]


@pytest.mark.parametrize("notify", ["eventfd", "exit"])
def test_console_and_rng_from_a_guest(machine_parts, notify):
    kernel, virtio = machine_parts
    virtio.notify = notify
    output = bytearray()
    with Machine(MachineConfig(kernel=kernel, virtio=virtio, output=output.extend)) as machine:
        status = machine.run()
    assert status == 0
    assert output == f"{MESSAGE}\n1\n".encode(), bytes(output)
