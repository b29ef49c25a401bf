"""What a PC's firmware leaves behind for any kernel it boots, whatever the protocol.

A kernel started by SeaBIOS or OVMF finds more than its own image in memory:
ACPI tables describing the machine, a memory map it can ask the firmware
for, and the PC's legacy chips set up as the BIOS used them.  pykvm has no
firmware, so one step of the machine's recipe leaves the same state itself
(`leave_firmware_state`), before the loader runs, for every kernel but a raw
flat binary, as Firecracker writes its ACPI tables and e820 map for every
boot.  QEMU's `-kernel` boots run SeaBIOS first, so what SeaBIOS leaves is
the reference (pykvm.vm.arch.x86.pic, pit and ivt name its sources).

  1. ACPI tables (RSDP, XSDT, FADT, FACS, MADT, DSDT) at layout.ACPI_TABLES, in the
     BIOS area where Linux also scans for "RSD PTR " (ACPI 6.5, 5.2.5.1): the FADT
     names the PM1a control port, which is how `poweroff` reaches pykvm; the
     MADT lists the vCPUs; the DSDT lists the virtio-mmio devices.
  2. The E820 memory map (layout.memory_map of the guest's RAM): what a PC
     firmware answers to INT 15h, AX=E820h.
  3. The real-mode interrupt vector table at layout.BIOS_IVT, every vector
     pointing at a stub at layout.BIOS_STUBS: IRET, or end-of-interrupt and
     IRET for the PICs' vectors (ivt.py).
  4. The two 8259A PICs initialised with the BIOS's vectors (IRQ 0-7 on
     INT 08h-0Fh, IRQ 8-15 on INT 70h-77h) and masks (pic.py), and the PIT's
     channel 0 ticking at 18.2 Hz on IRQ 0 (pit.py), through KVM_SET_IRQCHIP
     and KVM_SET_PIT2 on KVM's in-kernel chips.  Without this the PICs are
     uninitialised: an IRQ would arrive on an exception's vector (a real-mode
     program's IRQ 11 on INT 03h), and a real-mode HLT would wait forever.

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

from pykvm.vm.arch.x86 import acpi, boot_state, ivt, pic, pit
from pykvm.vm import layout
from pykvm.vm.kvm.vm import IRQCHIP_PIC_MASTER, IRQCHIP_PIC_SLAVE
from pykvm.errors import GuestError

__all__ = ["Firmware", "leave_firmware_state", "suspend_to_ram"]

SLEEP_POLL_S = 0.05            # while asleep, how often to look whether the VM was stopped


@dataclass(frozen=True)
class Firmware:
    """What the firmware step left for the loader to hand the kernel."""

    acpi_rsdp: int                           # guest address of the ACPI RSDP
    e820: tuple[tuple[int, int, int], ...]   # the memory map: (address, size, E820 type)


def leave_firmware_state(memory, vm, cpus: int, mmio_devices=(), has_pit: bool = True) -> Firmware:
    """Steps 1-4 of the module docstring for `vm`, of `cpus` vCPUs (its irqchip made, and its
    PIT unless `has_pit` is False: QEMU's -machine pit=off).

    `mmio_devices`: (base, size, irq) of each virtio-mmio device, for the DSDT.
    """
    memory.write(layout.ACPI_TABLES, acpi.acpi_tables(layout.ACPI_TABLES, cpus, mmio_devices))  # 1
    e820 = tuple(memory.memory_map())                                                         # 2
    memory.write(layout.BIOS_IVT, ivt.bios_ivt(layout.BIOS_STUBS))                            # 3
    memory.write(layout.BIOS_STUBS, ivt.bios_stubs())
    initialise_legacy_chips(vm, has_pit)                                                      # 4
    return Firmware(acpi_rsdp=layout.ACPI_TABLES, e820=e820)


def initialise_legacy_chips(vm, has_pit: bool = True) -> None:
    """Step 4: the in-kernel PICs and (if the VM has one) the PIT as the BIOS leaves them."""
    for chip, slave in ((IRQCHIP_PIC_MASTER, False), (IRQCHIP_PIC_SLAVE, True)):
        vm.set_irqchip(pic.bios_state(vm.get_irqchip(chip), slave))
    if has_pit:
        vm.set_pit2(pit.bios_state(vm.get_pit2()))


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
