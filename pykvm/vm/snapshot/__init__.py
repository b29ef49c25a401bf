"""Snapshots: a running VM written to a directory, and brought back from it.

    take(machine, DIR)          the paused VM's every part -> DIR (format.py, state.py)
    Snapshot.open(DIR)          the header, checked; then check_restore() before anything starts
    Machine(config with restore=snapshot)   a fresh VM given the snapshot's state

The chapter docs/09-snapshots.md walks through every part.
"""
from __future__ import annotations

import os
from pathlib import Path

from pykvm.errors import SnapshotError
from pykvm.sizes import format_size
from pykvm.vm.kvm.system import kvm_backend
from pykvm.vm.snapshot import cpu, state, virtio
from pykvm.vm.snapshot.format import Snapshot, SnapshotWriter, check_target

__all__ = ["take", "check_restore", "map_memory", "restore_state", "Snapshot", "SnapshotWriter",
           "check_target"]


def take(machine, directory: Path) -> dict:
    """Write a snapshot of `machine`, whose vCPUs are all out of KVM_RUN, to `directory`.

    Returns the memory section of the header (sizes, pages written)."""
    writer = SnapshotWriter(directory)
    try:
        state.save(writer, machine.vm, machine.vcpus, machine.devices, machine.virtio)
        memory = writer.add_memory(machine.memory)
        guest_cpuid = cpu.entries_from_bytes(machine.vcpus[0].get_cpuid())
        writer.commit({
            "guest": {"memory": machine.memory.size, "vcpus": len(machine.vcpus),
                      "kernel": str(machine.config.kernel), "cmdline": machine.config.cmdline,
                      "devices": list(machine.devices), "virtio": virtio.header_section(machine.virtio)},
            "host": {"kvm_backend": kvm_backend(), **cpu.facts(guest_cpuid)},
            "memory": memory,
        })
    except BaseException:
        writer.abandon()
        raise
    return memory


def check_restore(snapshot: Snapshot, kvm, memory: int | None = None) -> None:
    """Everything that can be checked before a VM exists: the memory size asked for, the host CPU,
    every part's size and sha256, the disks.  (memory.bin is checked as it is mapped.)"""
    if memory is not None and memory != snapshot.memory_size:
        raise SnapshotError(f"{snapshot.directory}: the snapshot's guest has {format_size(snapshot.memory_size)} "
                            f"of RAM, not the {format_size(memory)} asked for (--mem)")
    guest_cpuid = cpu.entries_from_bytes(snapshot.part("vcpu0/cpuid.bin"))
    if cpu.facts(guest_cpuid) != {k: snapshot.header["host"].get(k) for k in ("cpu_vendor", "cpuid_features")}:
        raise SnapshotError(f"{snapshot.directory}: the header's CPU facts do not match vcpu0/cpuid.bin: "
                            "a changed header")
    cpu.check_host(snapshot.header["host"], cpu.offered_cpuid(kvm, snapshot.vcpu_count))
    snapshot.verify_parts()
    virtio.check_disks(snapshot.header)


def restore_state(snapshot: Snapshot, machine) -> None:
    """The state half of a restore: KVM's and the devices' (memory is mapped already)."""
    state.restore(snapshot, machine.vm, machine.vcpus, machine.devices, machine.virtio)


def map_memory(snapshot: Snapshot):
    """Guest memory mapped copy-on-write from the snapshot's memory.bin, after checking it."""
    from pykvm.vm.memory import GuestMemory

    fd = snapshot.open_memory()
    try:
        return GuestMemory(snapshot.memory_size, backing_fd=fd)
    finally:
        os.close(fd)        # the mappings keep the file
