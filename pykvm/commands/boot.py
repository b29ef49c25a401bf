"""`pykvm boot`: build a VM, connect the serial console to this terminal, run it."""
from __future__ import annotations

import signal
from pathlib import Path

import click

from pykvm.vm.guests import guest_list

__all__ = ["boot", "run_machine", "SNAPSHOT_SIGNAL"]

SNAPSHOT_SIGNAL = signal.SIGUSR2    # `kill -USR2 PID`: write a snapshot (SIGUSR1 kicks vCPUs)


@click.command(epilog="\b\nBundled guests (GUEST):\n" + guest_list())
@click.argument("guest", required=False)
@click.option("--kernel", "-k", type=click.Path(path_type=Path, dir_okay=False),
              help="Kernel to boot: a PVH ELF, a Linux bzImage, or (with --format raw) a flat binary.")
@click.option("--initrd", type=click.Path(path_type=Path, dir_okay=False), help="Initial ramdisk.")
@click.option("--mem", "-m", "mem", default="128M", show_default=True,
              help="Guest RAM (K, M, G suffixes; a bare number is MiB, as in QEMU's -m).")
@click.option("--cmdline", "-c", default=None, help="Kernel command line.")
@click.option("--format", "kernel_format", default="auto", show_default=True,
              type=click.Choice(["auto", "pvh", "bzimage", "raw"]), help="Kernel file format.")
@click.option("--trace", is_flag=True, help="Print every VM exit on stderr, and a summary by reason.")
@click.option("--stall-timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop the VM when its vCPU runs this long without a VM exit "
                   "(default: report on stderr and keep running).")
@click.option("--gdb", "gdb", is_flag=False, flag_value="localhost:1234", default=None,
              metavar="[HOST:]PORT", help="Serve gdb's remote protocol on HOST:PORT (alone: localhost:1234, "
              "as QEMU's -s); in gdb: target remote :1234.")
@click.option("--gdb-wait", is_flag=True,
              help="Stop before the first guest instruction until gdb attaches (QEMU's -S); implies --gdb.")
@click.option("--snapshot-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Ctrl-A s or SIGUSR2 pauses the VM and writes a snapshot here (then it runs on); "
                   "`pykvm restore DIR` resumes it.")
def boot(guest, kernel, initrd, mem, cmdline, kernel_format, trace, stall_timeout, gdb, gdb_wait,
         snapshot_dir):
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
    if gdb_wait and gdb is None:
        gdb = "localhost:1234"
    if gdb is not None:
        from pykvm.vm.gdb import parse_address

        parse_address(gdb)                  # a bad --gdb is reported before the VM is built
    if snapshot_dir is not None:
        from pykvm.vm.snapshot import check_target

        check_target(snapshot_dir)          # never overwrite what is not a snapshot
    config = MachineConfig(kernel=kernel, memory=memory, cmdline=cmdline or "", initrd=initrd,
                           kernel_format=kernel_format, trace=trace, stall_timeout=stall_timeout,
                           gdb=gdb, gdb_wait=gdb_wait, snapshot_dir=snapshot_dir)
    raise SystemExit(run_machine(config))


def run_machine(config) -> int:
    """Build the machine, attach the console, run; returns the guest's exit status."""
    from pykvm.vm.console import Console
    from pykvm.vm.machine import Machine

    machine = None

    def on_snapshot_signal(signum, frame):
        if machine is not None:                 # a signal while the VM is being built: too early
            machine.request_snapshot()

    previous = signal.signal(SNAPSHOT_SIGNAL, on_snapshot_signal)
    try:
        with Machine(config) as machine:
            with Console(machine.serial, on_quit=lambda: machine.stop(0), on_snapshot=machine.request_snapshot):
                try:
                    status = machine.run()
                finally:
                    if config.trace:
                        print_exit_summary(machine.exit_counts)
    finally:
        signal.signal(SNAPSHOT_SIGNAL, previous)
    return status


def print_exit_summary(counts) -> None:
    """The --trace summary: exits by reason, most frequent first (like kvm_stat)."""
    total = sum(counts.values())
    click.echo(f"pykvm: {total} VM exits", err=True)
    for reason, n in counts.most_common():
        click.echo(f"  {reason:<16} {n:>10}  {100 * n / max(total, 1):5.1f}%", err=True)
