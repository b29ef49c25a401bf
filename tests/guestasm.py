"""Assemble tiny test guests from readable assembly with the system's GNU as.

Tests keep their guest code as assembly text next to the host-side
assertions (the way the kernel's KVM selftests keep C guest code beside the
test), instead of opaque byte strings.  `assemble(src)` returns the flat
machine code, assembled for 16-bit real mode at pykvm's FLAT_LOAD address.
"""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from pykvm.vm import layout

__all__ = ["assemble", "pvh_elf"]


def assemble(source: str, bits: int = 16, origin: int = layout.FLAT_LOAD) -> bytes:
    """GNU as + objcopy: `source` (AT&T syntax) -> raw bytes that run at `origin`."""
    with tempfile.TemporaryDirectory() as tmp:
        asm, obj, out = Path(tmp, "g.S"), Path(tmp, "g.o"), Path(tmp, "g.bin")
        asm.write_text(f".code{bits}\n{source}\n")
        subprocess.run(["gcc", "-c", "-m32" if bits != 64 else "-m64", "-o", obj, asm], check=True)
        linked = Path(tmp, "g.elf")
        subprocess.run(["ld", "-m", "elf_i386" if bits != 64 else "elf_x86_64", "-Ttext",
                        hex(origin), "-e", "0", "-o", linked, obj], check=True,
                       stderr=subprocess.DEVNULL)
        subprocess.run(["objcopy", "-O", "binary", "-j", ".text", linked, out], check=True)
        return out.read_bytes()


PVH_NOTE = """
    .pushsection .note.Xen, "a"
    .balign 4
    .long 4, 4, 18                   /* namesz, descsz, XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long _start
    .popsection
"""

PVH_LINKER_SCRIPT = """
ENTRY(_start)
PHDRS { text PT_LOAD FLAGS(7); note PT_NOTE FLAGS(4); }
SECTIONS {
    . = 0x100000;
    .text : { *(.text) *(.data) *(.rodata*) } :text
    .note.Xen : { *(.note.Xen) } :text :note
}
"""


def pvh_elf(source: str, path: Path) -> Path:
    """Assemble 32-bit `source` into a PVH ELF at `path` (entry `_start`, loaded at 1 MiB)."""
    with tempfile.TemporaryDirectory() as tmp:
        asm, script = Path(tmp, "g.S"), Path(tmp, "g.ld")
        asm.write_text(f".code32\n.text\n.globl _start\n_start:\n{source}\n{PVH_NOTE}\n")
        script.write_text(PVH_LINKER_SCRIPT)
        subprocess.run(["gcc", "-m32", "-nostdlib", "-static", "-Wl,--build-id=none",
                        "-Wl,-m,elf_i386", "-T", script, "-o", path, asm], check=True)
    return path
