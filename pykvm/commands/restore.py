"""`pykvm restore DIR`: resume a VM from a snapshot, its serial console on this terminal."""
from __future__ import annotations

from pathlib import Path

import click

__all__ = ["restore", "restore_config"]


@click.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--mem", "-m", "mem", default=None,
              help="Refuse unless the snapshot's guest has this much RAM (K, M, G suffixes).")
@click.option("--snapshot-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where Ctrl-A s and SIGUSR2 write the next snapshot (may be DIRECTORY itself).")
@click.option("--stall-timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop the VM when its vCPU runs this long without a VM exit.")
def restore(directory, mem, snapshot_dir, stall_timeout):
    """Resume the VM saved in DIRECTORY (by `pykvm boot --snapshot-dir`), where it left off.

    The VM gets the snapshot's vCPUs and virtio devices (its disk images must be
    as they were when the snapshot was taken).  Guest memory is mapped
    copy-on-write from the snapshot: many VMs restored from one snapshot share its pages.  Ctrl-A x quits; Ctrl-A s snapshots again.
    """
    from pykvm.commands.booting import run_machine
    from pykvm.sizes import parse_size
    from pykvm.vm.kvm import Kvm
    from pykvm.vm.snapshot import Snapshot, check_restore, check_target

    memory = parse_size(mem, what="--mem", default_unit="M") if mem is not None else None
    if snapshot_dir is not None:
        check_target(snapshot_dir)
    snapshot = Snapshot.open(directory)
    with Kvm() as kvm:
        check_restore(snapshot, kvm, memory)
    config = restore_config(snapshot, stall_timeout=stall_timeout, snapshot_dir=snapshot_dir)
    raise SystemExit(run_machine(config))


def restore_config(snapshot, **options):
    """The MachineConfig that rebuilds the snapshot's VM: its memory, vCPUs and virtio devices
    as the header names them (`options`: the restore command's own, such as snapshot_dir)."""
    from pykvm.vm.machine import MachineConfig
    from pykvm.vm.snapshot.virtio import config_from_header

    guest = snapshot.header["guest"]
    return MachineConfig(kernel=Path(str(guest.get("kernel", "?"))), memory=snapshot.memory_size,
                         cmdline=str(guest.get("cmdline", "")), cpus=snapshot.vcpu_count,
                         virtio=config_from_header(snapshot.header), restore=snapshot, **options)
