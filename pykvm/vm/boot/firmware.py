"""What a PC's firmware leaves behind for any kernel it boots, whatever the protocol.

A kernel started by SeaBIOS or OVMF finds more than its own image in memory:
ACPI tables describing the machine, MSRs with their boot values, and a local
APIC wired to the legacy PIC.  pykvm has no firmware, so the loader leaves the
same state itself, before the first instruction, for both ways it boots a
kernel (bzImage and PVH); Firecracker does the same for every boot
(src/vmm/src/arch/x86_64: regs.rs setup_msrs, interrupts.rs set_lint).

  1. ACPI tables (RSDP, XSDT, FADT, FACS, DSDT) at layout.ACPI_TABLES, in the BIOS
     area where Linux also scans for "RSD PTR " (ACPI 6.5, 5.2.5.1): the FADT
     names the PM1a control port, which is how `poweroff` reaches pykvm; the
     DSDT lists the virtio-mmio devices.
  2. Boot MSRs (pykvm.vm.arch.x86.msrs.boot_msrs), after CPUID is set.
  3. LAPIC LINT0 = ExtINT (the 8259's output), LINT1 = NMI: the "virtual
     wire" mode of the MultiProcessor Specification 1.4, 3.6.2.2.

A raw flat binary gets none of this: it is the bare-metal case, on purpose.

Firmware also wakes a machine from ACPI S3 ("suspend to RAM", ACPI 6.5,
16.1.3): the OS wrote its resume address into the FACS and entered S3; on a
wake event the firmware starts the CPU there in real mode, RAM untouched
(`suspend_to_ram`).  pykvm's one wake source is the RTC alarm (PM1_EN.RTC_EN
with the CMOS alarm interrupt enabled), as in kvm-unit-tests' s3 test.
"""
from __future__ import annotations

import time
from typing import Callable

from pykvm.vm.arch.x86 import acpi, boot_state, lapic, msrs
from pykvm.vm import layout
from pykvm.errors import GuestError

__all__ = ["leave_firmware_state", "suspend_to_ram"]

SLEEP_POLL_S = 0.05            # while asleep, how often to look whether the VM was stopped


def leave_firmware_state(memory, vcpus: list, mmio_devices=()) -> int:
    """Steps 1-3 of the module docstring for `vcpus` (vCPU 0 first); the RSDP's address.

    `mmio_devices`: (base, size, irq) of each virtio-mmio device, for the DSDT.
    """
    memory.write(layout.ACPI_TABLES, acpi.acpi_tables(layout.ACPI_TABLES, len(vcpus), mmio_devices))
    for vcpu in vcpus:
        vcpu.set_msrs(msrs.boot_msrs())
    bsp = vcpus[0]
    bsp.set_lapic(lapic.virtual_wire(bsp.get_lapic()))
    return layout.ACPI_TABLES


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
