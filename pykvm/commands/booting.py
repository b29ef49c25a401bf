"""`pykvm boot`, without click: what the command does, and the table that lets its
command line skip click's import (pykvm/commands/quickparse.py says why).

The command is declared in boot.py with click's decorators, which `--help` shows; `pykvm`
(pykvm/__main__.py) hands `boot ...` to main() below first, and click reads the command
line only where quickparse is not sure of it.
"""
from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

from pykvm.commands import quickparse as q

__all__ = ["OPTIONS", "DEFAULTS", "ARGUMENTS", "parse", "main", "boot_machine", "run_machine",
           "SNAPSHOT_SIGNAL", "vm_network", "mac_for_address", "ip_argument", "DEFAULT_MAC"]

SNAPSHOT_SIGNAL = signal.SIGUSR2    # `kill -USR2 PID`: write a snapshot (SIGUSR1 kicks vCPUs)
DEFAULT_MAC = "52:54:00:12:34:56"   # --net tap=NAME without mac=: QEMU's default
MAC_PREFIX = "52:54:00"             # locally administered, the prefix QEMU and libvirt use
GUEST_IFNAME = "eth0"               # the interface ip= names, in the guest


# Each spelling -> (parameter, kind, multiple): boot.py's @click.option lines, in their order.
OPTIONS = {
    "--kernel": ("kernel", q.path(dir_okay=False, path_type=Path), False),
    "-k": ("kernel", q.path(dir_okay=False, path_type=Path), False),
    "--initrd": ("initrd", q.path(dir_okay=False, path_type=Path), False),
    "--module": ("modules", q.TEXT, True),
    "--mem": ("mem", q.TEXT, False), "-m": ("mem", q.TEXT, False),
    "--cmdline": ("cmdline", q.TEXT, False), "-c": ("cmdline", q.TEXT, False),
    "--format": ("kernel_format", q.choice("auto", "pvh", "bzimage", "multiboot", "multiboot2", "raw"), False),
    "--device": ("devices", q.choice("pc-testdev"), True),
    "--cpus": ("cpus", q.INT, False),
    "--no-pit": ("no_pit", q.FLAG, False),
    "--trace": ("trace", q.FLAG, False),
    "--exit-summary": ("exit_summary", q.FLAG, False),
    "--stall-timeout": ("stall_timeout", q.POSITIVE_FLOAT, False),
    "--gdb": ("gdb", q.OPTIONAL_VALUE, False),
    "--gdb-wait": ("gdb_wait", q.FLAG, False),
    "--disk": ("disks", q.TEXT, True),
    "--console": ("console", q.choice("serial", "virtio"), False),
    "--rng": ("rng", q.FLAG, False),
    "--virtio-notify": ("virtio_notify", q.choice("eventfd", "exit"), False),
    "--net": ("net", q.TEXT, False),
    "--snapshot-dir": ("snapshot_dir", q.path(file_okay=False, path_type=Path), False),
}
ARGUMENTS = ("guest", 1)          # a bundled guest's name, optional
# A parameter's value when its option is not given (click's defaults).
DEFAULTS = q.defaults(OPTIONS, mem="128M", kernel_format="auto", cpus=1, console="serial",
                      virtio_notify="eventfd", guest=None)


def parse(argv: list[str]) -> dict | None:
    """`boot`'s arguments -> boot_machine()'s keywords; None: ask click.  The guest's name
    may come anywhere among the options (click's allow_interspersed_args)."""
    return q.parse(argv, OPTIONS, DEFAULTS, ARGUMENTS, interspersed=True)


def main(argv: list[str]) -> None:
    """`pykvm boot ARGV...` without click, or return: click is needed."""
    params = parse(argv)
    if params is not None:
        q.run(boot_machine, params)


def boot_machine(guest, kernel, initrd, modules, mem, cmdline, kernel_format, devices, cpus, no_pit, trace,
                 exit_summary, stall_timeout, gdb, gdb_wait, disks, console, rng, virtio_notify, net,
                 snapshot_dir):
    """Boot GUEST (a bundled guest's name) or --kernel FILE (boot.py's `boot` command; the
    parameters are its options)."""
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
                                           [kvm_counters(vcpu) for vcpu in machine.vcpus],
                                           [machine.answered_by_vcpu.get(vcpu.id, (0, 0))
                                            for vcpu in machine.vcpus])
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


def print_exit_summary(counts_by_vcpu, virtio_lines=(), kvm_by_vcpu=(), answered_by_vcpu=()) -> None:
    """The summary of --trace and --exit-summary: for each vCPU, exits by reason, most
    frequent first (like kvm_stat), of those how many were answered in C (Vcpu.answer_in_c:
    virtio's InterruptStatus and InterruptACK), and KVM's own count, which includes the exits
    KVM handled without returning to pykvm (an ioeventfd write, ...); then the virtio devices'
    kicks, by MMIO exit and by ioeventfd."""
    for vcpu_id, counts in enumerate(counts_by_vcpu):
        total = sum(counts.values())
        where = f"vCPU {vcpu_id}: " if len(counts_by_vcpu) > 1 else ""
        print(f"pykvm: {where}{total} VM exits", file=sys.stderr)
        for reason, n in counts.most_common():
            print(f"  {reason:<16} {n:>10}  {100 * n / max(total, 1):5.1f}%", file=sys.stderr)
        reads, writes = answered_by_vcpu[vcpu_id] if vcpu_id < len(answered_by_vcpu) else (0, 0)
        if reads or writes:
            print(f"  of these, answered in C without Python: MMIO_READ {reads}, "
                  f"MMIO_WRITE {writes} (virtio InterruptStatus/InterruptACK)", file=sys.stderr)
        kvm = kvm_by_vcpu[vcpu_id] if vcpu_id < len(kvm_by_vcpu) else {}
        if "exits" in kvm:
            print(f"KVM counted {kvm['exits']} exits in all (KVM_GET_STATS_FD): "
                  f"mmio_exits {kvm.get('mmio_exits', 0)}, io_exits {kvm.get('io_exits', 0)}, "
                  f"halt_exits {kvm.get('halt_exits', 0)}", file=sys.stderr)
    for line in virtio_lines:
        print(f"  {line}", file=sys.stderr)
