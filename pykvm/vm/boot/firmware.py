"""What a PC's firmware leaves behind for any kernel it boots, whatever the protocol.

A kernel started by SeaBIOS or OVMF finds more than its own image in memory:
ACPI tables describing the machine, and a memory map it can ask the firmware
for.  pykvm has no firmware, so one step of the machine's recipe leaves the
same state itself (`leave_firmware_state`), before the loader runs, for every
kernel but a raw flat binary, as Firecracker writes its ACPI tables and e820
map for every boot.

  1. ACPI tables (RSDP, XSDT, FADT, FACS, MADT, DSDT) at layout.ACPI_TABLES, in the
     BIOS area where Linux also scans for "RSD PTR " (ACPI 6.5, 5.2.5.1): the FADT
     names the PM1a control port, which is how `poweroff` reaches pykvm; the
     MADT lists the vCPUs; the DSDT lists the virtio-mmio devices.
  2. The E820 memory map (layout.memory_map of the guest's RAM): what a PC
     firmware answers to INT 15h, AX=E820h.

Both come back as a Firmware value, which the loader passes on to the kernel
in its protocol's own way (boot_params.acpi_rsdp_addr and e820_table,
hvm_start_info.rsdp_paddr and the PVH memory map, the Multiboot mmap).  The
firmware's state inside each CPU (boot MSRs, the LAPIC's virtual wire) is set
with the rest of a vCPU's state: pykvm.vm.arch.x86.vcpu.configure_vcpu.

Firmware also wakes a machine from ACPI S3 ("suspend to RAM", ACPI 6.5,
16.1.3): the OS wrote its resume address into the FACS and entered S3; on a
wake event the firmware starts the CPU there in real mode, RAM untouched
(`suspend_to_ram`).  pykvm's one wake source is the RTC alarm (PM1_EN.RTC_EN
with the CMOS alarm interrupt enabled), as in kvm-unit-tests' s3 test.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from pykvm.vm.arch.x86 import acpi, boot_state
from pykvm.vm import layout
from pykvm.errors import GuestError

__all__ = ["Firmware", "leave_firmware_state", "suspend_to_ram"]

SLEEP_POLL_S = 0.05            # while asleep, how often to look whether the VM was stopped


@dataclass(frozen=True)
class Firmware:
    """What the firmware step left for the loader to hand the kernel."""

    acpi_rsdp: int                           # guest address of the ACPI RSDP
    e820: tuple[tuple[int, int, int], ...]   # the memory map: (address, size, E820 type)


def leave_firmware_state(memory, cpus: int, mmio_devices=()) -> Firmware:
    """Steps 1-2 of the module docstring for a VM of `cpus` vCPUs.

    `mmio_devices`: (base, size, irq) of each virtio-mmio device, for the DSDT.
    """
    memory.write(layout.ACPI_TABLES, acpi.acpi_tables(layout.ACPI_TABLES, cpus, mmio_devices))
    return Firmware(acpi_rsdp=layout.ACPI_TABLES, e820=tuple(memory.memory_map()))


def suspend_to_ram(vcpu, memory, cmos, pm_event, stopped: Callable[[], bool]) -> bool:
    """Sleep in S3 until the RTC alarm, then resume the OS at its waking vector.

    False if no wake source is armed (the machine would sleep forever).
    Returns early, without waking the guest, once `stopped()` is true.
    """
    from pykvm.vm.devices.acpi_pm import PM1_RTC

    delay = cmos.seconds_until_alarm() if pm_event.enable & PM1_RTC else None
    if delay is None:
        return False
    deadline = time.monotonic() + delay
    while not stopped() and time.monotonic() < deadline:
        time.sleep(min(SLEEP_POLL_S, max(deadline - time.monotonic(), 0)))
    if stopped():
        return True
    cmos.alarm_fired()
    pm_event.woke(PM1_RTC)
    facs = memory.read(layout.ACPI_TABLES + acpi.FACS_OFFSET, acpi.FACS_LENGTH)
    vector = acpi.waking_vector(facs)
    if not vector:
        raise GuestError("the guest woke from S3, but its FACS has no waking vector")
    boot_state.wake_in_real_mode(vcpu, vector)
    return True
