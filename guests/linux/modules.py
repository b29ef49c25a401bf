"""Copy kernel modules and everything they depend on into an initramfs, in load order.

    python modules.py LIB_MODULES_RELEASE_DIR ROOTFS virtio_mmio virtio_blk ...

A distribution kernel has virtio as modules; busybox's insmod loads one file
and resolves nothing, so the initramfs must load dependencies first.  The
package ships the .ko files but no modules.dep (depmod writes it at install
time), so this script reads each module's own dependency list, the
`depends=` entry of its .modinfo ELF section (what modpost wrote from the
symbols it uses), and writes:

    ROOTFS/lib/modules/RELEASE/<path>.ko     the modules needed
    ROOTFS/lib/modules/RELEASE/modules.dep   depmod's format: "path: deps...", every
                                             dependency, the one to load first last
    ROOTFS/etc/modules.load                  their paths, dependencies first

Modules the kernel has built in (modules.builtin) need no file.  Compressed
modules (.ko.xz) are decompressed, since busybox's insmod may not read xz.
"""
from __future__ import annotations

import argparse
import lzma
import shutil
import struct
import sys
from pathlib import Path

ELF_SECTION_HEADER = struct.Struct("<IIQQQQIIQQ")   # ELF64 Elf64_Shdr
SUFFIXES = (".ko", ".ko.xz")


def module_name(path: str) -> str:
    """kernel/drivers/char/hw_random/virtio-rng.ko -> virtio_rng (the kernel's spelling)."""
    name = Path(path).name
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            name = name[:-len(suffix)]
    return name.replace("-", "_")


def read_module(path: Path) -> bytes:
    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".xz") else data


def modinfo_depends(elf: bytes) -> list[str]:
    """The `depends=` list in a module's .modinfo section (ELF64, little-endian)."""
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    sections = [ELF_SECTION_HEADER.unpack_from(elf, shoff + i * shentsize) for i in range(shnum)]
    names_offset = sections[shstrndx][4]
    for name, _, _, _, offset, size, *_ in sections:
        end = elf.index(b"\0", names_offset + name)
        if elf[names_offset + name:end] == b".modinfo":
            for entry in elf[offset:offset + size].split(b"\0"):
                if entry.startswith(b"depends="):
                    return [d for d in entry[len(b"depends="):].decode().split(",") if d]
    return []


def index_modules(release_dir: Path) -> dict[str, str]:
    """Module name -> path relative to release_dir, for every module file in the package."""
    found = {}
    for path in sorted(release_dir.rglob("*.ko*")):
        if path.name.endswith(SUFFIXES):
            found[module_name(path.name)] = str(path.relative_to(release_dir))
    return found


def builtin_modules(release_dir: Path) -> set[str]:
    builtin = release_dir / "modules.builtin"
    if not builtin.exists():
        return set()
    return {module_name(line) for line in builtin.read_text().split()}


def load_order(release_dir: Path, wanted: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Paths of `wanted` and their dependencies, each after what it needs; and for each, all it
    needs (directly or not), in load order."""
    files, builtin = index_modules(release_dir), builtin_modules(release_dir)
    order: list[str] = []
    depends: dict[str, list[str]] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in depends or name in builtin:
            return
        if name in chain:
            raise SystemExit(f"modules.py: dependency loop {' -> '.join(chain + (name,))}")
        if name not in files:
            raise SystemExit(f"modules.py: no module {name!r} in {release_dir}")
        needs = modinfo_depends(read_module(release_dir / files[name]))
        for dep in needs:
            visit(dep, chain + (name,))
        closure = {d for n in needs if n not in builtin for d in depends[n] + [files[n]]}
        order.append(name)
        depends[name] = [files[n] for n in order if files[n] in closure]

    for name in wanted:
        visit(module_name(name), ())
    return [files[n] for n in order], {files[n]: depends[n] for n in order}


def install(release_dir: Path, rootfs: Path, wanted: list[str]) -> list[str]:
    """Copy the modules into rootfs; write modules.dep and /etc/modules.load."""
    paths, depends = load_order(release_dir, wanted)
    target = rootfs / "lib" / "modules" / release_dir.name
    loaded = []
    for path in paths:
        plain = path[:-len(".xz")] if path.endswith(".xz") else path
        (target / plain).parent.mkdir(parents=True, exist_ok=True)
        (target / plain).write_bytes(read_module(release_dir / path))
        loaded.append(plain)
    plain = {p: l for p, l in zip(paths, loaded)}
    (target / "modules.dep").write_text("".join(
        f"{plain[p]}: {' '.join(plain[d] for d in reversed(depends[p]))}\n".replace(": \n", ":\n")
        for p in paths))
    (rootfs / "etc").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc" / "modules.load").write_text("".join(f"{p}\n" for p in loaded))
    for builtin in ("modules.builtin", "modules.order"):
        if (release_dir / builtin).exists():
            shutil.copy(release_dir / builtin, target / builtin)
    return loaded


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("release_dir", type=Path, help="lib/modules/RELEASE from the kernel package")
    parser.add_argument("rootfs", type=Path)
    parser.add_argument("modules", nargs="+")
    args = parser.parse_args(argv)
    for path in install(args.release_dir, args.rootfs, args.modules):
        print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
