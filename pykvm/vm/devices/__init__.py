"""Emulated devices: the PIO/MMIO buses and one module per device.

    bus.py          Bus: insert(device, base, length); read/write dispatch by offset
    serial.py       Serial16550: the 16550A UART (COM1, 0x3f8, IRQ 4)
    debug_exit.py   DebugExit: QEMU's isa-debug-exit (0xf4): a guest-chosen exit status
    acpi_pm.py      AcpiPmControl, AcpiPmEvent: ACPI PM1a (0x600-0x605): power off, S3, wake status
    fw_cfg.py       FwCfg: QEMU fw_cfg (0x510/0x511): RAM size, CPU counts, files
    pc_testdev.py   QEMU pc-testdev (0xe0, 0x2000, MMIO 0xff000000), for kvm-unit-tests
    i8042.py        I8042: keyboard controller (0x60/0x64): status, self-test, CPU reset

No device imports KVM: each is plain Python driven through read/write and a
few callbacks (irq, stop, reset), so all of them are unit-tested without /dev/kvm.
"""
