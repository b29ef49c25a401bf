"""Host memory of a running process, as the kernel accounts it in /proc/PID/.

    smaps          one block per mapping: its address range, then "Rss: N kB", "Pss: N kB", ...
    smaps_rollup   the same fields summed over every mapping of the process
    pagemap        one 64-bit entry per virtual page: present? a file's page? (proc(5))
    task/*/children  the process's children, listed per thread

RSS counts every resident page a process maps; PSS (proportional set size)
counts a page shared by k processes as 1/k in each, so PSS summed over
processes is what they cost the host together.  A VMM's guest RAM is one
mapping of exactly the guest's size, which the benchmarks find by size.

Used by tests/bench/ (bench_snapshot.py, bench_vmm_memory.py, bench_density.py,
bench_container_memory.py) and tests/kvm/test_snapshot.py.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["KIB", "Mapping", "smaps", "guest_mapping", "written_guest_pages", "rollup", "pss_kib",
           "process_tree", "threads"]

KIB = 1024
PAGE = 4096
PAGEMAP_PRESENT = 1 << 63           # proc(5), /proc/PID/pagemap: the page is in RAM
PAGEMAP_FILE = 1 << 61              # ... and is a file's page (or shared anonymous memory)


@dataclass
class Mapping:
    """One block of /proc/PID/smaps: a mapping's size, its file or [name] ("" if anonymous), its kB fields."""

    size_kib: int
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
            found.append(Mapping((end - start) // KIB, " ".join(parts[5:])))
        elif found and (kib := _kib_field(parts)):
            found[-1].fields[kib[0]] = kib[1]
    return found


def guest_mapping(pid: int, size_kib: int) -> dict[str, int]:
    """The smaps fields (kB) of the mapping that is guest RAM: the one of exactly the guest's size."""
    fields: dict[str, int] = {}
    for mapping in smaps(pid):
        if mapping.size_kib == size_kib:
            for name, kib in mapping.fields.items():
                fields[name] = fields.get(name, 0) + kib
    return fields


def _mapping_start(pid: int, size_kib: int) -> int:
    """The address of `pid`'s mapping of exactly `size_kib` (guest RAM, as guest_mapping finds it)."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        start, end = (int(x, 16) for x in line.split()[0].split("-"))
        if (end - start) // KIB == size_kib:
            return start
    raise AssertionError(f"no mapping of {size_kib} kB in /proc/{pid}/maps")


def written_guest_pages(pid: int, size_kib: int) -> list[int]:
    """The guest page numbers whose page in `pid` is its own anonymous copy: in a mapping of a
    file made MAP_PRIVATE (a restored guest's RAM), the pages copied on a write."""
    start = _mapping_start(pid, size_kib)
    pages = size_kib * KIB // PAGE
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        pagemap.seek(start // PAGE * 8)
        entries = struct.unpack(f"<{pages}Q", pagemap.read(pages * 8))
    return [page for page, entry in enumerate(entries) if entry & PAGEMAP_PRESENT and not entry & PAGEMAP_FILE]


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
