"""Host memory of a running process, as the kernel accounts it in /proc/PID/.

    smaps          one block per mapping: its address range, then "Rss: N kB", "Pss: N kB", ...
    smaps_rollup   the same fields summed over every mapping of the process
    pagemap        one 64-bit entry per virtual page: present? a file's page? (proc(5))
    task/*/children  the process's children, listed per thread

RSS counts every resident page a process maps; PSS (proportional set size)
counts a page shared by k processes as 1/k in each, so PSS summed over
processes is what they cost the host together.  pykvm's guest RAM is found by
the name its mappings carry: /dev/zero for a booted guest (pykvm.vm.memory's
ZERO_FILE), the snapshot's memory.bin for a restored one.  Not by size: an
anonymous mapping can merge with a neighbouring one, and then none has the
guest's size.  Another VMM's anonymous guest RAM is found by size (mapping_of_size).

Used by tests/bench/ (bench_snapshot.py, bench_vmm_memory.py, bench_density.py,
bench_container_memory.py) and tests/kvm/test_snapshot.py.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["KIB", "Mapping", "smaps", "named_mappings", "guest_ram", "mapping_of_size",
           "written_guest_pages", "rollup", "pss_kib", "process_tree", "threads"]

KIB = 1024
PAGE = 4096
PAGEMAP_PRESENT = 1 << 63           # proc(5), /proc/PID/pagemap: the page is in RAM
PAGEMAP_FILE = 1 << 61              # ... and is a file's page (or shared anonymous memory)


@dataclass
class Mapping:
    """One block of /proc/PID/smaps: where a mapping starts, its size, the offset into its
    file, its file or [name] ("" if anonymous), and its kB fields."""

    start: int
    size_kib: int
    offset: int
    name: str
    fields: dict[str, int] = field(default_factory=dict)


def _kib_field(parts: list[str]) -> tuple[str, int] | None:
    """("Rss", 1234) for a line "Rss:   1234 kB", None for any other line."""
    if parts[0].endswith(":") and len(parts) >= 2 and parts[1].isdigit():
        return parts[0][:-1], int(parts[1])
    return None


def smaps(pid: int) -> list[Mapping]:
    """Every mapping of `pid`, in address order."""
    found: list[Mapping] = []
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if "-" in parts[0] and not parts[0].endswith(":"):      # "start-end perms offset dev inode [name]"
            start, end = (int(x, 16) for x in parts[0].split("-"))
            found.append(Mapping(start, (end - start) // KIB, int(parts[2], 16), " ".join(parts[5:])))
        elif found and (kib := _kib_field(parts)):
            found[-1].fields[kib[0]] = kib[1]
    return found


def named_mappings(pid: int, name: str) -> list[Mapping]:
    """`pid`'s mappings of the file `name` (a path as /proc/PID/maps shows it)."""
    return [mapping for mapping in smaps(pid) if mapping.name == name]


def guest_ram(pid: int, name: str) -> dict[str, int]:
    """The smaps fields (kB) of a pykvm's guest RAM, summed over its regions: the mappings
    named `name` (ZERO_FILE for a booted guest, memory.bin's path for a restored one);
    {} if it has none."""
    fields: dict[str, int] = {}
    for mapping in named_mappings(pid, name):
        for key, kib in mapping.fields.items():
            fields[key] = fields.get(key, 0) + kib
    return fields


def mapping_of_size(pid: int, size_kib: int) -> list[Mapping]:
    """`pid`'s anonymous mappings of exactly `size_kib`: a VMM's guest RAM where it has no name
    (QEMU's), unless it merged with a neighbour."""
    return [mapping for mapping in smaps(pid) if mapping.size_kib == size_kib and not mapping.name]


def written_guest_pages(pid: int, name: str) -> list[int]:
    """The pages of the file `name` whose page in `pid` is its own anonymous copy: in a mapping
    of a file made MAP_PRIVATE (a restored guest's RAM, memory.bin), the pages copied on a
    write.  Numbered by their place in the file: for RAM below the MMIO gap, guest page numbers."""
    written = []
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for mapping in named_mappings(pid, name):
            pages = mapping.size_kib * KIB // PAGE
            pagemap.seek(mapping.start // PAGE * 8)
            entries = struct.unpack(f"<{pages}Q", pagemap.read(pages * 8))
            written += [mapping.offset // PAGE + page for page, entry in enumerate(entries)
                        if entry & PAGEMAP_PRESENT and not entry & PAGEMAP_FILE]
    return sorted(written)


def rollup(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup: the kB fields summed over all of the process's mappings."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if kib := _kib_field(line.split()):
            fields[kib[0]] = kib[1]
    return fields


def pss_kib(pid: int) -> int:
    pss = rollup(pid).get("Pss")
    if pss is None:
        raise AssertionError(f"no Pss in /proc/{pid}/smaps_rollup")
    return pss


def threads(pid: int) -> int:
    """How many threads `pid` has (the main one included)."""
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (children of any of its threads), parents first."""
    tree = [pid]
    for parent in tree:             # grows as we go: a breadth-first walk
        for task in Path(f"/proc/{parent}/task").iterdir():
            tree += [int(child) for child in (task / "children").read_text().split()]
    return tree
