"""The `linux` tier's ground: a stock Debian kernel boots to userspace on this KVM.

On PVM a distribution kernel cannot finish booting (its kernel mode runs in
KVM's instruction emulator); on hardware-style KVM, including the L1 lane, it
boots in seconds.  This test boots the lane's own kernel package with QEMU as
the VMM (`-accel kvm`), a second, independent VMM, so that a failure of a later
`pykvm boot --kernel` test can be told apart from a KVM that cannot run Linux.

The guest's /init is busybox: it prints the running kernel's release and
powers off (ACPI, through busybox poweroff -f), so QEMU exits by itself.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import lane
import lane_kernel
from pykvm.vm.boot.cpio import CpioWriter

pytestmark = [pytest.mark.linux, pytest.mark.slow]

L2_MEM = "256M"
L2_TIMEOUT = 180                  # seconds; about 14 s in the L1 lane
MARKER = "pykvm-l2-userspace"
L2_INIT = f"""#!/busybox sh
/busybox mount -t proc proc /proc
echo "{MARKER} release=$(/busybox uname -r)"
/busybox poweroff -f
"""


def unpacked_kernel() -> lane_kernel.Kernel:
    kernels = lane_kernel.unpacked(lane.DEFAULT_CACHE / "kernel")
    if not kernels:
        pytest.skip(f"no Debian cloud kernel unpacked in {lane.DEFAULT_CACHE / 'kernel'}: "
                    "`make test-hw` fetches it where apt knows linux-image-cloud-amd64")
    return kernels[-1]


def l2_initramfs(path: Path) -> Path:
    archive = CpioWriter()
    archive.directory("proc")
    archive.file("busybox", lane.BUSYBOX.read_bytes(), 0o755)
    archive.file("init", L2_INIT.encode(), 0o755)
    path.write_bytes(archive.finish())
    return path


def test_stock_kernel_boots_to_userspace_under_qemu_kvm(tmp_path):
    if shutil.which(lane.QEMU) is None:
        pytest.skip(f"{lane.QEMU} not installed: apt-get install qemu-system-x86")
    kernel = unpacked_kernel()
    command = [lane.QEMU, "-accel", "kvm", "-cpu", "host", "-m", L2_MEM, "-nodefaults",
               "-display", "none", "-no-reboot", "-serial", "stdio",
               "-kernel", str(kernel.vmlinuz), "-initrd", str(l2_initramfs(tmp_path / "l2.cpio")),
               "-append", "console=ttyS0 panic=-1 rdinit=/init mitigations=off"]
    done = subprocess.run(command, capture_output=True, text=True, errors="replace",
                          timeout=L2_TIMEOUT)
    log = done.stdout + done.stderr
    assert f"{MARKER} release={kernel.version}" in log, \
        f"no userspace line from the L2 (exit {done.returncode}); last output:\n{log[-2000:]}"
    assert done.returncode == 0, f"QEMU exit status {done.returncode}:\n{log[-2000:]}"
