"""virtio-blk on real KVM: a few dozen instructions of guest driver, both notification paths.

The guest (32-bit PVH, paging off, interrupts off) brings the device up by
3.1.1, writes sector 1 with a VIRTIO_BLK_T_OUT request, then sends
VIRTIO_BLK_T_FLUSH, polling the used ring after each kick (for a while measured by the TSC:
the device's worker thread may be slow to get a CPU on a loaded host).  It prints the two
status bytes and InterruptStatus as digits ("S<out><flush>I<isr>") and powers
off, or, for the data-safety test, prints "F" and spins until it is killed.
"""
from __future__ import annotations

import re
import sys

import pytest

from clitools import kill_9_after, pykvm
from guestasm import pvh_elf
from pykvm.vm import layout

pytestmark = pytest.mark.kvm

SECTOR = 1
FILL = ord("V")
WAIT_TSC_HIGH = 16           # the guest's wait for each answer: 16 * 2^32 cycles, about 20-30 s

GUEST = """
    .set BASE, {base:#x}
    .set DESC, 0x200000
    .set AVAIL, 0x200080
    .set USED, 0x200100
    .set HDR, 0x210000
    .set FHDR, 0x210100
    .set DATA, 0x211000
    .set STAT, 0x212000
    .set FSTAT, 0x212010
    cli
    movl $0, BASE+0x70            # Status: reset
    movl $3, BASE+0x70            # ACKNOWLEDGE | DRIVER
    movl $1, BASE+0x24            # DriverFeaturesSel: bits 32-63
    movl $1, BASE+0x20            # VIRTIO_F_VERSION_1
    movl $11, BASE+0x70           # | FEATURES_OK
    movl $0, BASE+0x30            # QueueSel 0
    movl $8, BASE+0x38            # QueueNum 8
    movl $DESC, BASE+0x80
    movl $AVAIL, BASE+0x90
    movl $USED, BASE+0xa0
    movl $1, BASE+0x44            # QueueReady
    movl $15, BASE+0x70           # | DRIVER_OK

    movl $1, HDR                  # VIRTIO_BLK_T_OUT, sector {sector}
    movl ${sector}, HDR+8
    movl $4, FHDR                 # VIRTIO_BLK_T_FLUSH
    mov $DATA, %edi
    mov $512, %ecx
    mov ${fill}, %al
    rep stosb
    movb $0x7f, STAT
    movb $0x7f, FSTAT
    # descriptors (addr, len, flags, next): 0-1-2 the write, 3-4 the flush
    movl $HDR, DESC+0
    movl $16, DESC+8
    movw $1, DESC+12
    movw $1, DESC+14
    movl $DATA, DESC+16
    movl $512, DESC+24
    movw $1, DESC+28
    movw $2, DESC+30
    movl $STAT, DESC+32
    movl $1, DESC+40
    movw $2, DESC+44
    movl $FHDR, DESC+48
    movl $16, DESC+56
    movw $1, DESC+60
    movw $4, DESC+62
    movl $FSTAT, DESC+64
    movl $1, DESC+72
    movw $2, DESC+76

    movw $0, AVAIL+4              # ring[0] = chain 0
    movw $1, AVAIL+2              # idx = 1
    movl $0, BASE+0x50            # QueueNotify: the kick
    rdtsc                         # wait for the answer at most WAIT_TSC_HIGH * 2^32 TSC cycles:
    lea {wait}(%edx), %ebx        # a time, not a count of loops (the worker thread may be slow to run)
1:  cmpw $1, USED+2
    je 2f
    rdtsc
    cmp %ebx, %edx
    jb 1b
2:  movw $3, AVAIL+6              # ring[1] = chain 3
    movw $2, AVAIL+2
    movl $0, BASE+0x50
    rdtsc
    lea {wait}(%edx), %ebx
3:  cmpw $2, USED+2
    je 4f
    rdtsc
    cmp %ebx, %edx
    jb 3b
4:  mov $0x3f8, %dx
    mov $'S', %al
    out %al, %dx
    mov STAT, %al
    add $'0', %al
    out %al, %dx
    mov FSTAT, %al
    add $'0', %al
    out %al, %dx
    mov $'I', %al
    out %al, %dx
    mov BASE+0x60, %eax           # InterruptStatus
    add $'0', %al
    out %al, %dx
    movl $1, BASE+0x64            # InterruptACK
    mov $'\\n', %al
    out %al, %dx
    {end}
"""
POWEROFF = """
    mov $0x604, %dx
    mov $0x2000, %ax
    out %ax, %dx
"""
SPIN = """
    mov $'F', %al
    out %al, %dx
    mov $'\\n', %al
    out %al, %dx
5:  jmp 5b
"""


@pytest.fixture(scope="module")
def guests(tmp_path_factory):
    base = tmp_path_factory.mktemp("virtio-guest")
    made = {}
    for name, end in (("poweroff", POWEROFF), ("spin", SPIN)):
        source = GUEST.format(base=layout.VIRTIO_MMIO_BASE, sector=SECTOR, fill=FILL, end=end,
                              wait=WAIT_TSC_HIGH)
        made[name] = pvh_elf(source, base / f"{name}.elf") or base / f"{name}.elf"
    return made


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(8 * 512))
    return path


def sector(image, n: int) -> bytes:
    return image.read_bytes()[n * 512:(n + 1) * 512]


@pytest.mark.parametrize("notify", ["eventfd", "exit"])
def test_guest_writes_a_sector_the_host_reads_back(guests, image, notify):
    result = pykvm("boot", "--kernel", str(guests["poweroff"]), "--disk", str(image),
                   "--virtio-notify", notify, "--trace")
    err = result.stderr.decode()
    assert result.returncode == 0, err[-2000:]
    assert b"S00I1\n" in result.stdout, result.stdout       # OUT ok, FLUSH ok, used-buffer interrupt
    assert sector(image, SECTOR) == bytes([FILL]) * 512
    assert sector(image, 0) == bytes(512) and sector(image, 2) == bytes(512)
    notify_exits = err.count(f"address={layout.VIRTIO_MMIO_BASE + 0x50:#x}")
    if notify == "eventfd":
        assert notify_exits == 0, "a QueueNotify write reached pykvm as an MMIO exit"
        # two kicks; the worker may find both in one wake-up of its eventfd
        assert re.search(r"kicks: 0 by MMIO exit, [12] by ioeventfd", err), err[-500:]
    else:
        assert notify_exits == 2, f"{notify_exits} QueueNotify exits"
        assert "kicks: 2 by MMIO exit, 0 by ioeventfd" in err, err[-500:]


def test_interrupt_status_and_ack_are_answered_in_c_unless_traced(guests, image):
    # The same guest: its InterruptStatus read (I1) and InterruptACK write never reach the
    # Python run loop; --exit-summary still counts them, and says which were answered in C.
    result = pykvm("boot", "--kernel", str(guests["poweroff"]), "--disk", str(image), "--exit-summary")
    err = result.stderr.decode()
    assert result.returncode == 0, err[-2000:]
    assert b"S00I1\n" in result.stdout, result.stdout
    assert "answered in C without Python: MMIO_READ 1, MMIO_WRITE 1" in err, err[-800:]
    plain = pykvm("boot", "--kernel", str(guests["poweroff"]), "--disk", str(image),
                  "--virtio-notify", "exit", "--exit-summary")
    assert b"S00I1\n" in plain.stdout, plain.stdout
    assert "answered in C" not in plain.stderr.decode(), plain.stderr.decode()[-800:]


def test_read_only_disk_refuses_the_write(guests, image):
    result = pykvm("boot", "--kernel", str(guests["poweroff"]), "--disk", f"{image},ro")
    assert result.returncode == 0, result.stderr
    assert b"S10I1\n" in result.stdout, result.stdout       # OUT: VIRTIO_BLK_S_IOERR; FLUSH: OK
    assert image.read_bytes() == bytes(8 * 512)


def test_data_is_in_the_image_after_kill_9_once_the_flush_completed(guests, image):
    output = kill_9_after([sys.executable, "-m", "pykvm", "boot", "--kernel", str(guests["spin"]),
                           "--disk", str(image)], b"F\n")
    assert b"S00" in output, output
    assert sector(image, SECTOR) == bytes([FILL]) * 512
