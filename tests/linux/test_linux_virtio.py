"""The Linux guest on pykvm's virtio devices (hardware-KVM lane: `make test-hw`).

The Debian kernel has virtio as modules; the recipe's initramfs loads them
(guests/linux/modules.py, /init) and virtio_mmio finds pykvm's devices in the
ACPI DSDT (LNRO0005).  The disk is an ext4 image made on the host with
`mkfs.ext4 -d`; what the guest writes is read back with `debugfs -R cat`.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from linux_guest import SerialSession, guest_file, pykvm_argv

pytestmark = [pytest.mark.linux, pytest.mark.slow]

MARKER = "pykvm-guest: userspace up"
PROMPT = "guest# "
HOST_TEXT = "written on the host"
GUEST_TEXT = "written by the guest"


@pytest.fixture(scope="module")
def kernel():
    guest_file("initramfs.cpio", "initramfs")
    return str(guest_file("vmlinuz", "kernel")), str(guest_file("initramfs.cpio", "initramfs"))


SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def e2fs_tool(name: str) -> str:
    """mkfs.ext4 or debugfs, also where PATH leaves out sbin (as a non-root login shell does)."""
    path = shutil.which(name, path=SBIN_PATH)
    if path is None:
        pytest.skip(f"needs {name} (apt-get install e2fsprogs)")
    return path


@pytest.fixture
def ext4_image(tmp_path):
    content = tmp_path / "content"
    content.mkdir()
    (content / "host.txt").write_text(HOST_TEXT + "\n")
    image = tmp_path / "disk.img"
    subprocess.run([e2fs_tool("mkfs.ext4"), "-q", "-d", str(content), str(image), "16M"], check=True)
    return image


def debugfs_cat(image, path: str) -> str:
    proc = subprocess.run([e2fs_tool("debugfs"), "-R", f"cat {path}", str(image)], capture_output=True,
                          text=True, check=True)
    return proc.stdout


@pytest.mark.parametrize("notify", ["eventfd", "exit"])
def test_guest_mounts_ext4_reads_and_writes_a_file(kernel, ext4_image, notify):
    bzimage, initramfs = kernel
    with SerialSession(pykvm_argv("boot", "--kernel", bzimage, "--initrd", initramfs, "--mem", "256M",
                                  "--disk", str(ext4_image), "--virtio-notify", notify)) as vm:
        at = vm.expect(MARKER, timeout=120)
        at = vm.expect(PROMPT, timeout=60, start=at)
        vm.send("mount -t ext4 /dev/vda /mnt && cat /mnt/host.txt")
        at = vm.expect(HOST_TEXT, timeout=60, start=at)
        vm.send(f"echo '{GUEST_TEXT}' > /mnt/guest.txt && sync && umount /mnt && echo unmounted-ok")
        vm.expect("unmounted-ok", timeout=60, start=at)
        vm.send("poweroff -f")
        assert vm.wait(timeout=60) == 0, vm.output[-2000:].decode(errors="replace")
    assert debugfs_cat(ext4_image, "/guest.txt") == GUEST_TEXT + "\n"


def test_read_only_disk_mounts_read_only(kernel, ext4_image):
    bzimage, initramfs = kernel
    before = ext4_image.read_bytes()
    with SerialSession(pykvm_argv("boot", "--kernel", bzimage, "--initrd", initramfs, "--mem", "256M",
                                  "--disk", f"{ext4_image},ro")) as vm:
        at = vm.expect(PROMPT, timeout=120)
        vm.send("cat /sys/block/vda/ro; mount -t ext4 -o ro,noload /dev/vda /mnt && cat /mnt/host.txt")
        at = vm.expect(HOST_TEXT, timeout=60, start=at)
        assert b"\n1" in vm.output, vm.output[-1000:]
        vm.send("touch /mnt/new || echo refused-ok")
        vm.expect("refused-ok", timeout=60, start=at)
        vm.send("poweroff -f")
        assert vm.wait(timeout=60) == 0
    assert ext4_image.read_bytes() == before


def test_console_on_hvc0_is_interactive(kernel):
    """--console virtio (pykvm adds console=hvc0): the shell runs on hvc0 and the keys reach it."""
    bzimage, initramfs = kernel
    with SerialSession(pykvm_argv("boot", "--kernel", bzimage, "--initrd", initramfs, "--mem", "256M",
                                  "--console", "virtio")) as vm:
        at = vm.expect(MARKER, timeout=120)
        at = vm.expect(PROMPT, timeout=60, start=at)
        vm.send("echo tty=$(tty) sum=$((6 * 7))")
        vm.expect("tty=/dev/hvc0 sum=42", timeout=60, start=at)
        vm.send("poweroff -f")
        assert vm.wait(timeout=60) == 0


def test_rng_feeds_hwrng(kernel):
    bzimage, initramfs = kernel
    with SerialSession(pykvm_argv("boot", "--kernel", bzimage, "--initrd", initramfs, "--mem", "256M",
                                  "--rng")) as vm:
        at = vm.expect(PROMPT, timeout=120)
        vm.send("cat /sys/class/misc/hw_random/rng_current; "
                "head -c 64 /dev/hwrng | od -An -tx1 | wc -l")
        at = vm.expect("virtio_rng", timeout=60, start=at)
        vm.expect("4", timeout=60, start=at)
        vm.send("poweroff -f")
        assert vm.wait(timeout=60) == 0
