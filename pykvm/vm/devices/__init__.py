"""Emulated devices: the PIO/MMIO buses and one module per device.

    bus.py          Bus: insert(device, base, length); read/write dispatch by offset
    serial.py       Serial16550: the 16550A UART (COM1, 0x3f8, IRQ 4)
    i8042.py        I8042: keyboard controller (0x60/0x64): status, self-test, CPU reset
    cmos.py         Cmos: MC146818A RTC and CMOS RAM (0x70/0x71): the time, memory size
    pci.py          PciConfigSpace: PCI configuration mechanism #1 (0xcf8/0xcfc), an empty bus
    debug_exit.py   DebugExit: QEMU's isa-debug-exit (0xf4): a guest-chosen exit status
    acpi_pm.py      AcpiPmEvent: ACPI PM1a_STS/PM1a_EN (0x600); AcpiPmControl: PM1a_CNT
                    (0x604), SLP_EN = power off

No device imports KVM: each is plain Python driven through read/write and a
few callbacks (irq, stop, reset), so all of them are unit-tested without /dev/kvm.
The PIT, PICs, IOAPIC and LAPICs (and port 0x61) are KVM's, inside the kernel.
"""
