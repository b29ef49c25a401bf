"""The virtio part of a snapshot: which devices the VM had, and the disks they stand on.

A virtio device's state lives in two places.  The rings are guest memory, and
memory.bin has them.  Everything else (the transport's registers, each
queue's place in memory and the device's indexes in it, a console's
undelivered input) is pykvm's: VirtioMmio.get_state() writes it to
virtio/N-NAME.json, one part per slot.  To put that state back, the restored
VM needs the same devices in the same slots, so the header's "virtio"
section records the configuration `pykvm boot` was given:

    "virtio": {"disks": [{"path": "/abs/disk.img", "read_only": false,
                          "size": 1048576, "mtime_ns": 1764...}],
               "console": false, "rng": true, "notify": "eventfd"}

Disk images are not copied into the snapshot: they can be large, and they
are files the user already has.  The guest's view of a disk (its driver's
requests in flight, a file system's cached blocks) is only right against the
image as it was when the snapshot was taken, so restore refuses a disk whose
size or modification time changed since: cheap (one stat), and honest (a
write through pykvm, or anything else, moves the mtime).
"""
from __future__ import annotations

import os
from pathlib import Path

from pykvm.errors import SnapshotError
from pykvm.vm.devices.virtio.attach import DiskSpec, VirtioConfig

__all__ = ["header_section", "config_from_header", "check_disks", "part_name"]


def part_name(slot: int, transport) -> str:
    """virtio/0-virtio-blk.json: the slot first, as the guest's command line numbers them."""
    return f"virtio/{slot}-{transport.device.name}.json"


def header_section(virtio) -> dict:
    """The header's "virtio" section for a machine's VirtioDevices (its disks stat'ed now)."""
    config = virtio.config
    if config.net is not None:
        raise SnapshotError("a VM with a network card (--net) is not snapshotted: its tap and "
                            "the frames in flight are the host's, which a restore cannot give back")
    if config.console_output is not None or config.error_console is not None:
        raise SnapshotError("a VM whose consoles write to the caller's stdout and stderr "
                            "(container run --isolation vm) is not snapshotted")
    disks = []
    for spec, slot in zip(config.disks, virtio.slots):
        status = os.fstat(slot.device.fd)
        disks.append({"path": str(Path(spec.path).resolve()), "read_only": spec.read_only,
                      "size": status.st_size, "mtime_ns": status.st_mtime_ns})
    return {"disks": disks, "console": config.console, "rng": config.rng, "notify": config.notify}


def config_from_header(header: dict) -> VirtioConfig:
    """The VirtioConfig that rebuilds the snapshot's devices (an old header without the
    section had none)."""
    section = header["guest"].get("virtio") or {}
    try:
        return VirtioConfig(disks=[DiskSpec(Path(d["path"]), bool(d["read_only"]))
                                   for d in section.get("disks", [])],
                            console=bool(section.get("console", False)), rng=bool(section.get("rng", False)),
                            notify=str(section.get("notify", "eventfd")))
    except (KeyError, TypeError, AttributeError) as e:
        raise SnapshotError(f"the header's virtio section is not the table it should be ({e})") from None


def check_disks(header: dict) -> None:
    """Refuse a restore whose disk image is missing, or changed since the snapshot."""
    for disk in (header["guest"].get("virtio") or {}).get("disks", []):
        path = disk.get("path")
        try:
            status = os.stat(path)
        except (OSError, TypeError) as e:
            raise SnapshotError(f"the snapshot's disk {path}: {getattr(e, 'strerror', e)}") from None
        if status.st_size != disk.get("size") or status.st_mtime_ns != disk.get("mtime_ns"):
            raise SnapshotError(f"the snapshot's disk {path} changed since the snapshot was taken "
                                "(its size or modification time differ): the guest's view of it "
                                "would be wrong; restore with the image as it was")
