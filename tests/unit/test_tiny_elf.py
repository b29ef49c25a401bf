"""The built guests/tiny/tiny.elf: a PVH entry note, and no instruction the
PVM emulator cannot run in kernel mode (the table in docs/contributing-test-lanes.md: int3,
int N, cmpxchg16b, SSE and the xsave family, clac/stac)."""
from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "guests" / "tiny"
ELF = TINY / "tiny.elf"

PT_LOAD, PT_NOTE = 1, 4
PF_X = 1
XEN_ELFNOTE_PHYS32_ENTRY = 18
# objdump mnemonics (AT&T) the emulator fails on, or that mean SSE/AVX registers.
FORBIDDEN = re.compile(r"\t(int3?|cmpxchg16b|xsave\w*|xrstor\w*|fxsave\w*|fxrstor\w*|clac|stac"
                       r"|endbr64)(\s|$)|%[xyz]mm\d")


@pytest.fixture(scope="module")
def elf() -> bytes:
    subprocess.run(["make", "-s", "-C", str(TINY)], check=True)
    return ELF.read_bytes()


def program_headers(data: bytes) -> list[tuple[int, int, int, int, int]]:
    """(type, flags, offset, paddr, filesz) of each program header (ELF-64, SysV gABI)."""
    assert data[:4] == b"\x7fELF" and data[4] == 2, "not an ELF-64 file"
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    headers = []
    for i in range(phnum):
        p_type, p_flags, p_offset, _vaddr, p_paddr, p_filesz, p_memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + i * phentsize)
        headers.append((p_type, p_flags, p_offset, p_paddr, p_filesz, p_memsz))
    return headers


def notes(data: bytes, offset: int, size: int):
    """(name, type, desc) of each note in a PT_NOTE segment (4-byte aligned fields)."""
    end = offset + size
    while offset < end:
        namesz, descsz, ntype = struct.unpack_from("<III", data, offset)
        offset += 12
        name = data[offset:offset + namesz].rstrip(b"\0")
        offset += (namesz + 3) & ~3
        desc = data[offset:offset + descsz]
        offset += (descsz + 3) & ~3
        yield name, ntype, desc


def test_pvh_entry_note_points_into_executable_code(elf):
    headers = program_headers(elf)
    entries = [struct.unpack("<I", desc[:4])[0]
               for p_type, _f, off, _pa, filesz, _m in headers if p_type == PT_NOTE
               for name, ntype, desc in notes(elf, off, filesz)
               if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY]
    assert len(entries) == 1, f"PVH notes found: {entries}"
    code = [(pa, pa + filesz) for p_type, flags, _o, pa, filesz, _m in headers
            if p_type == PT_LOAD and flags & PF_X]
    assert any(lo <= entries[0] < hi for lo, hi in code), (hex(entries[0]), code)


def test_loaded_at_1mib_below_the_small_code_model_limit(elf):
    loads = [(pa, pa + memsz) for p_type, _f, _o, pa, _fs, memsz in program_headers(elf)
             if p_type == PT_LOAD]
    assert min(lo for lo, _ in loads) == 0x100000
    assert max(hi for _, hi in loads) < 0x80000000


def disassembly(path: Path) -> str:
    return subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(path)], check=True,
                          capture_output=True, text=True).stdout


def test_kernel_code_has_no_instruction_the_emulator_cannot_run(elf):
    bad = [line for line in disassembly(ELF).splitlines() if FORBIDDEN.search(line)]
    assert not bad, "\n".join(bad[:20])


def test_the_check_would_see_int_0x80_in_user_code(elf):
    """User programs run natively and do use `int $0x80`: proves the pattern matches objdump's syntax."""
    user = TINY / "build" / "user" / "hello.elf"
    assert any(FORBIDDEN.search(line) for line in disassembly(user).splitlines())
