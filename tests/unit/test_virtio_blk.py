"""virtio-blk (virtio 1.2, 5.2) through the transport, and hostile rings built by hand.

Every hostile case ends the same way: no exception reaches the caller, the
call returns (no hang), nothing outside the image is written, and the guest
gets the spec's answer: VIRTIO_BLK_S_IOERR / _UNSUPP in the status byte, or
DEVICE_NEEDS_RESET in the status register with a config-change interrupt.
"""
from __future__ import annotations

import os
import random
import struct

import pytest

from pykvm.vm.devices.virtio import mmio
from pykvm.vm.devices.virtio.blk import (VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
                                      VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
                                      VIRTIO_BLK_T_OUT, Block)
from pykvm.vm.devices.virtio.device import VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1
from pykvm.vm.devices.virtio.queue import (VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT,
                                        VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE)
from virtio_driver import DATA_AREA, LIVE, ToyDriver

SECTORS = 64
HEADER, DATA, STATUS = DATA_AREA, DATA_AREA + 0x1000, DATA_AREA + 0x3000
INDIRECT = DATA_AREA + 0x4000
NEXT, WRITE = VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
STATUS_SENTINEL = 0xAA


def pattern(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(pattern(SECTORS * 512))
    return path


def make_driver(image, read_only=False, **start):
    driver = ToyDriver(Block(image, read_only=read_only))
    driver.start(**start)
    return driver


@pytest.fixture
def driver(image):
    d = make_driver(image)
    yield d
    d.close()


def request(driver, kind: int, sector: int = 0, data_len: int = 512, data_flags: int = WRITE,
            head: int = 0) -> None:
    """The usual three-descriptor request: header, data, status; offered and kicked."""
    driver.memory.write(HEADER, struct.pack("<IIQ", kind, 0, sector))
    driver.memory.write(STATUS, bytes([STATUS_SENTINEL]))
    driver.descriptor(0, head, HEADER, 16, NEXT, head + 1)
    if data_len:
        driver.descriptor(0, head + 1, DATA, data_len, data_flags | NEXT, head + 2)
        driver.descriptor(0, head + 2, STATUS, 1, WRITE)
    else:
        driver.descriptor(0, head + 1, STATUS, 1, WRITE)
    driver.offer(0, head)
    driver.kick(0)


def submit(driver, head: int = 0) -> None:
    """Offer the chain at `head` and kick."""
    driver.offer(0, head)
    driver.kick(0)


def status_byte(driver) -> int:
    return driver.memory.read(STATUS, 1)[0]


def assert_needs_reset(driver):
    assert driver.status & mmio.STATUS_DEVICE_NEEDS_RESET, f"status {driver.status:#x}"
    assert driver.read(mmio.INTERRUPT_STATUS) & mmio.INTERRUPT_CONFIG_CHANGE
    assert driver.interrupts >= 1


# --- requests that work
def test_read_sectors(driver, image):
    request(driver, VIRTIO_BLK_T_IN, sector=3, data_len=1024)
    assert status_byte(driver) == VIRTIO_BLK_S_OK
    assert driver.memory.read(DATA, 1024) == image.read_bytes()[3 * 512:5 * 512]
    assert driver.used(0) == [(0, 1025)]
    assert driver.read(mmio.INTERRUPT_STATUS) & mmio.INTERRUPT_USED_BUFFER and driver.interrupts == 1


def test_write_sectors(driver, image):
    driver.memory.write(DATA, b"W" * 512)
    request(driver, VIRTIO_BLK_T_OUT, sector=SECTORS - 1, data_flags=0)
    assert status_byte(driver) == VIRTIO_BLK_S_OK
    assert image.read_bytes()[-512:] == b"W" * 512
    assert driver.used(0) == [(0, 1)]


def test_request_split_across_descriptors_any_way(driver, image):
    """2.7.4.2: the header in two pieces, the data and status in one writable buffer."""
    driver.memory.write(HEADER, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, 2))
    driver.descriptor(0, 0, HEADER, 5, NEXT, 1)
    driver.descriptor(0, 1, HEADER + 5, 11, NEXT, 2)
    driver.descriptor(0, 2, DATA, 513, WRITE)
    submit(driver)
    assert driver.memory.read(DATA, 512) == image.read_bytes()[1024:1536]
    assert driver.memory.read(DATA + 512, 1)[0] == VIRTIO_BLK_S_OK


def test_flush_calls_fdatasync(driver, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append(fd))
    request(driver, VIRTIO_BLK_T_FLUSH, data_len=0)
    assert status_byte(driver) == VIRTIO_BLK_S_OK and calls == [driver.device.fd]


def test_get_id(driver):
    request(driver, VIRTIO_BLK_T_GET_ID, data_len=20)
    assert status_byte(driver) == VIRTIO_BLK_S_OK
    assert driver.memory.read(DATA, 20) == b"pykvm-disk.img".ljust(20, b"\0")


def test_indirect_request(driver, image):
    driver.memory.write(HEADER, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, 1))
    driver.descriptor(0, 0, HEADER, 16, NEXT, 1, table=INDIRECT)
    driver.descriptor(0, 1, DATA, 512, WRITE | NEXT, 2, table=INDIRECT)
    driver.descriptor(0, 2, STATUS, 1, WRITE, table=INDIRECT)
    driver.descriptor(0, 0, INDIRECT, 48, VIRTQ_DESC_F_INDIRECT)
    submit(driver)
    assert status_byte(driver) == VIRTIO_BLK_S_OK
    assert driver.memory.read(DATA, 512) == image.read_bytes()[512:1024]


def test_indirect_table_as_long_as_the_queue(driver, image):
    """A table of the queue's size (8 here: header, 6 data buffers, status) is allowed
    (2.7.5.3.1); Linux sends one for a request of seg_max segments.  The descriptor that
    points to the table is not counted as one of the chain's."""
    driver.memory.write(HEADER, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, 4))
    driver.memory.write(STATUS, bytes([STATUS_SENTINEL]))
    driver.descriptor(0, 0, HEADER, 16, NEXT, 1, table=INDIRECT)
    pieces = [DATA + 0x400 * i for i in range(6)]                # 512 bytes each, 512 apart
    for i, address in enumerate(pieces, start=1):
        driver.descriptor(0, i, address, 512, WRITE | NEXT, i + 1, table=INDIRECT)
    driver.descriptor(0, 7, STATUS, 1, WRITE, table=INDIRECT)
    driver.descriptor(0, 0, INDIRECT, 8 * 16, VIRTQ_DESC_F_INDIRECT)
    submit(driver)
    assert driver.status == LIVE and status_byte(driver) == VIRTIO_BLK_S_OK
    sectors = image.read_bytes()[4 * 512:10 * 512]
    assert [driver.memory.read(a, 512) for a in pieces] == [sectors[i:i + 512] for i in range(0, 3072, 512)]
    assert driver.used(0) == [(0, 3073)]


def test_adjacent_buffers_are_one_stream(driver, image):
    """Three data descriptors end to end and the status byte right after them: the device
    may treat them as one buffer (they are joined), and the status is still the last byte."""
    driver.memory.write(HEADER, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, 5))
    for i in range(3):
        driver.descriptor(0, i + 1, DATA + 512 * i, 512, WRITE | NEXT, i + 2)
    driver.descriptor(0, 0, HEADER, 16, NEXT, 1)
    driver.descriptor(0, 4, DATA + 1536, 1, WRITE)
    submit(driver)
    assert driver.memory.read(DATA, 1536) == image.read_bytes()[5 * 512:8 * 512]
    assert driver.memory.read(DATA + 1536, 1)[0] == VIRTIO_BLK_S_OK
    assert driver.used(0) == [(0, 1537)]


def test_many_requests_wrap_the_ring(driver, image):
    for n in range(20):                                           # queue of 8: indexes wrap
        request(driver, VIRTIO_BLK_T_IN, sector=n, data_len=512)
        assert driver.memory.read(DATA, 512) == image.read_bytes()[n * 512:(n + 1) * 512]
    assert len(driver.used(0)) == 20 and driver.status == LIVE


# --- refused requests: the spec's status byte
def test_request_past_the_end_is_ioerr(driver, image):
    before = image.read_bytes()
    driver.memory.write(DATA, b"X" * 1024)
    request(driver, VIRTIO_BLK_T_OUT, sector=SECTORS - 1, data_len=1024, data_flags=0)
    assert status_byte(driver) == VIRTIO_BLK_S_IOERR
    assert image.read_bytes() == before and image.stat().st_size == SECTORS * 512


def test_huge_sector_number_is_ioerr(driver, image):
    request(driver, VIRTIO_BLK_T_IN, sector=2**64 - 1)
    assert status_byte(driver) == VIRTIO_BLK_S_IOERR


def test_partial_sector_is_ioerr(driver):
    request(driver, VIRTIO_BLK_T_IN, data_len=100)
    assert status_byte(driver) == VIRTIO_BLK_S_IOERR


def test_read_into_a_device_readable_buffer_is_refused(driver):
    """A read whose data descriptor lacks VIRTQ_DESC_F_WRITE: the device must not write it."""
    driver.memory.write(DATA, b"R" * 512)
    request(driver, VIRTIO_BLK_T_IN, data_flags=0)
    assert status_byte(driver) == VIRTIO_BLK_S_IOERR
    assert driver.memory.read(DATA, 512) == b"R" * 512


def test_write_to_a_read_only_disk_is_ioerr(image):
    before = image.read_bytes()
    driver = make_driver(image, read_only=True)
    driver.memory.write(DATA, b"W" * 512)
    request(driver, VIRTIO_BLK_T_OUT, data_flags=0)
    assert status_byte(driver) == VIRTIO_BLK_S_IOERR
    assert image.read_bytes() == before
    driver.close()


def test_unknown_request_type_is_unsupp(driver):
    request(driver, 99)
    assert status_byte(driver) == VIRTIO_BLK_S_UNSUPP


def test_short_header_is_ioerr(driver):
    driver.descriptor(0, 0, HEADER, 8, NEXT, 1)
    driver.descriptor(0, 1, STATUS, 1, WRITE)
    submit(driver)
    assert status_byte(driver) == VIRTIO_BLK_S_IOERR


# --- broken rings: DEVICE_NEEDS_RESET, and the device comes back after a reset
def test_descriptor_outside_guest_memory(driver, image):
    before = image.read_bytes()
    driver.memory.write(HEADER, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, 0))
    driver.descriptor(0, 0, HEADER, 16, NEXT, 1)
    driver.descriptor(0, 1, 0x7FFF_0000_0000, 512, WRITE | NEXT, 2)
    driver.descriptor(0, 2, STATUS, 1, WRITE)
    submit(driver)
    assert_needs_reset(driver)
    assert driver.used(0) == [] and image.read_bytes() == before


def test_descriptor_length_overflows_the_address_space(driver):
    driver.descriptor(0, 0, 0xFFFF_FFFF_FFFF_F000, 0xFFFF_FFFF, NEXT, 1)
    driver.descriptor(0, 1, STATUS, 1, WRITE)
    submit(driver)
    assert_needs_reset(driver)


def test_descriptor_crossing_the_end_of_ram(driver):
    end = driver.memory.size
    driver.descriptor(0, 0, end - 8, 16)
    submit(driver)
    assert_needs_reset(driver)


def test_descriptor_loop(driver):
    driver.descriptor(0, 0, HEADER, 16, NEXT, 1)
    driver.descriptor(0, 1, STATUS, 1, WRITE | NEXT, 0)
    submit(driver)                                                # returns: the loop is caught
    assert_needs_reset(driver)


def test_chain_longer_than_the_queue_through_an_indirect_table(driver):
    for i in range(16):                                           # queue size 8, table of 16
        driver.descriptor(0, i, STATUS, 1, WRITE | NEXT, i + 1, table=INDIRECT)
    driver.descriptor(0, 0, INDIRECT, 16 * 16, VIRTQ_DESC_F_INDIRECT)
    submit(driver)
    assert_needs_reset(driver)


def test_loop_inside_an_indirect_table(driver):
    driver.descriptor(0, 0, HEADER, 16, NEXT, 1, table=INDIRECT)
    driver.descriptor(0, 1, STATUS, 1, WRITE | NEXT, 0, table=INDIRECT)
    driver.descriptor(0, 0, INDIRECT, 32, VIRTQ_DESC_F_INDIRECT)
    submit(driver)
    assert_needs_reset(driver)


def test_indirect_inside_indirect(driver):
    driver.descriptor(0, 0, INDIRECT + 0x100, 16, VIRTQ_DESC_F_INDIRECT, table=INDIRECT)
    driver.descriptor(0, 0, STATUS, 1, WRITE, table=INDIRECT + 0x100)
    driver.descriptor(0, 0, INDIRECT, 16, VIRTQ_DESC_F_INDIRECT)
    submit(driver)
    assert_needs_reset(driver)


def test_indirect_not_negotiated(image):
    driver = make_driver(image, features=VIRTIO_F_VERSION_1)
    driver.descriptor(0, 0, STATUS, 1, WRITE, table=INDIRECT)
    driver.descriptor(0, 0, INDIRECT, 16, VIRTQ_DESC_F_INDIRECT)
    submit(driver)
    assert_needs_reset(driver)
    driver.close()


def test_indirect_table_outside_guest_memory(image):
    driver = make_driver(image, features=VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC)
    driver.descriptor(0, 0, 0xFFFF_FFFF_FFFF_FFF0, 32, VIRTQ_DESC_F_INDIRECT)
    submit(driver)
    assert_needs_reset(driver)
    driver.close()


def test_readable_after_writable(driver):
    driver.descriptor(0, 0, STATUS, 1, WRITE | NEXT, 1)
    driver.descriptor(0, 1, HEADER, 16)
    submit(driver)
    assert_needs_reset(driver)


def test_no_status_byte(driver):
    driver.memory.write(HEADER, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, 0))
    driver.descriptor(0, 0, HEADER, 16)
    submit(driver)
    assert_needs_reset(driver)


def test_head_index_outside_the_table(driver):
    driver.offer(0, 200)
    driver.kick(0)
    assert_needs_reset(driver)


def test_avail_idx_too_far_ahead(driver):
    driver.offer(0, 0, avail_idx=100)
    driver.kick(0)
    assert_needs_reset(driver)


def test_device_works_again_after_reset(driver, image):
    driver.descriptor(0, 0, HEADER, 16, NEXT, 0)
    submit(driver)
    assert_needs_reset(driver)
    driver.start()
    request(driver, VIRTIO_BLK_T_IN, sector=5)
    assert status_byte(driver) == VIRTIO_BLK_S_OK
    assert driver.memory.read(DATA, 512) == image.read_bytes()[5 * 512:6 * 512]


def test_random_rings_never_raise_and_never_touch_the_image(image):
    """Descriptor tables and available rings of random bytes: any outcome but an exception."""
    before = image.read_bytes()
    rng = random.Random(13)
    driver = make_driver(image, read_only=True)
    for _ in range(300):
        driver.start()
        driver.scramble(0, rng)
        driver.kick(0)
    assert image.read_bytes() == before
    driver.close()


# --- notification suppression (2.7.7, 2.7.10)
def test_no_interrupt_flag_is_honoured(image):
    driver = make_driver(image, features=VIRTIO_F_VERSION_1)
    driver.set_avail_u16(0, 0, VIRTQ_AVAIL_F_NO_INTERRUPT)
    request(driver, VIRTIO_BLK_T_IN)
    assert status_byte(driver) == VIRTIO_BLK_S_OK and driver.interrupts == 0
    driver.close()


def test_event_idx_used_event_and_avail_event(driver):
    size = driver.sizes[0]
    driver.set_avail_u16(0, 4 + 2 * size, 1)                      # used_event: interrupt after 2nd
    request(driver, VIRTIO_BLK_T_IN)
    assert driver.interrupts == 0
    assert driver.used_u16(0, 4 + 8 * size) == 1                  # avail_event: kick me at 1
    request(driver, VIRTIO_BLK_T_IN)
    assert driver.interrupts == 1
