"""The tiny kernel's virtio-blk driver on pykvm's virtio-blk: the whole path, end to end.

The guest writes a sector and powers off; the host reads the image.  A
read-only disk answers the write VIRTIO_BLK_S_IOERR.  Once the guest saw its
flush complete, kill -9 of pykvm loses nothing.  Both notification paths
(ioeventfd/irqfd and plain MMIO exits) run the same session.
"""
from __future__ import annotations

import re

import pytest

from clitools import kill_9_after
from tinyvm import Run, build_tiny, output_of, pykvm_command, run

pytestmark = pytest.mark.kvm

SECTORS = 128
TEXT = "written-by-the-guest"
HOST_TEXT = b"put-there-by-the-host"


@pytest.fixture(scope="module")
def tiny():
    return build_tiny()


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    data = bytearray(SECTORS * 512)
    data[3 * 512:3 * 512 + len(HOST_TEXT)] = HOST_TEXT
    path.write_bytes(bytes(data))
    return path


def sector(image, n: int) -> bytes:
    return image.read_bytes()[n * 512:(n + 1) * 512]


def boot_pykvm(tiny, script: str, *args: str) -> Run:
    return run(pykvm_command(tiny, "run=" + script) + list(args))


def dumped_bytes(lines: list[str]) -> bytes:
    """The bytes of a `dread` hex dump ("0000  70 75 ...  |pu...|")."""
    rows = [line.split("|")[0].split()[1:] for line in lines[1:] if "|" in line]
    return bytes(int(h, 16) for row in rows for h in row)


@pytest.mark.parametrize("notify", ["eventfd", "exit"])
def test_guest_writes_a_sector_and_the_host_reads_it_back(tiny, image, notify):
    result = boot_pykvm(tiny, f"dwrite 1 {TEXT};dread 3;disk;poweroff", "--disk", str(image),
                        "--virtio-notify", notify)
    assert result.status == 0, result.console
    # the driver counts the interrupts it took: irqfd (eventfd) or KVM_IRQ_LINE (exit) reached
    # it (up to one per request, GET_ID, write, flush, read; edges may coalesce)
    interrupts = re.search(r"interrupts: (\d+)", "\n".join(output_of(result, "disk")))
    assert interrupts and int(interrupts.group(1)) >= 1, output_of(result, "disk")
    assert f"vda: wrote sector 1 ({len(TEXT)} bytes of text, zero-filled), flushed" in result.lines
    assert sector(image, 1) == TEXT.encode().ljust(512, b"\0")
    assert sector(image, 0) == bytes(512) and sector(image, 2) == bytes(512)
    shown = dumped_bytes(output_of(result, "dread 3"))       # and reads what the host put there
    assert shown == sector(image, 3)[:len(shown)] and shown.startswith(HOST_TEXT), shown


def test_read_only_disk_refuses_writes_with_ioerr(tiny, image):
    before = image.read_bytes()
    result = boot_pykvm(tiny, "disk;dwrite 1 nope;poweroff", "--disk", f"{image},ro")
    assert result.status == 0, result.console
    assert output_of(result, "dwrite 1 nope") == [
        "dwrite: vda sector 1: IOERR (the disk is read-only: VIRTIO_BLK_F_RO)"]
    assert "read-only" in output_of(result, "disk")[0]
    assert image.read_bytes() == before


def test_request_past_the_end_is_refused(tiny, image):
    before = image.read_bytes()
    result = boot_pykvm(tiny, f"dwrite {SECTORS} x;poweroff", "--disk", str(image))
    assert f"dwrite: vda sector {SECTORS}: IOERR (past the end: the disk has {SECTORS} sectors)" \
        in result.lines, result.console
    assert image.read_bytes() == before


def test_two_disks_in_two_slots(tiny, image, tmp_path):
    second = tmp_path / "second.img"
    second.write_bytes(bytes(16 * 512))
    result = boot_pykvm(tiny, "disk;dwrite vdb 2 second;poweroff", "--disk", str(image),
                        "--disk", str(second))
    assert result.status == 0, result.console
    assert sector(second, 2).startswith(b"second") and sector(image, 2) == bytes(512)


def test_data_survives_kill_9_after_the_flush(tiny, image):
    """No poweroff: the guest waits at its prompt after the flush; pykvm dies by SIGKILL."""
    kill_9_after(pykvm_command(tiny, f"run=dwrite 5 {TEXT}") + ["--disk", str(image)], b"flushed")
    assert sector(image, 5) == TEXT.encode().ljust(512, b"\0")
