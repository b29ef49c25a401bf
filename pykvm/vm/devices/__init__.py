"""Emulated devices: the PIO/MMIO buses and one module per device.

    bus.py          Bus: insert(device, base, length); read/write dispatch by offset
    serial.py       Serial16550: the 16550A UART (COM1, 0x3f8, IRQ 4)
    debug_exit.py   DebugExit: QEMU's isa-debug-exit (0xf4): a guest-chosen exit status
    acpi_pm.py      AcpiPmControl, AcpiPmEvent: ACPI PM1a (0x600-0x605): power off, S3, wake status
    fw_cfg.py       FwCfg: QEMU fw_cfg (0x510/0x511): RAM size, CPU counts, files
    pc_testdev.py   QEMU pc-testdev (0xe0, 0x2000, MMIO 0xff000000), for kvm-unit-tests
    i8042.py        I8042: keyboard controller (0x60/0x64): status, self-test, CPU reset
    cmos.py         Cmos: MC146818A RTC and CMOS RAM (0x70/0x71): the time, memory size
    pci.py          PciConfigSpace: PCI configuration mechanism #1 (0xcf8/0xcfc), an empty bus
    virtio/         the virtio-mmio transport, split virtqueues, blk, console, rng (docs/06)

No device imports KVM: each is plain Python driven through read/write and a
few callbacks (irq, stop, reset), so all of them are unit-tested without /dev/kvm.
The PIT, PICs, IOAPIC and LAPICs (and port 0x61) are KVM's, inside the kernel.
"""
