"""Machine: build a VM from a MachineConfig, run it until it stops, tear it down.

The boot path is one top-down recipe (Firecracker's build_microvm_for_boot is
the model).  Machine.__init__ reads as its table of contents:

    1. open /dev/kvm and check the capabilities pykvm needs
    2. create the VM; give Intel VMX its TSS and identity-map pages below 4 GiB
    3. guest memory, registered with KVM as memory slots (restoring: mapped
       copy-on-write from the snapshot's memory.bin)
    4. the in-kernel interrupt controllers (PIC, IOAPIC, LAPIC) and PIT
       (with port 0x61, channel 2's gate and output): before any vCPU
       exists, so each vCPU gets its LAPIC
    5. the vCPU, with CPUID set (CPUID before MSRs: KVM checks MSRs against it)
    6. the kernel loaded into memory, giving an entry point and CPU mode
       (restoring: nothing to load, memory holds the running kernel)
    7. the devices, each inserted on the port-I/O bus at its base
    8. the vCPU's registers for that entry point (restoring: the snapshot's
       VM, vCPU and device state, in pykvm.vm.snapshot.state's order)
    9. with --gdb, the gdb stub listening (pykvm.vm.gdb)

Machine.run() is the run loop: KVM_RUN, then one `match` over the typed exit.
request_snapshot() (Ctrl-A s, SIGUSR2) pauses it between two exits, writes a
snapshot to config.snapshot_dir (pykvm.vm.snapshot) and lets the guest go on.
A watchdog (pykvm.vm.watchdog) looks at a vCPU that has gone quiet: halted with
interrupts off, or spinning without exits.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pykvm.vm.arch.x86 import boot_state, cpuid
from pykvm.vm import layout
from pykvm.vm.console import FLUSH_BYTES, ConsoleOutput
from pykvm.vm.devices import acpi_pm, cmos, debug_exit, i8042, pci, serial
from pykvm.vm.devices.bus import Bus
from pykvm.errors import GuestError
from pykvm.vm.kvm import (Debug, FailEntry, InternalError, Interrupted, IoIn, IoOut, Kvm, MmioRead,
                          MmioWrite, Shutdown, SystemEvent)
from pykvm.vm.kvm.vm import PIT_SPEAKER_DUMMY
from pykvm.vm.memory import GuestMemory
from pykvm.vm.watchdog import Watchdog

__all__ = ["Machine", "MachineConfig", "DEFAULT_MEMORY", "PORTS"]

log = logging.getLogger("pykvm.vm.machine")

DEFAULT_MEMORY = 128 << 20

# The port-I/O map, as on a PC (each device module names its own base and length).
PORTS = {
    "serial": (serial.COM1_BASE, serial.COM1_LENGTH),          # 16550A UART on COM1, IRQ 4
    "i8042": (i8042.I8042_BASE, i8042.I8042_LENGTH),            # keyboard controller (reset line)
    "debug-exit": (debug_exit.DEBUG_EXIT_BASE, debug_exit.DEBUG_EXIT_LENGTH),  # QEMU isa-debug-exit
    "acpi-pm-event": (acpi_pm.PM1A_EVT_BASE, acpi_pm.PM1A_EVT_LENGTH),  # ACPI PM1a status + enable
    "acpi-pm": (acpi_pm.PM1A_CNT_BASE, acpi_pm.PM1A_CNT_LENGTH),  # ACPI PM1a control (power off)
    "cmos": (cmos.CMOS_BASE, cmos.CMOS_LENGTH),                  # RTC + CMOS RAM (Linux reads the time)
    "pci-config": (pci.PCI_CONFIG_BASE, pci.PCI_CONFIG_LENGTH),  # PCI config mechanism #1, empty bus
}
WARM_RESET = 0x1234   # BDA reset flag for a warm boot; pykvm's Linux command line sets it on panic only


@dataclass
class MachineConfig:
    """Everything needed to build a VM; the CLI fills it from its options."""

    kernel: Path
    memory: int = DEFAULT_MEMORY
    cmdline: str = ""
    initrd: Path | None = None
    kernel_format: str = "auto"      # auto, pvh, raw (bzImage: see pykvm.vm.boot.bzimage)
    trace: bool = False
    stall_timeout: float | None = None   # stop after this many seconds without a VM exit (watchdog.py)
    output: object = None            # callable(bytes) for guest serial output; default stdout
    gdb: str | None = None           # [HOST:]PORT for the gdb stub (pykvm.vm.gdb); None: no stub
    gdb_wait: bool = False           # stop before the first instruction until gdb attaches
    snapshot_dir: Path | None = None  # where request_snapshot() writes (pykvm.vm.snapshot)
    restore: object = None           # a checked pykvm.vm.snapshot.Snapshot to resume instead of booting
    extra: dict = field(default_factory=dict)


class Machine:
    """One VM, one vCPU, a UART, and the ports a guest uses to stop itself."""

    def __init__(self, config: MachineConfig):
        self.config = config
        self.exit_status: int | None = None
        self.exit_counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # --- building ------------------------------------------------------------
    def _build(self) -> None:
        config = self.config
        self.kvm = Kvm()                                                   # 1
        for capability in ("KVM_CAP_USER_MEMORY", "KVM_CAP_IRQCHIP", "KVM_CAP_PIT2",
                           "KVM_CAP_EXT_CPUID", "KVM_CAP_IMMEDIATE_EXIT"):
            self.kvm.require(capability)
        self.vm = self.kvm.create_vm()                                     # 2
        self.vm.set_tss_addr(layout.KVM_TSS_ADDRESS)
        self.vm.set_identity_map_addr(layout.KVM_IDENTITY_MAP_ADDRESS)
        self.memory = self._guest_memory()                                 # 3
        self.memory.register(self.vm)
        self.vm.create_irqchip()                                           # 4
        self.vm.create_pit2(PIT_SPEAKER_DUMMY)                             # port 0x61 too, as Firecracker
        self.vcpu = self.vm.create_vcpu(0)                                 # 5
        self.vcpus = [self.vcpu]
        self.vcpu.set_cpuid(cpuid.guest_cpuid(self.kvm.supported_cpuid(), self.vcpu.id))
        if config.restore is None:
            self.entry = self._load_kernel()                               # 6
        self._add_devices()                                                # 7
        if config.restore is None:
            boot_state.configure_vcpu(self.vcpu, self.memory, self.entry)  # 8
        else:
            from pykvm.vm.snapshot import restore_state

            restore_state(config.restore, self)
        self.gdb = self._gdb_stub()                                        # 9

    def _guest_memory(self) -> GuestMemory:
        if self.config.restore is None:
            return GuestMemory(self.config.memory)
        from pykvm.vm.snapshot import map_memory

        return map_memory(self.config.restore)

    def _gdb_stub(self):
        if self.config.gdb is None:
            return None
        from pykvm.vm.gdb import GdbStub

        return GdbStub.for_vm(self.config.gdb, self.kvm, [self.vcpu], self.memory,
                              wait=self.config.gdb_wait, kick=self._kick_vcpu, stop=self.stop,
                              exit_requested=lambda: self.exit_status is not None)

    def _load_kernel(self) -> boot_state.Entry:
        from pykvm.vm.boot.loader import load_kernel

        return load_kernel(self.memory, self.vcpu, self.config)

    def _add_devices(self) -> None:
        # `pykvm boot | head -1`: once nobody reads, the VM ends (as `yes | head -1` ends yes).
        # With --trace each byte goes out at once, in order with the exit lines on stderr.
        self._console_output = None if self.config.output else ConsoleOutput(
            1, on_broken=lambda: self.stop(0), flush_bytes=1 if self.config.trace else FLUSH_BYTES)
        output = self.config.output or self._console_output.write
        self.pio = Bus("pio")
        self.mmio = Bus("mmio")
        self.serial = serial.Serial16550(out=output, irq=self._serial_irq)
        self.devices = devices = {
            "serial": self.serial,
            "i8042": i8042.I8042(reset=self._guest_reset),
            "debug-exit": debug_exit.DebugExit(stop=self.stop),
            "acpi-pm-event": acpi_pm.AcpiPmEvent(),
            "acpi-pm": acpi_pm.AcpiPmControl(stop=self.stop),
            "cmos": cmos.Cmos(),
            "pci-config": pci.PciConfigSpace(),
        }
        for name, device in devices.items():
            base, length = PORTS[name]
            self.pio.insert(device, base, length)

    def _serial_irq(self, level: bool) -> None:
        """The UART's INTR output drives ISA IRQ 4 (PIC and IOAPIC pin 4)."""
        self.vm.irq_line(serial.COM1_IRQ, 1 if level else 0)

    # --- stopping --------------------------------------------------------------
    def stop(self, status: int) -> None:
        """End the VM with exit status `status` (called by devices, or by another thread)."""
        with self._lock:
            if self.exit_status is None:
                self.exit_status = status
        if threading.current_thread() is not threading.main_thread():
            self._kick_vcpu()

    def _guest_reset(self) -> None:
        """A guest-requested reset (i8042 pulse): like Firecracker, pykvm ends the VM, status 0.

        Except after a kernel panic: before a reset the OS leaves the firmware
        a word at BIOS Data Area 0x472 (0x1234 = warm boot).  pykvm's Linux
        command line asks for warm resets on panic only (reboot=k,panic_warm),
        so a warm reset means "the kernel panicked" and pykvm fails.
        """
        flag = int.from_bytes(self.memory.read(layout.BDA_RESET_FLAG, 2), "little")
        if flag == WARM_RESET:
            raise GuestError("the guest kernel panicked and reset itself (its log is above)")
        log.info("guest requested a reset; stopping the VM")
        self.stop(0)

    def _kick_vcpu(self) -> None:
        """Make a running KVM_RUN return: immediate_exit for the next entry, a signal for this one."""
        self.vcpu.immediate_exit = True
        if self._vcpu_thread is not None:
            signal.pthread_kill(self._vcpu_thread, signal.SIGUSR1)

    # --- snapshots --------------------------------------------------------------
    _snapshot_requested = False

    def request_snapshot(self) -> None:
        """Ask the run loop to pause, write a snapshot to config.snapshot_dir, and go on (any thread)."""
        if self.config.snapshot_dir is None:
            os.write(2, b"pykvm: no snapshot written: this VM was started without --snapshot-dir\n")
            return
        self._snapshot_requested = True
        self._kick_vcpu()

    def _write_snapshot(self) -> None:
        """On the vCPU thread, out of KVM_RUN: the VM is paused while its state is written.

        KVM_RUN returned EINTR, so an I/O exit before it was completed by that very
        KVM_RUN (api.rst, KVM_EXIT_IO: "the operation is complete only after
        userspace has re-entered"): the registers are between two instructions."""
        from pykvm.errors import PyKvmError
        from pykvm.vm.snapshot import take

        self._snapshot_requested = False
        if self._console_output is not None:
            self._console_output.flush()
        try:
            memory = take(self, self.config.snapshot_dir)
        except (PyKvmError, OSError) as e:
            os.write(2, f"pykvm: error: snapshot not written: {e}\n".encode())
        else:
            os.write(2, f"pykvm: snapshot written to {self.config.snapshot_dir} "
                        f"({memory['pages_written']} of {memory['size'] // 4096} pages)\n".encode())

    # --- running ---------------------------------------------------------------
    _vcpu_thread: int | None = None
    watchdog: Watchdog | None = None

    def run(self) -> int:
        """Run the guest until it stops itself (or is stopped); return pykvm's exit status."""
        self._vcpu_thread = threading.get_ident()
        previous = signal.signal(signal.SIGUSR1, lambda signum, frame: None)
        self.watchdog = watchdog = Watchdog(self._kick_vcpu, self.config.stall_timeout)
        try:
            if self.gdb is not None:
                self.gdb.vcpu_started(self.vcpu)             # --gdb-wait: until gdb continues
            watchdog.start()
            self._run_loop(self.config.trace, watchdog)
        finally:
            watchdog.stop()
            if self.gdb is not None:
                self.gdb.guest_exited(self.exit_status)
            signal.signal(signal.SIGUSR1, previous)
            self._vcpu_thread = None
            if self._console_output is not None:
                self._console_output.flush()     # the guest's last words before pykvm's own
        return self.exit_status

    def _run_loop(self, trace: bool, watchdog: Watchdog) -> None:
        vcpu_run, pio, mmio, counts = self.vcpu.run, self.pio, self.mmio, self.exit_counts
        while self.exit_status is None:
            exit = vcpu_run()
            watchdog.exits += 1
            if trace:
                counts[exit.reason] += 1
                _trace(exit)
            match exit:
                case IoOut(port=port, size=size, value=value):
                    if exit.count == 1:
                        pio.write(port, size, value)
                    else:
                        for value in exit.values():                  # rep outs
                            pio.write(port, size, value)
                case IoIn(port=port, size=size):
                    for i in range(exit.count):                      # 1 unless rep ins
                        exit.reply(pio.read(port, size), i)
                case MmioWrite(address=address, size=size, data=data):
                    mmio.write(address, size, data)
                case MmioRead(address=address, size=size):
                    exit.reply(mmio.read(address, size))
                case Interrupted():                                  # a signal; loop re-checks
                    if self._snapshot_requested:
                        self._write_snapshot()
                        watchdog.exits += 1                          # the pause is not the guest's silence
                    if reason := watchdog.look(self.vcpu, self.memory):
                        raise GuestError(self._stopped_because(reason))
                    if self.gdb is not None:                         # gdb's Ctrl-C, or a new client
                        self.gdb.vcpu_interrupted(self.vcpu)
                        watchdog.exits += 1                          # gdb's stop is not the guest's silence
                case Debug() if self.gdb is not None:
                    self.gdb.vcpu_debug_exit(self.vcpu, exit)
                    watchdog.exits += 1
                case SystemEvent(kind="shutdown" | "reset"):
                    self.stop(0)
                case Shutdown():
                    raise GuestError(self._stopped_because(
                        "triple fault: the guest hit an exception it could not handle"))
                case InternalError():
                    raise GuestError(self._stopped_because(
                        _describe_internal_error(exit, self.vcpu.get_regs().rip)))
                case FailEntry():
                    raise GuestError(self._stopped_because(
                        f"KVM could not enter the guest (hardware reason {exit.hardware_reason:#x})"))
                case _:
                    raise GuestError(self._stopped_because(f"unhandled VM exit {exit!r}"))
        self.vcpu.immediate_exit = False

    def _stopped_because(self, reason: str) -> str:
        from pykvm.vm.arch.x86.dump import register_dump

        return f"VM stopped: {reason}\n{register_dump(self.vcpu, self.memory)}"

    # --- tearing down ----------------------------------------------------------
    _console_output: ConsoleOutput | None = None
    gdb = None

    def close(self) -> None:
        if self.gdb is not None:
            self.gdb.close()
        if getattr(self, "serial", None) is not None:
            self.serial.close()
        if self._console_output is not None:
            self._console_output.close()
        for name in ("vm", "kvm", "memory"):
            obj = getattr(self, name, None)
            if obj is not None:
                obj.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _describe_internal_error(exit: InternalError, rip: int) -> str:
    text = f"KVM internal error: {exit.description} at rip {rip:#x}"
    if exit.insn_bytes:
        text += f"; instruction bytes {exit.insn_bytes.hex(' ')}"
    return text


def _trace(exit) -> None:
    """--trace: one line per VM exit on stderr, like a tiny kvm_stat -1."""
    os.write(2, f"pykvm: exit {exit.reason:<14} {exit!r}\n".encode())
