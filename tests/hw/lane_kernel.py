"""The L1's kernel: Debian's linux-image-cloud-amd64, fetched and unpacked, never installed.

`apt-get download` puts the .deb in the lane's cache directory and `dpkg-deb -x`
unpacks it beside it, so the host's /boot and /lib/modules are never touched.
The cloud flavour is small and boots fast, but builds virtio, virtio-fs and KVM
as modules; their load order comes from each module's own `.modinfo` section
("depends=a,b"), the same field depmod reads, because an unpacked package has
no modules.dep (depmod runs only when the package is installed).
"""
from __future__ import annotations

import lzma
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lane_error import LaneError

__all__ = ["META_PACKAGE", "Kernel", "fetch_kernel", "unpacked", "module_bytes",
           "modinfo_depends", "load_order"]

META_PACKAGE = "linux-image-cloud-amd64"   # Debian's "latest cloud kernel" package
# ... or, where apt has no such package, Ubuntu's flavours for VMs (kvm, then virtual)
OTHER_META_PACKAGES = ("linux-image-kvm", "linux-image-virtual")

# .modinfo is a run of NUL-terminated "key=value" strings.
_DEPENDS = re.compile(rb"(?:^|\0)depends=([^\0]*)\0")


@dataclass(frozen=True)
class Kernel:
    """An unpacked kernel package: the bzImage and its modules tree."""
    version: str          # e.g. "6.1.0-56-cloud-amd64"
    vmlinuz: Path
    modules: Path         # .../lib/modules/<version>

    def module_files(self) -> dict[str, Path]:
        """Module name (with '_', as the kernel spells it) -> its .ko or .ko.xz file."""
        files = {}
        for path in self.modules.joinpath("kernel").rglob("*.ko*"):
            name = path.name.split(".ko")[0].replace("-", "_")
            files[name] = path
        return files


def _run(args: list[str], cwd: Path | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise LaneError(f"`{' '.join(args)}` failed: {done.stderr.strip()[-400:]}")
    return done.stdout


def image_package(metas: tuple[str, ...] = (META_PACKAGE, *OTHER_META_PACKAGES)) -> str:
    """The versioned image package the first meta package apt knows depends on."""
    for meta in metas:
        try:
            out = _run(["apt-cache", "depends", "--important", meta])
        except LaneError:                  # apt-cache: no such package here
            continue
        for line in out.splitlines():
            key, _, value = line.strip().partition(": ")
            if key == "Depends" and value.startswith("linux-image-"):
                return value
    raise LaneError(f"apt-cache knows no image package for {' or '.join(metas)}; "
                    "run `apt-get update`")


def unpacked(cache: Path) -> list[Kernel]:
    kernels = []
    for vmlinuz in sorted(cache.glob("*/boot/vmlinuz-*")):
        version = vmlinuz.name.removeprefix("vmlinuz-")
        modules = vmlinuz.parent.parent / "lib" / "modules" / version
        if modules.is_dir():
            kernels.append(Kernel(version, vmlinuz, modules))
    return kernels


def fetch_kernel(cache: Path) -> Kernel:
    """Download and unpack the current cloud kernel into `cache`, or reuse it.

    Without apt lists (offline), the newest kernel already unpacked is used.
    """
    cache.mkdir(parents=True, exist_ok=True)
    try:
        package = image_package()
    except (LaneError, FileNotFoundError):
        found = unpacked(cache)
        if found:
            return found[-1]
        raise
    tree = cache / package
    if not tree.joinpath("boot").is_dir():
        _run(["apt-get", "download", package], cwd=cache)
        deb = max(cache.glob(f"{package}_*.deb"), key=lambda p: p.stat().st_mtime)
        _run(["dpkg-deb", "-x", str(deb), str(tree)])
        deb.unlink()
    kernels = unpacked(tree.parent)
    for kernel in kernels:
        if kernel.vmlinuz.is_relative_to(tree):
            return kernel
    raise LaneError(f"{package} unpacked into {tree} but holds no vmlinuz and modules")


def module_bytes(path: Path) -> bytes:
    """A module's ELF image, decompressed if Debian shipped it as .ko.xz."""
    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".xz") else data


def modinfo_depends(image: bytes) -> list[str]:
    """The modules this module needs loaded first (its .modinfo "depends=")."""
    match = _DEPENDS.search(image)
    if not match or not match.group(1):
        return []
    return match.group(1).decode().split(",")


def load_order(wanted: list[str], depends_of: Callable[[str], list[str]]) -> list[str]:
    """`wanted` and everything they depend on, each after its dependencies.

    `depends_of(name)` gives a module's direct dependencies, or raises
    KeyError when the package has no such module.
    """
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in path:
            raise LaneError(f"module dependency cycle: {' -> '.join(path + (name,))}")
        try:
            deps = depends_of(name)
        except KeyError:
            raise LaneError(f"module {name} is not in the kernel package") from None
        for dep in deps:
            visit(dep, path + (name,))
        order.append(name)

    for name in wanted:
        visit(name, ())
    return order
