"""A small ELF reader: just what a kernel loader needs.

Reads the ELF header, the program headers (PT_LOAD segments to copy into
guest memory, PT_NOTE segments to search for notes) and the notes themselves.
Both ELF32 and ELF64, little-endian x86.  Spec: the System V ABI, "Object
Files" (ELF header, program header, note section).

Every offset and size read from the file is checked against the file's
length: a truncated or hostile ELF gives a LoaderError, never an IndexError.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from pykvm.errors import LoaderError

__all__ = ["ElfFile", "Segment", "Note", "parse_elf", "is_elf"]

ELF_MAGIC = b"\x7fELF"
EI_CLASS = 4                 # e_ident[EI_CLASS]: 1 = 32-bit, 2 = 64-bit
EI_DATA = 5                  # e_ident[EI_DATA]: 1 = little-endian
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB = 1
EM_386, EM_X86_64 = 3, 62    # e_machine values pykvm accepts
PT_LOAD = 1                  # loadable segment
PT_NOTE = 4                  # auxiliary information (notes)

# (ELF header, program header) layouts per class; see the System V ABI.
# ELF header fields from e_type on: type, machine, version, entry, phoff, shoff,
# flags, ehsize, phentsize, phnum.
EHDR = {ELFCLASS32: struct.Struct("<HHIIIIIHHH"), ELFCLASS64: struct.Struct("<HHIQQQIHHH")}
# Program header: (type, offset, vaddr, paddr, filesz, memsz, flags) in each class's order.
PHDR32 = struct.Struct("<IIIIIIII")   # type offset vaddr paddr filesz memsz flags align
PHDR64 = struct.Struct("<IIQQQQQQ")   # type flags offset vaddr paddr filesz memsz align
NOTE_HEADER = struct.Struct("<III")   # namesz, descsz, type


@dataclass(frozen=True)
class Segment:
    """A program header: `filesz` bytes at file `offset` go to physical `paddr`; `memsz` >= filesz."""

    type: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int


@dataclass(frozen=True)
class Note:
    name: bytes
    type: int
    desc: bytes


@dataclass
class ElfFile:
    data: bytes
    elf_class: int
    machine: int
    entry: int
    segments: list[Segment]

    def load_segments(self) -> list[Segment]:
        return [s for s in self.segments if s.type == PT_LOAD]

    def segment_data(self, seg: Segment) -> bytes:
        return self.data[seg.offset:seg.offset + seg.filesz]

    def notes(self) -> list[Note]:
        """Every note in every PT_NOTE segment."""
        found = []
        for seg in self.segments:
            if seg.type == PT_NOTE:
                found.extend(_parse_notes(self.segment_data(seg)))
        return found


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def parse_elf(data: bytes, name: str = "kernel") -> ElfFile:
    """Parse `data` as an x86 ELF executable; LoaderError naming `name` on anything wrong."""
    if not is_elf(data):
        raise LoaderError(f"{name}: not an ELF file (no \\x7fELF magic)")
    if len(data) < 16:
        raise LoaderError(f"{name}: truncated ELF header")
    elf_class, encoding = data[EI_CLASS], data[EI_DATA]
    if elf_class not in EHDR:
        raise LoaderError(f"{name}: unknown ELF class {elf_class}")
    if encoding != ELFDATA2LSB:
        raise LoaderError(f"{name}: big-endian ELF; x86 kernels are little-endian")
    ehdr = EHDR[elf_class]
    if len(data) < 16 + ehdr.size:
        raise LoaderError(f"{name}: truncated ELF header")
    (_type, machine, _version, entry, phoff, _shoff, _flags, _ehsize, phentsize,
     phnum) = ehdr.unpack_from(data, 16)
    if machine not in (EM_386, EM_X86_64):
        raise LoaderError(f"{name}: ELF for machine {machine}, not x86 (3) or x86-64 (62)")
    segments = _parse_program_headers(data, name, elf_class, phoff, phentsize, phnum)
    return ElfFile(data, elf_class, machine, entry, segments)


def _parse_program_headers(data, name, elf_class, phoff, phentsize, phnum) -> list[Segment]:
    phdr = PHDR64 if elf_class == ELFCLASS64 else PHDR32
    if phnum and phentsize < phdr.size:
        raise LoaderError(f"{name}: program header size {phentsize} is too small")
    if phoff + phnum * phentsize > len(data):
        raise LoaderError(f"{name}: truncated ELF (program headers end past the file)")
    segments = []
    for i in range(phnum):
        fields = phdr.unpack_from(data, phoff + i * phentsize)
        if elf_class == ELFCLASS64:
            p_type, _flags, offset, vaddr, paddr, filesz, memsz, _align = fields
        else:
            p_type, offset, vaddr, paddr, filesz, memsz, _flags, _align = fields
        if p_type in (PT_LOAD, PT_NOTE) and offset + filesz > len(data):
            raise LoaderError(f"{name}: truncated ELF (segment {i} ends past the file)")
        if p_type == PT_LOAD and filesz > memsz:
            raise LoaderError(f"{name}: segment {i} has filesz > memsz")
        segments.append(Segment(p_type, offset, vaddr, paddr, filesz, memsz))
    return segments


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _parse_notes(blob: bytes) -> list[Note]:
    """Split a PT_NOTE segment into notes (each name and desc padded to 4 bytes)."""
    notes, pos = [], 0
    while pos + NOTE_HEADER.size <= len(blob):
        namesz, descsz, note_type = NOTE_HEADER.unpack_from(blob, pos)
        pos += NOTE_HEADER.size
        name_end = pos + namesz
        desc_start = pos + _align4(namesz)
        desc_end = desc_start + descsz
        if desc_end > len(blob):
            break  # a malformed note ends the list; the loader reports what is missing
        notes.append(Note(blob[pos:name_end].rstrip(b"\0"), note_type, blob[desc_start:desc_end]))
        pos = desc_start + _align4(descsz)
    return notes
