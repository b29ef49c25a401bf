"""`pykvm boot`: build a VM, connect the serial console to this terminal, run it.

The command's options, as click declares them (and `pykvm boot --help` shows them); what
it does is in booting.py, which `pykvm boot ...` reaches without click when quickparse
can read the command line (pykvm/commands/quickparse.py).
"""
from __future__ import annotations

from pathlib import Path

import click

from pykvm.vm.guests import guest_list

__all__ = ["boot"]


@click.command(epilog="\b\nBundled guests (GUEST):\n" + guest_list())
@click.argument("guest", required=False)
@click.option("--kernel", "-k", type=click.Path(path_type=Path, dir_okay=False),
              help="Kernel to boot: a PVH ELF, a Linux bzImage, a Multiboot kernel, "
                   "or (with --format raw) a flat binary.")
@click.option("--initrd", type=click.Path(path_type=Path, dir_okay=False),
              help="Initial ramdisk (for a Multiboot kernel: its first module).")
@click.option("--module", "modules", multiple=True, metavar="FILE[,ARGS]",
              help="A Multiboot module and its command line; repeatable.")
@click.option("--mem", "-m", "mem", default="128M", show_default=True,
              help="Guest RAM (K, M, G suffixes; a bare number is MiB, as in QEMU's -m).")
@click.option("--cmdline", "-c", default=None, help="Kernel command line.")
@click.option("--format", "kernel_format", default="auto", show_default=True,
              type=click.Choice(["auto", "pvh", "bzimage", "multiboot", "multiboot2", "raw"]),
              help="Kernel file format.")
@click.option("--device", "devices", multiple=True, type=click.Choice(["pc-testdev"]),
              help="Add an optional device: pc-testdev (QEMU's test device, for kvm-unit-tests).")
@click.option("--cpus", default=1, show_default=True, type=int,
              help="vCPUs, one host thread each (more than the host's CPUs, KVM_CAP_NR_VCPUS, "
                   "warns; at most 64 and KVM_CAP_MAX_VCPUS).")
@click.option("--no-pit", "no_pit", is_flag=True,
              help="No 8254 PIT, as QEMU's -machine pit=off: no timer on IRQ 0, ports 0x40-0x43 "
                   "and 0x61 unanswered.")
@click.option("--trace", is_flag=True,
              help="Print every VM exit on stderr, and a summary by reason for each vCPU.")
@click.option("--exit-summary", "exit_summary", is_flag=True,
              help="Count VM exits and print only --trace's summary at the end (as strace -c "
                   "does for system calls): by reason, per vCPU, KVM's own count.")
@click.option("--stall-timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop the VM when its vCPU runs this long without a VM exit "
                   "(default: report on stderr and keep running).")
@click.option("--gdb", "gdb", is_flag=False, flag_value="localhost:1234", default=None,
              metavar="[HOST:]PORT", help="Serve gdb's remote protocol on HOST:PORT (alone: localhost:1234, "
              "as QEMU's -s); in gdb: target remote :1234.")
@click.option("--gdb-wait", is_flag=True,
              help="Stop before the first guest instruction until gdb attaches (QEMU's -S); implies --gdb.")
@click.option("--disk", "disks", multiple=True, metavar="FILE[,ro]",
              help="A raw disk image as a virtio-blk device (repeatable; ,ro: read-only).")
@click.option("--console", "console", default="serial", show_default=True,
              type=click.Choice(["serial", "virtio"]),
              help="Where the terminal's input goes: the 16550A UART, or a virtio console (hvc0; "
                   "a Linux bzImage without --cmdline gets console=hvc0).")
@click.option("--rng", is_flag=True, help="A virtio-rng device: entropy from the host.")
@click.option("--virtio-notify", "virtio_notify", default="eventfd", show_default=True,
              type=click.Choice(["eventfd", "exit"]),
              help="How virtio kicks and interrupts travel: ioeventfd/irqfd and a worker "
                   "thread, or plain MMIO exits handled on the vCPU thread.")
@click.option("--net", "net", default=None, metavar="bridge|tap=NAME[,mac=MAC]",
              help="A virtio-net card.  bridge: on pykvm's bridge network, beside the containers "
                   "(an address leased, given to the guest as ip= on its command line); "
                   "tap=NAME: on the existing tap device NAME, as QEMU's -netdev tap,ifname=NAME.")
@click.option("--snapshot-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Ctrl-A s or SIGUSR2 pauses the VM and writes a snapshot here (then it runs on); "
                   "`pykvm restore DIR` resumes it.")
def boot(**params):
    """Boot GUEST (a bundled guest's name) or --kernel FILE, with the serial console on this terminal.

    Ctrl-A x quits (as under QEMU -nographic); Ctrl-A h lists the other keys.
    """
    from pykvm.commands.booting import boot_machine
    boot_machine(**params)
