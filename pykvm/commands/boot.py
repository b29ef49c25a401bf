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
@click.option("--snapshot-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Ctrl-A s or SIGUSR2 pauses the VM and writes a snapshot here (then it runs on); "
                   "`pykvm restore DIR` resumes it.")
def boot(guest, kernel, initrd, modules, mem, cmdline, kernel_format, devices, cpus, no_pit, trace,
         stall_timeout, gdb, gdb_wait, disks, console, rng, virtio_notify, snapshot_dir):
    """Boot GUEST (a bundled guest's name) or --kernel FILE, with the serial console on this terminal.

    Ctrl-A x quits (as under QEMU -nographic); Ctrl-A h lists the other keys.
    """
    from pykvm.vm.devices.virtio.attach import VirtioConfig, parse_disk
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
    if console == "virtio" and not cmdline and _is_bzimage(kernel):
        cmdline = linux_hvc0_cmdline()
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
    virtio = VirtioConfig(disks=[parse_disk(d) for d in disks], console=console == "virtio",
                          rng=rng, notify=virtio_notify)
    config = MachineConfig(kernel=kernel, memory=memory, cmdline=cmdline or "", initrd=initrd,
                           modules=[parse_module(m) for m in modules], kernel_format=kernel_format,
                           devices=devices, cpus=cpus, pit=not no_pit, trace=trace,
                           stall_timeout=stall_timeout,
                           gdb=gdb, gdb_wait=gdb_wait, virtio=virtio, snapshot_dir=snapshot_dir)
    raise SystemExit(run_machine(config))


def _is_bzimage(kernel: Path) -> bool:
    from pykvm.vm.boot.loader import BZIMAGE_MAGIC, BZIMAGE_MAGIC_OFFSET

    try:
        with open(kernel, "rb") as f:
            head = f.read(BZIMAGE_MAGIC_OFFSET + len(BZIMAGE_MAGIC))
    except OSError:
        return False                    # the loader reports it, in one line
    return head[BZIMAGE_MAGIC_OFFSET:] == BZIMAGE_MAGIC


def linux_hvc0_cmdline() -> str:
    """--console virtio for Linux without --cmdline: the default line, with the console on hvc0
    (the kernel prints on ttyS0 until virtio_console is loaded; the recipe's /init then starts
    its shell on hvc0)."""
    from pykvm.vm.boot.bzimage import DEFAULT_CMDLINE

    return f"{DEFAULT_CMDLINE} console=hvc0"


def parse_module(option: str) -> tuple[Path, str]:
    """--module FILE[,ARGS]: the file, and the arguments after the first comma."""
    path, _, args = option.partition(",")
    if not path:
        from pykvm.errors import ConfigError

        raise ConfigError(f"--module {option!r}: give a file name before the comma")
    return Path(path), args


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
            terminal = machine.virtio.console or machine.serial     # --console virtio: input to hvc0
            with Console(terminal, on_quit=lambda: machine.stop(0), on_snapshot=machine.request_snapshot):
                try:
                    status = machine.run()
                finally:
                    if config.trace:
                        print_exit_summary(machine.exit_counts_by_vcpu, machine.virtio.summary(),
                                           [kvm_counters(vcpu) for vcpu in machine.vcpus])
    finally:
        signal.signal(SNAPSHOT_SIGNAL, previous)
    return status


def kvm_counters(vcpu) -> dict[str, int]:
    """KVM's own exit counters for the vCPU (KVM_GET_STATS_FD), or {} where KVM has none."""
    from pykvm.errors import KvmError

    try:
        return vcpu.stats()
    except KvmError:
        return {}


def print_exit_summary(counts_by_vcpu, virtio_lines=(), kvm_by_vcpu=()) -> None:
    """The --trace summary: for each vCPU, exits by reason, most frequent first (like
    kvm_stat), and KVM's own count, which includes the exits KVM handled without returning
    to pykvm (an ioeventfd write, ...); then the virtio devices' kicks, by MMIO exit and by
    ioeventfd."""
    for vcpu_id, counts in enumerate(counts_by_vcpu):
        total = sum(counts.values())
        where = f"vCPU {vcpu_id}: " if len(counts_by_vcpu) > 1 else ""
        click.echo(f"pykvm: {where}{total} VM exits", err=True)
        for reason, n in counts.most_common():
            click.echo(f"  {reason:<16} {n:>10}  {100 * n / max(total, 1):5.1f}%", err=True)
        kvm = kvm_by_vcpu[vcpu_id] if vcpu_id < len(kvm_by_vcpu) else {}
        if "exits" in kvm:
            click.echo(f"KVM counted {kvm['exits']} exits in all (KVM_GET_STATS_FD): "
                       f"mmio_exits {kvm.get('mmio_exits', 0)}, io_exits {kvm.get('io_exits', 0)}, "
                       f"halt_exits {kvm.get('halt_exits', 0)}", err=True)
    for line in virtio_lines:
        click.echo(f"  {line}", err=True)