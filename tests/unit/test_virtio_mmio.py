"""The virtio-mmio transport (virtio 1.2, 4.2): registers, negotiation, status, queues, interrupts."""
from __future__ import annotations

import pytest

from pykvm.vm.devices.virtio import mmio
from pykvm.vm.devices.virtio.blk import VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, Block
from pykvm.vm.devices.virtio.device import (VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_EVENT_IDX,
                                         VIRTIO_F_VERSION_1)
from virtio_driver import LIVE, ToyDriver


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(64 * 512))
    return path


@pytest.fixture
def driver(image):
    d = ToyDriver(Block(image))
    yield d
    d.close()


def test_identity_registers(driver):
    assert driver.read(mmio.MAGIC_VALUE) == 0x74726976            # "virt"
    assert driver.read(mmio.VERSION) == 2
    assert driver.read(mmio.DEVICE_ID) == 2                       # block
    assert driver.read(mmio.VENDOR_ID) == mmio.PYKVM_VENDOR


def test_features_offered_in_two_halves(driver):
    offered = driver.offered()
    for bit in (VIRTIO_F_VERSION_1, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_EVENT_IDX, VIRTIO_BLK_F_FLUSH):
        assert offered & bit, f"{bit:#x} missing from {offered:#x}"
    assert not offered & VIRTIO_BLK_F_RO


def test_features_ok_needs_version_1(driver):
    assert not driver.negotiate(driver.offered() & ~VIRTIO_F_VERSION_1)
    assert not driver.status & mmio.STATUS_FEATURES_OK


def test_features_ok_refuses_bits_not_offered(driver):
    assert not driver.negotiate(VIRTIO_F_VERSION_1 | (1 << 40))


def test_driver_ok_without_features_ok_is_refused(driver):
    driver.write(mmio.STATUS, mmio.STATUS_ACKNOWLEDGE | mmio.STATUS_DRIVER | mmio.STATUS_DRIVER_OK)
    assert not driver.status & mmio.STATUS_DRIVER_OK


def test_driver_features_frozen_after_features_ok(driver):
    assert driver.negotiate(VIRTIO_F_VERSION_1)
    driver.write(mmio.DRIVER_FEATURES_SEL, 0)
    driver.write(mmio.DRIVER_FEATURES, VIRTIO_BLK_F_FLUSH)
    assert driver.transport.driver_features == VIRTIO_F_VERSION_1


def test_full_initialization_and_reset(driver):
    driver.start()
    assert driver.status == LIVE
    driver.write(mmio.QUEUE_SEL, 0)
    assert driver.read(mmio.QUEUE_READY) == 1
    driver.write(mmio.STATUS, 0)                                  # reset
    assert driver.status == 0 and driver.read(mmio.QUEUE_READY) == 0
    assert driver.transport.driver_features == 0


def test_queue_num_max_and_missing_queues(driver):
    driver.write(mmio.QUEUE_SEL, 0)
    assert driver.read(mmio.QUEUE_NUM_MAX) == 256
    driver.write(mmio.QUEUE_SEL, 1)                               # virtio-blk has one queue
    assert driver.read(mmio.QUEUE_NUM_MAX) == 0


def test_queue_size_above_max_needs_reset(driver):
    assert driver.negotiate()
    driver.setup_queue(0, size=512)
    assert driver.status & mmio.STATUS_DEVICE_NEEDS_RESET


def test_queue_size_not_power_of_two_needs_reset(driver):
    assert driver.negotiate()
    driver.setup_queue(0, size=6)
    assert driver.status & mmio.STATUS_DEVICE_NEEDS_RESET


def test_rings_outside_guest_memory_need_reset(driver):
    assert driver.negotiate()
    driver.setup_queue(0, where=(0xFFFF_FFFF_0000, 0x20000, 0x30000))
    assert driver.status & mmio.STATUS_DEVICE_NEEDS_RESET
    assert driver.read(mmio.QUEUE_READY) == 0


def test_misaligned_ring_needs_reset(driver):
    assert driver.negotiate()
    driver.setup_queue(0, where=(0x10008, 0x20000, 0x30000))
    assert driver.status & mmio.STATUS_DEVICE_NEEDS_RESET


def test_config_space_holds_capacity(driver):
    low = driver.transport.read(mmio.CONFIG, 4)
    high = driver.transport.read(mmio.CONFIG + 4, 4)
    assert (high << 32) | low == 64
    assert driver.transport.read(mmio.CONFIG, 1) == 64            # byte access to config is allowed


def test_config_generation_changes_and_interrupts(driver):
    driver.start()
    before = driver.read(mmio.CONFIG_GENERATION)
    driver.transport.config_changed()
    assert driver.read(mmio.CONFIG_GENERATION) == before + 1
    assert driver.read(mmio.INTERRUPT_STATUS) & mmio.INTERRUPT_CONFIG_CHANGE
    assert driver.interrupts == 1
    driver.write(mmio.INTERRUPT_ACK, mmio.INTERRUPT_CONFIG_CHANGE)
    assert driver.read(mmio.INTERRUPT_STATUS) == 0


def test_narrow_register_access_is_ignored(driver):
    assert driver.transport.read(mmio.MAGIC_VALUE, 2) == 0
    driver.transport.write(mmio.STATUS, 1, mmio.STATUS_ACKNOWLEDGE)
    assert driver.status == 0


def test_no_shared_memory_regions(driver):
    assert driver.read(mmio.SHM_LEN_LOW) == 0xFFFFFFFF and driver.read(mmio.SHM_LEN_HIGH) == 0xFFFFFFFF


def test_kick_before_driver_ok_does_nothing(driver):
    assert driver.negotiate()
    driver.setup_queue(0)
    driver.descriptor(0, 0, 0x100000, 16)
    driver.offer(0, 0)
    driver.kick(0)
    assert driver.used(0) == [] and driver.interrupts == 0


def test_kick_of_a_queue_that_does_not_exist(driver):
    driver.start()
    driver.kick(7)
    driver.kick(0xFFFFFFFF)
    assert driver.status == LIVE


def test_a_guest_cannot_flood_the_log(driver, caplog):
    for _ in range(50):
        driver.transport.read(mmio.STATUS, 1)
        assert driver.negotiate()
        driver.setup_queue(0, size=6)                           # needs a reset, every time
    warnings = [r for r in caplog.records if r.name == "pykvm.virtio"]
    assert len(warnings) == 1 + mmio.MAX_LOGGED_RESETS, [r.getMessage() for r in warnings]
