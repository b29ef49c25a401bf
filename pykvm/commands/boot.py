"""`pykvm boot`: build a VM, connect the serial console to this terminal, run it."""
from __future__ import annotations

from pathlib import Path

import click

__all__ = ["boot"]


@click.command()
@click.argument("guest", required=False)
@click.option("--kernel", "-k", type=click.Path(path_type=Path, dir_okay=False),
              help="Kernel to boot: a PVH ELF, a Linux bzImage, or (with --format raw) a flat binary.")
@click.option("--initrd", type=click.Path(path_type=Path, dir_okay=False), help="Initial ramdisk.")
@click.option("--mem", "-m", "mem", default="128M", show_default=True,
              help="Guest RAM (K, M, G suffixes; a bare number is MiB, as in QEMU's -m).")
@click.option("--cmdline", "-c", default=None, help="Kernel command line.")
@click.option("--format", "kernel_format", default="auto", show_default=True,
              type=click.Choice(["auto", "pvh", "bzimage", "raw"]), help="Kernel file format.")
@click.option("--cpus", default=1, show_default=True, type=int,
              help="vCPUs, one host thread each (at most the host's CPU count, KVM_CAP_NR_VCPUS).")
@click.option("--trace", is_flag=True,
              help="Print every VM exit on stderr, and a summary by reason for each vCPU.")
def boot(guest, kernel, initrd, mem, cmdline, kernel_format, cpus, trace):
    """Boot GUEST (a bundled guest's name) or --kernel FILE, with the serial console on this terminal.

    Ctrl-A x quits (as under QEMU -nographic); Ctrl-A h lists the other keys.
    """
    from pykvm.errors import ConfigError
    from pykvm.vm.guests import DEFAULT_GUEST, find_guest
    from pykvm.vm.machine import MachineConfig
    from pykvm.sizes import format_size, host_memory, parse_size

    if guest and kernel:
        raise ConfigError("give a guest name or --kernel, not both")
    if kernel is None:
        bundled = find_guest(guest or DEFAULT_GUEST)
        kernel, initrd = bundled.kernel, initrd or bundled.initrd
        cmdline = bundled.cmdline if cmdline is None else cmdline
    memory = parse_size(mem, what="--mem", default_unit="M")
    if memory > host_memory():
        raise ConfigError(f"--mem {mem}: more than this host's {format_size(host_memory())} of RAM")
    config = MachineConfig(kernel=kernel, memory=memory, cmdline=cmdline or "", initrd=initrd,
                           kernel_format=kernel_format, cpus=cpus, trace=trace)
    raise SystemExit(run_machine(config))


def run_machine(config) -> int:
    """Build the machine, attach the console, run; returns the guest's exit status."""
    from pykvm.vm.console import Console
    from pykvm.vm.machine import Machine

    with Machine(config) as machine:
        with Console(machine.serial, on_quit=lambda: machine.stop(0)):
            try:
                status = machine.run()
            finally:
                if config.trace:
                    print_exit_summary(machine.exit_counts_by_vcpu)
    return status


def print_exit_summary(counts_by_vcpu) -> None:
    """The --trace summary: for each vCPU, exits by reason, most frequent first (like kvm_stat)."""
    for vcpu_id, counts in enumerate(counts_by_vcpu):
        total = sum(counts.values())
        where = f"vCPU {vcpu_id}: " if len(counts_by_vcpu) > 1 else ""
        click.echo(f"pykvm: {where}{total} VM exits", err=True)
        for reason, n in counts.most_common():
            click.echo(f"  {reason:<16} {n:>10}  {100 * n / max(total, 1):5.1f}%", err=True)
