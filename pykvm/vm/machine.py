"""Machine: build a VM from a MachineConfig, run it until it stops, tear it down.

The boot path is one top-down recipe (Firecracker's build_microvm_for_boot is
the model).  Machine.__init__ reads as its table of contents:

    0. the virtio devices' host side: disk images opened (bad input fails before KVM)
    1. open /dev/kvm and check the capabilities pykvm needs (REQUIRED_CAPABILITIES,
       as `pykvm check`), and --cpus
    2. create the VM; give Intel VMX its TSS and identity-map pages below 4 GiB
    3. guest memory, registered with KVM as memory slots (restoring: mapped
       copy-on-write from the snapshot's memory.bin)
    4. the in-kernel interrupt controllers (PIC, IOAPIC, LAPIC) and PIT
       (with port 0x61, channel 2's gate and output; none with pit=False):
       before any vCPU exists, so each vCPU gets its LAPIC
    5. the vCPUs, created bare
    6. the devices, each inserted on the port-I/O bus at its base; the virtio
       transports on the MMIO bus
    Booting (pykvm.vm.boot, then pykvm.vm.arch.x86.vcpu):
    7. the kernel file (and initrd, modules) read, its format found, the
       options checked against it, before anything is written
    8. what a PC firmware leaves (ACPI tables with the MADT and the DSDT
       listing the virtio devices; the e820 map; the real-mode interrupt
       vectors; the PICs and the PIT as the BIOS set them), unless the
       kernel is a raw flat binary
    9. the kernel loaded into memory, the firmware's RSDP and e820 map passed
       on in its boot protocol, the virtio devices on its command line: an
       entry point and CPU mode
   10. each vCPU configured (configure_vcpu): CPUID, boot MSRs, LAPIC, and
       vCPU 0's registers for the entry; the other vCPUs wait for a SIPI, as
       the application processors of a PC do
    Restoring instead of 7-10: the snapshot's VM, vCPU and device state, in
    pykvm.vm.snapshot.state's order (memory holds the running kernel)
   11. with --gdb, the gdb stub listening (pykvm.vm.gdb)

Machine.run() runs one host thread per vCPU, each looping on KVM_RUN and one
`match` over the typed exit (_run_loop).  cffi drops the GIL for the length of
the KVM_RUN ioctl, so the vCPUs run guest code at the same time; they take the
GIL only to handle an exit.  Any stop (a device's, Ctrl-A x, a closed stdout,
an error on any vCPU) sets exit_status once and kicks every other vCPU out of
KVM_RUN (_kick_others); run() joins the threads and returns or raises.
request_snapshot() (Ctrl-A s, SIGUSR2) kicks every vCPU out of KVM_RUN and parks
them at a barrier (SnapshotPause); once all are there, one of them writes a snapshot
to config.snapshot_dir (pykvm.vm.snapshot) and all of them go on.
A watchdog per vCPU (pykvm.vm.watchdog) looks at a vCPU that has gone quiet:
halted with interrupts off (the VM stops once every vCPU is), or spinning
without exits.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pykvm.vm.arch.x86 import cpuid
from pykvm.vm.arch.x86.boot_state import Entry
from pykvm.vm.arch.x86.vcpu import configure_vcpu
from pykvm.vm import layout
from pykvm.vm.console import FLUSH_BYTES, ConsoleOutput
from pykvm.vm.devices import acpi_pm, cmos, debug_exit, fw_cfg, i8042, pci, serial
from pykvm.vm.devices.bus import Bus
from pykvm.errors import ConfigError, GuestError
from pykvm.vm.devices.virtio.attach import VirtioConfig, VirtioDevices
from pykvm.vm.kvm import (Debug, FailEntry, InternalError, Interrupted, IoIn, IoOut, Kvm, MmioRead,
                          MmioWrite, Shutdown, SystemEvent)
from pykvm.vm.kvm.system import REQUIRED_CAPABILITIES
from pykvm.vm.kvm.vm import PIT_SPEAKER_DUMMY
from pykvm.vm.memory import GuestMemory
from pykvm.vm.watchdog import HALTED_WITH_INTERRUPTS_OFF, Watchdog

__all__ = ["Machine", "MachineConfig", "SnapshotPause", "DEFAULT_MEMORY", "MAX_CPUS", "PORTS", "KICK_SIGNAL"]

log = logging.getLogger("pykvm.vm.machine")

DEFAULT_MEMORY = 128 << 20
MAX_CPUS = 64         # a sane limit for one Python thread per vCPU (KVM's own: KVM_CAP_MAX_VCPUS)
KICK_SIGNAL = signal.SIGUSR1   # interrupts a vCPU thread's KVM_RUN (EINTR); its handler does nothing
VCPU_WAIT_POLL = 0.1           # seconds: run() looks this often whether the vCPU threads ended

# The port-I/O map, as on a PC (each device module names its own base and length).
PORTS = {
    "serial": (serial.COM1_BASE, serial.COM1_LENGTH),          # 16550A UART on COM1, IRQ 4
    "i8042": (i8042.I8042_BASE, i8042.I8042_LENGTH),            # keyboard controller (reset line)
    "debug-exit": (debug_exit.DEBUG_EXIT_BASE, debug_exit.DEBUG_EXIT_LENGTH),  # QEMU isa-debug-exit
    "acpi-pm-event": (acpi_pm.PM1A_EVT_BASE, acpi_pm.PM1A_EVT_LENGTH),  # PM1a status + enable (S3 wake)
    "acpi-pm": (acpi_pm.PM1A_CNT_BASE, acpi_pm.PM1A_CNT_LENGTH),  # ACPI PM1a control (power off, S3)
    "cmos": (cmos.CMOS_BASE, cmos.CMOS_LENGTH),                  # RTC + CMOS RAM (Linux reads the time)
    "pci-config": (pci.PCI_CONFIG_BASE, pci.PCI_CONFIG_LENGTH),  # PCI config mechanism #1, empty bus
    "fw-cfg": (fw_cfg.FW_CFG_BASE, fw_cfg.FW_CFG_LENGTH),       # QEMU fw_cfg: RAM size, CPUs, files
}
WARM_RESET = 0x1234   # BDA reset flag for a warm boot; pykvm's Linux command line sets it on panic only


@dataclass
class MachineConfig:
    """Everything needed to build a VM; the CLI fills it from its options."""

    kernel: Path
    memory: int = DEFAULT_MEMORY
    cmdline: str = ""
    cmdline_extra: str = ""          # words pykvm adds after the devices' (--net bridge: ip=)
    initrd: Path | None = None
    modules: list[tuple[Path, str]] = field(default_factory=list)  # Multiboot: (file, arguments)
    kernel_format: str = "auto"      # auto, pvh, bzimage, multiboot, multiboot2, raw (boot/loader.py)
    devices: tuple[str, ...] = ()    # optional devices: "pc-testdev" (QEMU's, for kvm-unit-tests)
    cpus: int = 1                    # vCPUs: vCPU 0 boots, the others wait for a SIPI
    pit: bool = True                 # the 8254 PIT (False: QEMU's -machine pit=off)
    trace: bool = False              # print every VM exit on stderr (and count them)
    exit_summary: bool = False       # count VM exits by reason, print none of them
    stall_timeout: float | None = None   # stop after this many seconds without a VM exit (watchdog.py)
    output: object = None            # callable(bytes) for guest serial output; default stdout
    gdb: str | None = None           # [HOST:]PORT for the gdb stub (pykvm.vm.gdb); None: no stub
    gdb_wait: bool = False           # stop before the first instruction until gdb attaches
    snapshot_dir: Path | None = None  # where request_snapshot() writes (pykvm.vm.snapshot)
    restore: object = None           # a checked pykvm.vm.snapshot.Snapshot to resume instead of booting
    virtio: VirtioConfig = field(default_factory=VirtioConfig)   # --disk, --rng, --console virtio
    extra: dict = field(default_factory=dict)


class Machine:
    """One VM: its vCPUs (a host thread each), its devices, and the ports a guest uses to stop itself."""

    def __init__(self, config: MachineConfig):
        self.config = config
        self.exit_status: int | None = None
        self.exit_counts_by_vcpu: list[Counter[str]] = []
        self.answered_by_vcpu: dict[int, tuple[int, int]] = {}   # this run's (reads, writes) in C
        self._error: BaseException | None = None
        self._lock = threading.Lock()          # guards exit_status, _error and _threads
        self._threads: dict[int, int] = {}     # vCPU id -> its running thread's ident
        self._halted_for_good: set[int] = set()   # vCPUs the watchdog found halted with IF=0
        self.watchdogs: dict[int, Watchdog] = {}   # vCPU id -> its watchdog, while its thread runs
        self._snapshot_pause: SnapshotPause | None = None   # request_snapshot(): every vCPU parks
        # Parts _build() makes; None until made, so close() can tear down a half-built VM.
        self.kvm = self.vm = self.memory = self.virtio = self.serial = self.gdb = None
        self._console_output: ConsoleOutput | None = None   # stdout's writer, unless config.output
        install_kick_handler()
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # --- building ------------------------------------------------------------
    def _build(self) -> None:
        config = self.config
        self.virtio = VirtioDevices(config.virtio)                         # 0
        self.kvm = Kvm()                                                   # 1
        for capability in REQUIRED_CAPABILITIES:                           # as `pykvm check`
            self.kvm.require(capability)
        if warning := check_cpus(config.cpus, self.kvm.check_extension("KVM_CAP_NR_VCPUS"),
                                 self.kvm.check_extension("KVM_CAP_MAX_VCPUS")):
            log.warning("pykvm: warning: %s", warning)
        self.vm = self.kvm.create_vm()                                     # 2
        self.vm.set_tss_addr(layout.KVM_TSS_ADDRESS)
        self.vm.set_identity_map_addr(layout.KVM_IDENTITY_MAP_ADDRESS)
        self.memory = self._guest_memory()                                 # 3
        self.memory.register(self.vm)
        self.vm.create_irqchip()                                           # 4
        if config.pit:
            self.vm.create_pit2(PIT_SPEAKER_DUMMY)                         # port 0x61 too, as Firecracker
        self.vcpus = [self.vm.create_vcpu(index) for index in range(config.cpus)]   # 5
        self.vcpu = self.vcpus[0]                                          # the bootstrap processor
        self.exit_counts_by_vcpu = [Counter() for _ in self.vcpus]
        self._add_devices()                                                # 6
        if not config.trace:                  # --trace shows every exit: all of them in Python
            answered = self.virtio.answered_registers()
            for vcpu in self.vcpus:
                vcpu.answer_in_c(answered)
        if config.restore is None:
            kernel = self._read_kernel()                                   # 7
            firmware = self._leave_firmware_state(kernel)                  # 8
            self.entry = self._load_kernel(kernel, firmware)               # 9
            self._configure_vcpus(self.entry, firmware is not None)        # 10
        else:
            from pykvm.vm.snapshot import restore_state

            restore_state(config.restore, self)                            # 7-10
        self.gdb = self._gdb_stub()                                        # 11

    def _guest_memory(self) -> GuestMemory:
        if self.config.restore is None:
            return GuestMemory(self.config.memory)
        from pykvm.vm.snapshot import map_memory

        return map_memory(self.config.restore)

    def _gdb_stub(self):
        if self.config.gdb is None:
            return None
        from pykvm.vm.gdb import GdbStub

        return GdbStub.for_vm(self.config.gdb, self.kvm, self.vcpus, self.memory,
                              wait=self.config.gdb_wait, kick=self._kick_all, stop=self.stop,
                              exit_requested=lambda: self.exit_status is not None)

    def _read_kernel(self):
        from pykvm.vm.boot.loader import read_kernel

        return read_kernel(self.config)

    def _leave_firmware_state(self, kernel):
        """The firmware step: a Firmware value (the RSDP's address, the e820 map), or None
        for a kernel that expects no firmware (a raw flat binary)."""
        if not kernel.wants_firmware:
            return None
        from pykvm.vm.boot.firmware import leave_firmware_state

        return leave_firmware_state(self.memory, self.vm, len(self.vcpus), self.virtio.windows(),
                                    has_pit=self.config.pit)

    def _load_kernel(self, kernel, firmware) -> Entry:
        from pykvm.vm.boot.loader import load_kernel

        return load_kernel(self.memory, kernel, firmware, self.virtio.windows())

    def _configure_vcpus(self, entry: Entry, firmware: bool) -> None:
        """Every vCPU through the one place that configures a vCPU (arch/x86/vcpu.py)."""
        supported = cpuid.supported_by(self.kvm)
        for vcpu in self.vcpus:
            configure_vcpu(vcpu, self.memory, entry, cpus=len(self.vcpus),
                           supported_cpuid=supported, firmware=firmware)

    def _add_devices(self) -> None:
        # `pykvm boot | head -1`: once nobody reads, the VM ends (as `yes | head -1` ends yes).
        # With --trace each byte goes out at once, in order with the exit lines on stderr.
        self._console_output = None if self.config.output else ConsoleOutput(
            1, on_broken=lambda: self.stop(0), flush_bytes=1 if self.config.trace else FLUSH_BYTES)
        output = self.config.output or self._console_output.write
        self.pio = Bus("pio")
        self.mmio = Bus("mmio")
        self.serial = serial.Serial16550(out=output, irq=self._serial_irq)
        self.cmos, self.pm_event = cmos.Cmos(), acpi_pm.AcpiPmEvent()
        self.devices = devices = {
            "serial": self.serial,
            "i8042": i8042.I8042(reset=self._guest_reset),
            "debug-exit": debug_exit.DebugExit(stop=self.stop),
            "acpi-pm": acpi_pm.AcpiPmControl(stop=self.stop, suspend=self._suspend_to_ram),
            "acpi-pm-event": self.pm_event,
            "cmos": self.cmos,
            "pci-config": pci.PciConfigSpace(),
            "fw-cfg": fw_cfg.FwCfg(self.config.memory, cpus=self.config.cpus,
                                   files={"etc/e820": fw_cfg.e820_file(self.memory.memory_map())}),
        }
        for name, device in devices.items():
            base, length = PORTS[name]
            self.pio.insert(device, base, length)
        self.virtio.attach(self, output)
        if "pc-testdev" in self.config.devices:
            self._add_pc_testdev()

    def _add_pc_testdev(self) -> None:
        """QEMU's -device pc-testdev: scratch and flush-page ports, IRQ lines, MMIO scratch.
        (Imported here: only kvm-unit-tests ask for it, and it loads ctypes.)"""
        from pykvm.vm.devices import pc_testdev as t

        self.pio.insert(t.ScratchPorts(lambda address: t.remap_page(self.memory, address)),
                        t.PORTS_BASE, t.PORTS_LENGTH)
        self.pio.insert(t.IrqLinePorts(self.vm.irq_line), t.IRQ_LINES_BASE, t.IRQ_LINES_LENGTH)
        self.mmio.insert(t.ScratchMemory(), layout.PC_TESTDEV_IOMEM, t.IOMEM_LENGTH)

    def _serial_irq(self, level: bool) -> None:
        """The UART's INTR output drives ISA IRQ 4 (PIC and IOAPIC pin 4)."""
        self.vm.irq_line(serial.COM1_IRQ, 1 if level else 0)

    # --- stopping --------------------------------------------------------------
    def stop(self, status: int) -> None:
        """End the VM with exit status `status` (called by devices, or by any other thread).

        The first stop wins; every vCPU but the caller's own is kicked out of KVM_RUN.
        """
        with self._lock:
            if self.exit_status is None:
                self.exit_status = status
            self._kick_others()
            pause, self._snapshot_pause = self._snapshot_pause, None
        if pause is not None:
            pause.release()                      # vCPUs parked for a snapshot go (and end)

    def _fail(self, error: BaseException) -> None:
        """A vCPU thread hit `error`: remember the first one, stop every vCPU; run() raises it."""
        with self._lock:
            stopping = self.exit_status is not None and isinstance(error, GuestError)
            if self._error is None and not stopping:     # a guest error after a stop: moot
                self._error = error
        self.stop(1)

    def _suspend_to_ram(self) -> None:
        """ACPI S3: asleep until the RTC alarm, then awake at the OS's waking vector (firmware.py)."""
        from pykvm.vm.boot.firmware import suspend_to_ram

        if not suspend_to_ram(self.vcpu, self.memory, self.cmos, self.pm_event,
                              stopped=lambda: self.exit_status is not None):
            log.warning("guest suspended to RAM with no wake-up source armed; stopping the VM")
            self.stop(0)

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

    def _kick(self, vcpu) -> None:
        """Make `vcpu`'s KVM_RUN return (the watchdog's and gdb's kick)."""
        with self._lock:
            vcpu.immediate_exit = True
            thread = self._threads.get(vcpu.id)
            if thread is not None and thread != threading.get_ident():
                signal.pthread_kill(thread, KICK_SIGNAL)

    def _kick_all(self) -> None:
        """Make every vCPU's KVM_RUN return (gdb's all-stop)."""
        for vcpu in self.vcpus:
            self._kick(vcpu)

    def _kick_others(self) -> None:
        """Make every other vCPU's KVM_RUN return (called with _lock held).

        immediate_exit catches a thread about to enter KVM_RUN; the signal one
        already inside it (KVM returns EINTR).  A thread takes itself out of
        _threads, under _lock, before it ends, so a kick never reaches a thread
        that is gone, and KICK_SIGNAL's handler stays installed for the life
        of the process: no moment exists where the signal would kill it.
        """
        me = threading.get_ident()
        for vcpu in self.vcpus:
            vcpu.immediate_exit = True
            thread = self._threads.get(vcpu.id)
            if thread is not None and thread != me:
                signal.pthread_kill(thread, KICK_SIGNAL)

    # --- snapshots --------------------------------------------------------------
    def request_snapshot(self) -> None:
        """Ask every vCPU to pause, write a snapshot to config.snapshot_dir, and go on (any thread).

        Each vCPU thread, kicked out of KVM_RUN, parks on its Interrupted exit
        (_pause_for_snapshot); once all have arrived, one of them writes the
        snapshot while the others wait, then all run on.  A stop during the
        pause releases every waiting vCPU: no vCPU waits for good."""
        if self.config.snapshot_dir is None:
            os.write(2, b"pykvm: no snapshot written: this VM was started without --snapshot-dir\n")
            return
        if not self.config.pit:
            os.write(2, b"pykvm: no snapshot written: snapshots of a VM without a PIT (--no-pit) "
                        b"are not supported\n")
            return
        with self._lock:
            if self._snapshot_pause is not None or self.exit_status is not None:
                return                                      # one is under way, or the VM is stopping
            self._snapshot_pause = SnapshotPause(len(self.vcpus))
        self._kick_all()

    def _pause_for_snapshot(self) -> None:
        """On a vCPU thread, out of KVM_RUN: wait for the others; one writes; all go on.

        KVM_RUN returned EINTR, so an I/O exit before it was completed by that very
        KVM_RUN (api.rst, KVM_EXIT_IO: "the operation is complete only after
        userspace has re-entered"): the registers are between two instructions."""
        pause = self._snapshot_pause
        if pause is None:
            return
        if pause.arrive():                                  # everyone is out of KVM_RUN
            try:
                self._write_snapshot()
            finally:
                with self._lock:
                    if self._snapshot_pause is pause:       # a later kick is not this pause
                        self._snapshot_pause = None
                pause.release()
        else:
            pause.wait_written()

    def _write_snapshot(self) -> None:
        """With every vCPU out of KVM_RUN, and the virtio workers held off too
        (VirtioDevices.paused takes each transport's lock, so no queue moves while its
        state is read)."""
        from pykvm.errors import PyKvmError
        from pykvm.vm.snapshot import take

        if self._console_output is not None:
            self._console_output.flush()
        try:
            with self.virtio.paused():
                memory = take(self, self.config.snapshot_dir)
        except (PyKvmError, OSError) as e:
            os.write(2, f"pykvm: error: snapshot not written: {e}\n".encode())
        else:
            os.write(2, f"pykvm: snapshot written to {self.config.snapshot_dir} "
                        f"({memory['pages_written']} of {memory['size'] // 4096} pages)\n".encode())

    # --- running ---------------------------------------------------------------
    def run(self) -> int:
        """Run the guest until it stops itself (or is stopped); return pykvm's exit status.

        One thread per vCPU; this thread waits for them all.  An error on any
        vCPU stops the others and is raised here; so is Ctrl-C (KeyboardInterrupt).
        """
        self._finished = {vcpu.id: threading.Event() for vcpu in self.vcpus}
        threads = [threading.Thread(target=self._vcpu_thread, args=(vcpu,), name=f"vcpu{vcpu.id}",
                                    daemon=True) for vcpu in self.vcpus]
        try:
            for thread in threads:
                thread.start()
            self._wait_for_vcpu_threads()
        except BaseException:
            self.stop(1)
            for vcpu, thread in zip(self.vcpus, threads):
                if thread.ident is None:                   # never started: nothing to wait for
                    self._finished[vcpu.id].set()
            self._wait_for_vcpu_threads(interruptible=False)
            raise
        finally:
            if self.gdb is not None:
                self.gdb.guest_exited(self.exit_status)
            if self._console_output is not None:
                self._console_output.flush()     # the guest's last words before pykvm's own
        if self._error is not None:
            raise self._error
        return self.exit_status

    def _wait_for_vcpu_threads(self, interruptible: bool = True) -> None:
        """Until every vCPU thread has ended.  Each says so through its own Event: after a
        KeyboardInterrupt inside Thread.join(), CPython 3.11 may report a thread that still
        runs as stopped, and a vCPU thread must never outlive the VM it drives."""
        for finished in self._finished.values():
            while not finished.is_set():
                try:
                    finished.wait(VCPU_WAIT_POLL)
                except KeyboardInterrupt:
                    if interruptible:
                        raise                          # run() stops the VM, then waits again

    def _vcpu_thread(self, vcpu) -> None:
        """The body of vCPU `vcpu`'s host thread: its run loop, registered for kicks."""
        with self._lock:
            self._threads[vcpu.id] = threading.get_ident()
        watchdog = Watchdog(lambda: self._kick(vcpu), self.config.stall_timeout,
                            answered=vcpu.answered_counts)
        answered_before = (vcpu.answered_counts.reads, vcpu.answered_counts.writes)
        self.watchdogs[vcpu.id] = watchdog
        try:
            if self.gdb is not None:
                self.gdb.vcpu_started(vcpu)                  # --gdb-wait: until gdb continues
            watchdog.start()
            self._run_loop(vcpu, watchdog)
        except BaseException as error:      # any error: stop the whole VM, let run() raise it
            self._fail(error)
        finally:
            watchdog.stop()
            answered = vcpu.answered_counts
            reads, writes = answered.reads - answered_before[0], answered.writes - answered_before[1]
            self.answered_by_vcpu[vcpu.id] = (reads, writes)
            if self.config.exit_summary:         # the exits answered in C, by their reason
                counts = {"MMIO_READ": reads, "MMIO_WRITE": writes}
                self.exit_counts_by_vcpu[vcpu.id].update({k: n for k, n in counts.items() if n})
            with self._lock:
                del self._threads[vcpu.id]
            self._finished[vcpu.id].set()

    def _run_loop(self, vcpu, watchdog: Watchdog) -> None:
        vcpu_run, pio, mmio = vcpu.run, self.pio, self.mmio
        counts = self.exit_counts_by_vcpu[vcpu.id]
        trace = self.config.trace
        counting = trace or self.config.exit_summary    # without either: one test per exit
        while self.exit_status is None:
            vm_exit = vcpu_run()
            watchdog.exits += 1
            if counting:
                counts[vm_exit.reason] += 1
                if trace:
                    _trace(vcpu.id, vm_exit)
            match vm_exit:
                case IoOut(port=port, size=size, value=value):
                    if vm_exit.count == 1:
                        pio.write(port, size, value)
                    else:
                        for value in vm_exit.values():               # rep outs
                            pio.write(port, size, value)
                case IoIn(port=port, size=size):
                    for i in range(vm_exit.count):                   # 1 unless rep ins
                        vm_exit.reply(pio.read(port, size), i)
                case MmioWrite(address=address, size=size, data=data):
                    mmio.write(address, size, data)
                case MmioRead(address=address, size=size):
                    vm_exit.reply(mmio.read(address, size))
                case Interrupted():                                  # a kick; loop re-checks
                    if reason := watchdog.look(vcpu, self.memory):   # (clears immediate_exit)
                        self._quiet_vcpu(vcpu, reason)
                    if self._snapshot_pause is not None:             # after look(): no kick is lost
                        self._pause_for_snapshot()
                        watchdog.exits += 1                          # the pause is not the guest's silence
                    if self.gdb is not None:                         # gdb's Ctrl-C, or a new client
                        self.gdb.vcpu_interrupted(vcpu)
                        watchdog.exits += 1                          # gdb's stop is not the guest's silence
                case Debug() if self.gdb is not None:
                    self.gdb.vcpu_debug_exit(vcpu, vm_exit)
                    watchdog.exits += 1
                case SystemEvent(kind="shutdown" | "reset"):
                    self.stop(0)
                case Shutdown():
                    raise GuestError(self._stopped_because(
                        vcpu, "triple fault: the guest hit an exception it could not handle"))
                case InternalError():
                    raise GuestError(self._stopped_because(
                        vcpu, _describe_internal_error(vm_exit, vcpu.get_regs().rip)))
                case FailEntry():
                    raise GuestError(self._stopped_because(
                        vcpu, f"KVM could not enter the guest (hardware reason {vm_exit.hardware_reason:#x})"))
                case _:
                    raise GuestError(self._stopped_because(vcpu, f"unhandled VM exit {vm_exit!r}"))

    def _quiet_vcpu(self, vcpu, reason: str) -> None:
        """The watchdog's verdict on `vcpu`: stop the VM, or (halted with interrupts off while
        another vCPU still runs, as a parked CPU is) wait until every vCPU is so."""
        if reason != HALTED_WITH_INTERRUPTS_OFF:
            raise GuestError(self._stopped_because(vcpu, reason))
        with self._lock:
            self._halted_for_good.add(vcpu.id)
            everyone = len(self._halted_for_good) == len(self.vcpus)
        if everyone:
            raise GuestError(self._stopped_because(vcpu, reason))

    @property
    def watchdog(self) -> Watchdog | None:
        """vCPU 0's watchdog, once its thread runs."""
        return self.watchdogs.get(0)

    @property
    def exit_counts(self) -> Counter[str]:
        """VM exits by reason, all vCPUs together (counted with --trace or --exit-summary)."""
        return sum(self.exit_counts_by_vcpu, Counter())

    def _stopped_because(self, vcpu, reason: str) -> str:
        from pykvm.vm.arch.x86.dump import register_dump

        where = f"vCPU {vcpu.id}: " if len(self.vcpus) > 1 else ""
        return f"VM stopped: {where}{reason}\n{register_dump(vcpu, self.memory)}"

    # --- tearing down ----------------------------------------------------------
    def close(self) -> None:
        if self.virtio is not None:
            self.virtio.close()              # its workers touch guest memory: stop them first
        for part in (self.gdb, self.serial, self._console_output, self.vm, self.kvm, self.memory):
            if part is not None:
                part.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SnapshotPause:
    """Where the vCPU threads meet for a snapshot: a barrier with a seat per vCPU, then an event.

    arrive() returns True in exactly one thread, once every vCPU has arrived:
    that one writes the snapshot; the others wait_written() until release().
    release() is also a stop's: it breaks the barrier and ends every wait, so
    a vCPU that will never arrive (its thread ended) keeps no one waiting."""

    def __init__(self, vcpus: int):
        self._arrived = threading.Barrier(vcpus)
        self._written = threading.Event()

    def arrive(self) -> bool:
        try:
            return self._arrived.wait() == 0
        except threading.BrokenBarrierError:
            return False                       # released by a stop before everyone came

    def wait_written(self) -> None:
        self._written.wait()

    def release(self) -> None:
        self._written.set()
        self._arrived.abort()


def _describe_internal_error(error: InternalError, rip: int) -> str:
    text = f"KVM internal error: {error.description} at rip {rip:#x}"
    if error.insn_bytes:
        text += f"; instruction bytes {error.insn_bytes.hex(' ')}"
    return text


def check_cpus(cpus: int, recommended: int, maximum: int) -> str | None:
    """--cpus must be 1 .. min(MAX_CPUS, KVM_CAP_MAX_VCPUS): ConfigError says which bound.

    Above KVM_CAP_NR_VCPUS (what KVM recommends: the host's CPU count) the VM
    still works, its vCPUs taking turns on the host's CPUs; as QEMU does, that
    is a warning (returned, one line), not an error.  `maximum` is 0 on kernels
    without KVM_CAP_MAX_VCPUS, where the recommendation is the limit (api.rst 4.7).
    """
    maximum = maximum or recommended
    if not 1 <= cpus <= MAX_CPUS:
        raise ConfigError(f"--cpus {cpus}: choose 1 to {MAX_CPUS}")
    if cpus > maximum:
        raise ConfigError(f"--cpus {cpus}: this host's KVM allows at most {maximum} vCPUs "
                          "per VM (KVM_CAP_MAX_VCPUS)")
    if cpus > recommended:
        return (f"--cpus {cpus}: more vCPUs than this host's KVM recommends ({recommended}, "
                "KVM_CAP_NR_VCPUS, the host's CPU count); they take turns on its CPUs")
    return None


def _on_kick(signum, frame) -> None:
    """KICK_SIGNAL's handler: nothing to do; the signal's work was interrupting KVM_RUN."""


def install_kick_handler() -> None:
    """Install KICK_SIGNAL's handler once, for the life of the process (Firecracker does the same).

    Python installs signal handlers from the main thread only, so a Machine
    is built there; the handler is never swapped back while a vCPU may run.
    """
    if signal.getsignal(KICK_SIGNAL) is _on_kick:
        return
    try:
        signal.signal(KICK_SIGNAL, _on_kick)
    except ValueError:
        raise ConfigError("a Machine must first be built on the main thread "
                          "(it installs the vCPU kick signal handler)") from None


def _trace(vcpu_id: int, vm_exit) -> None:
    """--trace: one line per VM exit on stderr, like a tiny kvm_stat -1."""
    os.write(2, f"pykvm: vcpu{vcpu_id} exit {vm_exit.reason:<14} {vm_exit!r}\n".encode())
