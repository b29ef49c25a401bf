"""`pykvm boot`: build a VM, connect the serial console to this terminal, run it."""
from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from pathlib import Path

import click

from pykvm.vm.guests import guest_list

__all__ = ["boot", "run_machine", "SNAPSHOT_SIGNAL", "vm_network", "mac_for_address",
           "ip_argument", "DEFAULT_MAC"]

SNAPSHOT_SIGNAL = signal.SIGUSR2    # `kill -USR2 PID`: write a snapshot (SIGUSR1 kicks vCPUs)
DEFAULT_MAC = "52:54:00:12:34:56"   # --net tap=NAME without mac=: QEMU's default
MAC_PREFIX = "52:54:00"             # locally administered, the prefix QEMU and libvirt use
GUEST_IFNAME = "eth0"               # the interface ip= names, in the guest


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
def boot(guest, kernel, initrd, modules, mem, cmdline, kernel_format, devices, cpus, no_pit, trace,
         exit_summary, stall_timeout, gdb, gdb_wait, disks, console, rng, virtio_notify, net,
         snapshot_dir):
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
    disk_specs, module_specs = [parse_disk(d) for d in disks], [parse_module(m) for m in modules]
    with vm_network(net) as (net_spec, ip_word):
        virtio = VirtioConfig(disks=disk_specs, console=console == "virtio", rng=rng,
                              net=net_spec, notify=virtio_notify)
        config = MachineConfig(kernel=kernel, memory=memory, initrd=initrd, modules=module_specs,
                               cmdline=cmdline or "", cmdline_extra=ip_word,
                               kernel_format=kernel_format, devices=devices, cpus=cpus,
                               pit=not no_pit, trace=trace, exit_summary=exit_summary,
                               stall_timeout=stall_timeout, gdb=gdb,
                               gdb_wait=gdb_wait, virtio=virtio, snapshot_dir=snapshot_dir)
        status = run_machine(config)
    raise SystemExit(status)


@contextmanager
def vm_network(option: str | None):
    """--net: yields (a NetSpec for the virtio-net card, the `ip=` word for the kernel command
    line); (None, "") without --net.  Everything it made is undone on the way out."""
    if option is None:
        yield None, ""
    elif option == "bridge":
        with _on_the_bridge() as result:
            yield result
    else:
        from pykvm.vm.devices.virtio.attach import NetSpec
        from pykvm.vm.devices.virtio.tap import Tap

        name, mac = _parse_tap_option(option)
        tap = Tap.open(name)
        try:
            yield NetSpec(tap, mac), ""
        finally:
            tap.close()


@contextmanager
def _on_the_bridge():
    """--net bridge: a lease on pykvm's bridge (judged by this process's life), a tap made
    for this VM and plugged into the bridge, a MAC from the address; all given back after."""
    from pykvm.container.runtime import network
    from pykvm.errors import ConfigError
    from pykvm.vm.devices.virtio.attach import NetSpec
    from pykvm.vm.devices.virtio.tap import Tap

    if os.geteuid() != 0:
        raise ConfigError("--net bridge needs root (it makes a bridge and a tap device); "
                          "rootless, use --net tap=NAME on a tap made for you")
    vm_id = os.urandom(6).hex()
    lease = network.reserve_vm(vm_id, f"vm-{vm_id[:6]}")
    try:
        tap = Tap.open(lease.tap)
        try:
            network.plug_tap(lease, tap.name)
            yield NetSpec(tap, mac_for_address(lease.address)), ip_argument(lease)
        finally:
            tap.close()
    finally:
        network.release(vm_id)


def _parse_tap_option(option: str) -> tuple[str, bytes]:
    """`tap=NAME[,mac=MAC]` -> (NAME, the MAC's 6 bytes); ConfigError for anything else."""
    from pykvm.errors import ConfigError
    from pykvm.vm.devices.virtio.net import parse_mac

    usage = f"--net {option}: want bridge, or tap=NAME[,mac={DEFAULT_MAC}]"
    tap, _, rest = option.partition(",")
    if not tap.startswith("tap=") or not tap[4:] or (rest and not rest.startswith("mac=")):
        raise ConfigError(usage)
    try:
        mac = parse_mac(rest[4:] if rest else DEFAULT_MAC)
    except ValueError as e:
        raise ConfigError(f"--net {option}: {e}") from None
    if mac[0] & 1:
        raise ConfigError(f"--net {option}: a multicast MAC (first byte odd) cannot be a card's")
    return tap[4:], mac


def mac_for_address(address: str) -> bytes:
    """52:54:00 and the address's last three bytes: 10.213.0.2 -> 52:54:00:d5:00:02."""
    return bytes.fromhex(MAC_PREFIX.replace(":", "")) + bytes(int(b) for b in address.split(".")[1:])


def ip_argument(lease) -> str:
    """Linux's ip= (nfsroot.rst), which the tiny kernel reads too:
    ip=CLIENT:SERVER:GATEWAY:NETMASK:HOSTNAME:DEVICE:AUTOCONF."""
    return f"ip={lease.address}::{lease.network.gateway}:{lease.netmask}::{GUEST_IFNAME}:off"


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
                    if config.trace or config.exit_summary:
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
    """The summary of --trace and --exit-summary: for each vCPU, exits by reason, most
    frequent first (like kvm_stat), and KVM's own count, which includes the exits KVM handled
    without returning to pykvm (an ioeventfd write, ...); then the virtio devices' kicks, by
    MMIO exit and by ioeventfd."""
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