"""The snapshot directory format and the devices' get_state/set_state, without KVM.

pykvm.vm.snapshot.format: sparse memory writes whose hash ignores holes, parts
checked by size and sha256, a header's version and format; and every device
coming back from its state as it was (tests/kvm/test_snapshot.py does the
whole VM on /dev/kvm).
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct

import pytest

from pykvm.errors import SnapshotError
from pykvm.vm.devices import acpi_pm, cmos, i8042, pci, serial
from pykvm.vm.devices.virtio import mmio
from pykvm.vm.devices.virtio.blk import VIRTIO_BLK_T_IN, Block
from pykvm.vm.devices.virtio.console import HOST_QUEUE_BYTES, VirtioConsole
from pykvm.vm.devices.virtio.device import VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1
from pykvm.vm.devices.virtio.queue import VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
from pykvm.vm.snapshot.format import (PAGE, VERSION, Snapshot, SnapshotWriter, check_target, hash_sparse,
                                      write_sparse)
from virtio_driver import DATA_AREA, LIVE, ToyDriver


def test_zero_pages_become_holes_and_the_hash_ignores_them(tmp_path):
    buffer = mmap.mmap(-1, 64 * PAGE)
    buffer[3 * PAGE:3 * PAGE + 5] = b"hello"
    buffer[40 * PAGE] = 7
    sparse = tmp_path / "sparse"
    fd = os.open(sparse, os.O_RDWR | os.O_CREAT)
    hasher = hashlib.sha256()
    assert write_sparse(fd, buffer, 0, hasher) == 2          # two non-zero pages written
    os.ftruncate(fd, len(buffer))
    assert os.fstat(fd).st_blocks * 512 < 8 * PAGE, "zero pages were written, not left as holes"
    assert hash_sparse(fd, len(buffer)) == hasher.hexdigest()
    os.close(fd)
    dense = tmp_path / "dense"                                # the same bytes, zeros written out
    dense.write_bytes(bytes(buffer))
    fd = os.open(dense, os.O_RDONLY)
    assert hash_sparse(fd, len(buffer)) == hasher.hexdigest()
    os.close(fd)
    buffer[40 * PAGE] = 8
    fd = os.open(sparse, os.O_RDWR)
    os.pwrite(fd, b"\x08", 40 * PAGE)
    assert hash_sparse(fd, len(buffer)) != hasher.hexdigest(), "a changed page left the hash alone"
    os.close(fd)


def test_runs_of_pages_are_written_whole_across_chunks(tmp_path):
    """Runs of non-zero pages, one across the 1 MiB chunk boundary and one at the very end:
    the file holds every byte of the buffer, and only the zero pages are holes."""
    from pykvm.vm.snapshot.format import CHUNK

    buffer = mmap.mmap(-1, 2 * CHUNK)
    pages = [0, 1, 2, CHUNK // PAGE - 1, CHUNK // PAGE, 2 * CHUNK // PAGE - 1]
    for page in pages:
        buffer[page * PAGE:(page + 1) * PAGE] = bytes([page % 251 + 1]) * PAGE
    path = tmp_path / "memory"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    hasher = hashlib.sha256()
    assert write_sparse(fd, buffer, 0, hasher) == len(pages)
    os.ftruncate(fd, len(buffer))
    assert hash_sparse(fd, len(buffer)) == hasher.hexdigest()
    os.close(fd)
    assert path.read_bytes() == bytes(buffer)
    assert os.stat(path).st_blocks * 512 <= (len(pages) + 4) * PAGE, "zero pages were written"


def written(tmp_path, **header) -> Snapshot:
    writer = SnapshotWriter(tmp_path / "snap")
    writer.add("vcpu0/regs.bin", bytes(range(144)), "KVM_GET_REGS")
    writer.add_json("devices/cmos.json", {"index": 3}, "Cmos.get_state")
    writer.commit({"guest": {"memory": 64 * PAGE}, "host": {}, "memory": {}, **header})
    return Snapshot.open(tmp_path / "snap")


def test_parts_come_back_as_written(tmp_path):
    snap = written(tmp_path)
    assert snap.part("vcpu0/regs.bin") == bytes(range(144))
    assert snap.json_part("devices/cmos.json") == {"index": 3}
    assert not list(tmp_path.glob(".snap.*")), "the partial directory was left behind"


def test_a_changed_or_truncated_part_is_refused(tmp_path):
    snap = written(tmp_path)
    regs = tmp_path / "snap" / "vcpu0" / "regs.bin"
    regs.write_bytes(bytes(144))
    with pytest.raises(SnapshotError, match="sha256 differs"):
        snap.part("vcpu0/regs.bin")
    regs.write_bytes(bytes(100))
    with pytest.raises(SnapshotError, match="truncated"):
        snap.part("vcpu0/regs.bin")


def test_a_part_outside_the_directory_is_refused(tmp_path):
    snap = written(tmp_path)
    snap.header["parts"]["../../etc/passwd"] = {"size": 1, "sha256": ""}
    with pytest.raises(SnapshotError, match="outside the snapshot"):
        snap.part("../../etc/passwd")


def test_headers_from_the_future_or_of_another_format_are_refused(tmp_path):
    written(tmp_path)
    path = tmp_path / "snap" / "snapshot.json"
    header = json.loads(path.read_text())
    path.write_text(json.dumps({**header, "version": VERSION + 1}))
    with pytest.raises(SnapshotError, match=f"version {VERSION + 1} is newer"):
        Snapshot.open(tmp_path / "snap")
    path.write_text(json.dumps({**header, "format": "qemu"}))
    with pytest.raises(SnapshotError, match="not a pykvm-snapshot header"):
        Snapshot.open(tmp_path / "snap")
    path.write_text("{")
    with pytest.raises(SnapshotError, match="unreadable header"):
        Snapshot.open(tmp_path / "snap")


def test_a_new_snapshot_replaces_an_old_one_but_nothing_else(tmp_path):
    written(tmp_path)
    check_target(tmp_path / "snap")                     # an old snapshot: fine to replace
    check_target(tmp_path / "new")                      # nothing there yet: fine
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes").write_text("keep")
    with pytest.raises(SnapshotError, match="not a snapshot directory"):
        check_target(tmp_path / "mine")


# --- devices: get_state, then set_state on a new device, gives the same device ----------------

def test_the_uart_comes_back_with_its_registers_fifo_and_interrupt():
    levels = []
    old = serial.Serial16550(out=lambda data: None, irq=levels.append)
    old.write(serial.FCR, 1, serial.FCR_ENABLE)
    old.write(serial.IER, 1, serial.IER_ERBFI)
    old.write(serial.LCR, 1, serial.LCR_DLAB)          # the slowest baud rate: the character
    old.write(serial.DLL, 1, 0xFF)                      # timeout (4 characters, ~23 s) cannot
    old.write(serial.DLM, 1, 0xFF)                      # fire while the test compares states
    old.write(serial.LCR, 1, 0x03)
    old.write(serial.SCR, 1, 0x5A)
    old.receive(b"ab")
    assert old.interrupt_line
    new_levels = []
    new = serial.Serial16550(out=lambda data: None, irq=new_levels.append)
    new.set_state(json.loads(json.dumps(old.get_state())))
    assert new_levels == [True], "a raised INTR was not raised again"
    assert new.get_state() == old.get_state()
    assert [new.read(serial.SCR, 1), new.read(serial.RBR, 1), new.read(serial.RBR, 1)] == [0x5A, ord("a"), ord("b")]
    old.close()
    new.close()


@pytest.mark.parametrize("make, poke", [
    (lambda: i8042.I8042(reset=lambda: None),
     lambda d: (d.write(i8042.COMMAND, 1, i8042.CMD_WRITE_CB), d.write(i8042.DATA, 1, 0x47),
                d.write(i8042.COMMAND, 1, i8042.CMD_READ_CB))),
    (lambda: cmos.Cmos(), lambda d: (d.write(0, 1, 0x40), d.write(1, 1, 0x99), d.write(0, 1, 0x41))),
    (lambda: acpi_pm.AcpiPmEvent(), lambda d: d.write(acpi_pm.PM1_EN, 2, acpi_pm.PM1_PWRBTN_EN)),
    (lambda: acpi_pm.AcpiPmControl(stop=lambda status: None), lambda d: d.write(0, 2, acpi_pm.PM1_SCI_EN)),
    (lambda: pci.PciConfigSpace(), lambda d: d.write(pci.CONFIG_ADDRESS, 4, 0x80001804)),
], ids=["i8042", "cmos", "acpi-pm-event", "acpi-pm", "pci"])
def test_each_device_comes_back_as_it_was(make, poke):
    old = make()
    poke(old)
    new = make()
    assert new.get_state() != old.get_state(), "poking changed nothing: the test proves nothing"
    new.set_state(json.loads(json.dumps(old.get_state())))
    assert new.get_state() == old.get_state()
    assert [new.read(offset, 1) for offset in range(2)] == [old.read(offset, 1) for offset in range(2)]


def test_a_header_without_a_memory_size_is_refused(tmp_path):
    written(tmp_path)
    path = tmp_path / "snap" / "snapshot.json"
    header = json.loads(path.read_text())
    del header["guest"]["memory"]
    path.write_text(json.dumps(header))
    with pytest.raises(SnapshotError, match="not a whole number of pages"):
        Snapshot.open(tmp_path / "snap")


def test_a_header_with_a_vcpu_count_that_is_no_count_is_refused(tmp_path):
    written(tmp_path)
    path = tmp_path / "snap" / "snapshot.json"
    header = json.loads(path.read_text())
    for vcpus in (0, "2", None):
        header["guest"]["vcpus"] = vcpus
        path.write_text(json.dumps(header))
        with pytest.raises(SnapshotError, match="vCPUs: a damaged header"):
            Snapshot.open(tmp_path / "snap")
    header["guest"]["vcpus"] = 2
    path.write_text(json.dumps(header))
    assert Snapshot.open(tmp_path / "snap").vcpu_count == 2


# --- virtio: the transport's half of the state (the rings are guest memory) -------------------

HEADER, DATA, STATUS = DATA_AREA, DATA_AREA + 0x1000, DATA_AREA + 0x2000


def read_request(driver, head: int, sector: int) -> None:
    """A one-sector read at descriptors head..head+2, made available (not kicked)."""
    driver.memory.write(HEADER + 16 * head, struct.pack("<IIQ", VIRTIO_BLK_T_IN, 0, sector))
    driver.descriptor(0, head, HEADER + 16 * head, 16, VIRTQ_DESC_F_NEXT, head + 1)
    driver.descriptor(0, head + 1, DATA + 512 * head, 512, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, head + 2)
    driver.descriptor(0, head + 2, STATUS + head, 1, VIRTQ_DESC_F_WRITE)
    driver.offer(0, head)


def test_a_virtio_transport_comes_back_and_serves_what_was_pending(tmp_path):
    """A request served before the snapshot, one made available but not yet served: the restored
    transport has the same registers, and its first kick serves the second request only."""
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(range(256)) * 16)
    old = ToyDriver(Block(image))
    old.start(VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX)
    read_request(old, 0, sector=1)
    old.kick(0)
    read_request(old, 3, sector=2)                                 # pending at the snapshot
    with old.transport.lock:
        state = json.loads(json.dumps(old.transport.get_state()))
    assert state["queues"][0]["last_avail"] == 1 and state["queues"][0]["used_idx"] == 1, state
    new_device = Block(image)
    interrupts = []
    new = mmio.VirtioMmio(new_device, old.memory, lambda: interrupts.append(1))   # memory.bin's copy
    new.set_state(state)
    for offset in (mmio.STATUS, mmio.INTERRUPT_STATUS, mmio.QUEUE_READY):
        assert new.read(offset, 4) == old.read(offset), f"register {offset:#x}"
    assert new.read(mmio.STATUS, 4) == LIVE and new.get_state() == state
    old.set_avail_u16(0, 4 + 2 * 8, 1)                          # used_event: "interrupt me after 1"
    new.kick_all()
    assert old.used(0) == [(0, 513), (3, 513)], "the pending request was not served once"
    assert old.memory.read(DATA + 512 * 3, 512) == image.read_bytes()[1024:1536]
    assert interrupts == [1]
    new.reset()
    new_device.close()
    old.close()


def test_a_virtio_state_with_an_index_out_of_range_is_refused(tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(4096))
    old = ToyDriver(Block(image))
    old.start()
    state = old.transport.get_state()
    state["queues"][0]["last_avail"] = 1 << 16
    new = mmio.VirtioMmio(Block(image), old.memory, lambda: None)
    with pytest.raises(ValueError, match="16-bit"):
        new.set_state(state)
    new.reset()
    new.device.close()
    old.close()


def test_the_virtio_console_keeps_input_the_guest_has_not_taken():
    old = VirtioConsole(out=lambda data: None)
    old.receive(b"typed before the snapshot")
    new = VirtioConsole(out=lambda data: None)
    new.set_state(json.loads(json.dumps(old.get_state())))
    assert new.get_state() == {"host_queue": b"typed before the snapshot".hex()}
    new.set_state({"host_queue": "00" * (HOST_QUEUE_BYTES + 10)})
    assert len(bytes.fromhex(new.get_state()["host_queue"])) == HOST_QUEUE_BYTES
