"""Emulated devices: the PIO/MMIO buses and one module per device.

    bus.py          Bus: insert(device, base, length); read/write dispatch by offset
    serial.py       Serial16550: the 16550A UART (COM1, 0x3f8, IRQ 4)
    debug_exit.py   DebugExit: QEMU's isa-debug-exit (0xf4): a guest-chosen exit status
    acpi_pm.py      AcpiPmControl: ACPI PM1a_CNT (0x604): SLP_EN = power off
    i8042.py        I8042: keyboard controller (0x60/0x64): status, self-test, CPU reset

No device imports KVM: each is plain Python driven through read/write and a
few callbacks (irq, stop, reset), so all of them are unit-tested without /dev/kvm.
"""
