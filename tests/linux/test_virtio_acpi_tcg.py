"""pykvm's virtio-mmio DSDT entry as a real Linux reads it, under QEMU TCG (no KVM needed).

QEMU's pc machine takes our AML as an extra table (-acpitable); Debian's kernel
enumerates the LNRO0005 device from it, with the MMIO window of its _CRS, and
the recipe's initramfs loads virtio_mmio, which probes the device.  Nothing
answers at that address on a pc, so the probe ends at the magic value: that
line proves the whole chain from our bytes to the driver.
"""
from __future__ import annotations

import shutil

import pytest

from linux_guest import SerialSession, guest_file
from pykvm.vm.arch.x86 import acpi, aml
from pykvm.vm import layout

pytestmark = pytest.mark.slow

PROMPT = "guest# "


@pytest.fixture
def ssdt(tmp_path):
    base, irq = layout.virtio_mmio_slot(0)
    body = aml.Scope("\\_SB_", [aml.virtio_mmio_device(0, base, layout.VIRTIO_MMIO_SIZE, irq)])
    path = tmp_path / "ssdt.aml"
    path.write_bytes(acpi.table(b"SSDT", acpi.DSDT_REVISION, body.to_aml_bytes()))
    return path


def test_linux_enumerates_our_virtio_mmio_device_and_virtio_mmio_probes_it(ssdt):
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("needs qemu-system-x86_64")
    kernel, initrd = guest_file("vmlinuz", "kernel"), guest_file("initramfs.cpio", "initramfs")
    base, _ = layout.virtio_mmio_slot(0)
    argv = ["qemu-system-x86_64", "-M", "pc", "-accel", "tcg", "-m", "256", "-display", "none",
            "-serial", "stdio", "-monitor", "none", "-nic", "none", "-no-reboot",
            "-acpitable", f"file={ssdt}", "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "console=ttyS0 reboot=k panic=-1 lpj=4000000 pci=off"]
    with SerialSession(argv) as vm:
        at = vm.expect("virtio-mmio LNRO0005:00: Wrong magic value", timeout=300)
        at = vm.expect(PROMPT, timeout=120, start=at)
        vm.send(f"grep -i {base:x} /proc/iomem")
        vm.expect(f"{base:08x}-{base + layout.VIRTIO_MMIO_SIZE - 1:08x} : LNRO0005:00", timeout=60,
                  start=at)
        vm.send("poweroff -f")
        vm.wait(timeout=60)
