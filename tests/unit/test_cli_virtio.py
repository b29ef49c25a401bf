"""`pykvm boot --disk/--console/--rng`: bad input is one line, found before KVM is opened."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from clitools import one_error_line, pykvm
from pykvm.vm import layout
from pykvm.vm.devices.virtio.attach import DiskSpec, parse_disk
from pykvm.errors import ConfigError


def boot_with(*args: str):
    return pykvm("boot", "--kernel", "/nonexistent-kernel", *args)


def test_missing_image(tmp_path):
    line = one_error_line(boot_with("--disk", str(tmp_path / "nope.img")))
    assert line == f"pykvm: error: --disk {tmp_path / 'nope.img'}: no such file"


def test_directory_as_image(tmp_path):
    line = one_error_line(boot_with("--disk", str(tmp_path)))
    assert line == f"pykvm: error: --disk {tmp_path}: is a directory"


def test_unwritable_image(tmp_path):
    if os.geteuid() == 0:
        path = "/sys/kernel/notes"          # sysfs refuses O_RDWR on a read-only file, even to root
    else:
        path = tmp_path / "ro.img"
        path.write_bytes(bytes(512))
        path.chmod(0o444)
    line = one_error_line(boot_with("--disk", str(path)))
    assert line == f"pykvm: error: --disk {path}: not writable (add ,ro for a read-only disk)"


def test_more_disks_than_slots(tmp_path):
    image = tmp_path / "d.img"
    image.write_bytes(bytes(512))
    disks = [arg for _ in range(len(layout.VIRTIO_MMIO_IRQS) + 1) for arg in ("--disk", str(image))]
    line = one_error_line(boot_with(*disks))
    assert line == (f"pykvm: error: {len(layout.VIRTIO_MMIO_IRQS) + 1} virtio devices asked for; "
                    f"pykvm has {len(layout.VIRTIO_MMIO_IRQS)} virtio-mmio slots")


def test_bad_disk_option(tmp_path):
    line = one_error_line(boot_with("--disk", f"{tmp_path}/d.img,rw"))
    assert "expected FILE or FILE,ro" in line


def test_bad_console_choice():
    assert "--console" in one_error_line(boot_with("--console", "vga"))


@pytest.mark.parametrize("text, spec", [
    ("disk.img", DiskSpec(Path("disk.img"))),
    ("disk.img,ro", DiskSpec(Path("disk.img"), read_only=True)),
    ("a,b.img", None),
])
def test_parse_disk(text, spec):
    if spec is None:
        with pytest.raises(ConfigError):
            parse_disk(text)
    else:
        assert parse_disk(text) == spec


def test_console_virtio_puts_a_linux_console_on_hvc0(tmp_path):
    from fake_bzimage import make_bzimage
    from pykvm.vm.boot.bzimage import DEFAULT_CMDLINE
    from pykvm.commands.booting import _is_bzimage, linux_hvc0_cmdline

    bzimage, elf = tmp_path / "vmlinuz", tmp_path / "kernel.elf"
    bzimage.write_bytes(make_bzimage())
    elf.write_bytes(b"\x7fELF" + bytes(0x300))
    assert _is_bzimage(bzimage) and not _is_bzimage(elf) and not _is_bzimage(tmp_path / "none")
    assert linux_hvc0_cmdline() == DEFAULT_CMDLINE + " console=hvc0"


@pytest.mark.parametrize("option, message", [
    ("wifi", "--net wifi: want bridge, or tap=NAME[,mac=52:54:00:12:34:56]"),
    ("tap=", "--net tap=: want bridge, or tap=NAME[,mac=52:54:00:12:34:56]"),
    ("tap=t0,speed=10", "--net tap=t0,speed=10: want bridge, or tap=NAME[,mac=52:54:00:12:34:56]"),
    ("tap=t0,mac=52:54:00:12:34", "--net tap=t0,mac=52:54:00:12:34: '52:54:00:12:34' is not a MAC "
                                  "address like 52:54:00:12:34:56"),
    ("tap=t0,mac=01:00:5e:00:00:01", "--net tap=t0,mac=01:00:5e:00:00:01: a multicast MAC (first "
                                     "byte odd) cannot be a card's"),
    ("tap=a/b", "tap 'a/b': an interface name is 1-15 characters, without / : or spaces"),
    ("tap=" + "x" * 16, f"tap '{'x' * 16}': an interface name is 1-15 characters, without / : or spaces"),
])
def test_bad_net_option(option, message):
    assert one_error_line(boot_with("--net", option)) == f"pykvm: error: {message}"


def test_bridge_mode_gives_the_guest_its_address_and_a_mac_made_from_it():
    from types import SimpleNamespace

    from pykvm.commands.booting import ip_argument, mac_for_address

    lease = SimpleNamespace(address="10.213.4.7", netmask="255.255.0.0",
                            network=SimpleNamespace(gateway="10.213.0.1"))
    assert ip_argument(lease) == "ip=10.213.4.7::10.213.0.1:255.255.0.0::eth0:off"
    assert mac_for_address("10.213.4.7") == bytes.fromhex("525400d50407")
