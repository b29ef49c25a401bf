"""guests/linux/modules.py: the initramfs's modules, dependencies first, as modules.dep says."""
from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("linux_modules", ROOT / "guests" / "linux" / "modules.py")
modules = importlib.util.module_from_spec(spec)
spec.loader.exec_module(modules)


def fake_module(path: Path, depends: str) -> None:
    """An ELF64 object whose .modinfo section holds `depends=...`, as modpost writes it."""
    source = path.with_suffix(".c")
    source.write_text('__attribute__((section(".modinfo"), used)) static const char info[] = '
                      f'"license=GPL\\0depends={depends}\\0vermagic=6.1";\n')
    subprocess.run(["gcc", "-c", "-o", str(path), str(source)], check=True)
    source.unlink()


@pytest.fixture
def release(tmp_path):
    root = tmp_path / "lib" / "modules" / "6.1.0-test"
    (root / "kernel" / "drivers").mkdir(parents=True)
    fake_module(root / "kernel" / "drivers" / "ring.ko", "")
    fake_module(root / "kernel" / "drivers" / "core.ko", "ring,builtin_crc")
    fake_module(root / "kernel" / "drivers" / "virtio-thing.ko", "core,ring")
    fake_module(root / "kernel" / "drivers" / "unused.ko", "")
    (root / "modules.builtin").write_text("kernel/lib/builtin-crc.ko\nkernel/fs/ext4/ext4.ko\n")
    return root


def test_modinfo_depends(release):
    elf = (release / "kernel" / "drivers" / "virtio-thing.ko").read_bytes()
    assert modules.modinfo_depends(elf) == ["core", "ring"]


def test_load_order_puts_dependencies_first_and_skips_builtins(release, tmp_path):
    rootfs = tmp_path / "rootfs"
    loaded = modules.install(release, rootfs, ["virtio_thing", "ext4"])
    assert loaded == ["kernel/drivers/ring.ko", "kernel/drivers/core.ko",
                      "kernel/drivers/virtio-thing.ko"]
    assert (rootfs / "etc" / "modules.load").read_text().split() == loaded
    target = rootfs / "lib" / "modules" / "6.1.0-test"
    assert (target / "modules.dep").read_text().splitlines() == [
        "kernel/drivers/ring.ko:",
        "kernel/drivers/core.ko: kernel/drivers/ring.ko",
        "kernel/drivers/virtio-thing.ko: kernel/drivers/core.ko kernel/drivers/ring.ko",
    ]
    assert not (target / "kernel" / "drivers" / "unused.ko").exists()


def test_unknown_module_is_one_clear_error(release, tmp_path):
    with pytest.raises(SystemExit, match="no module 'nope'"):
        modules.install(release, tmp_path / "rootfs", ["nope"])
