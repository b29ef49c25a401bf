"""One function per row of the seed's table, each returning a plain dict for the report.

Every value comes from this invocation: the host's own facts are read now from
/proc and uname(2), the inside's from the workload's output (workload.py), the
numbers from the runs (measure.py).  Where the inside cannot look, the dict says
so ("measured": false) and why, and gives the value that holds by construction.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from pykvm.comparison.measure import Stats
from pykvm.comparison.workload import Workload, split_sections

__all__ = ["host_facts", "os_requirement", "vm_size", "image_size", "startup", "isolation",
           "resources", "ISOLATION_ITEMS"]

ISOLATION_ITEMS = ("processes", "interfaces", "mounts", "hostname")
KIB = 1024
MIB = 1 << 20
NET_DEV_HEADER_LINES = 2           # /proc/net/dev: two header lines, then "name: counters" per interface
TINY_KERNEL_RE = re.compile(r"^kernel:\s+(.*?)\s*(\(.*\))?$")      # shell.c cmd_info
TINY_MEMORY_RE = re.compile(r"^memory:\s+(\d+) MiB$")              # shell.c cmd_info
TINY_HYPERVISOR_RE = re.compile(r"^hypervisor:\s+(\S+)$")          # shell.c cmd_info: CPUID 0x40000000
LINUX_HYPERVISOR_RE = re.compile(r"Hypervisor detected: (\S+)")    # arch/x86/kernel/cpu/hypervisor.c
BOOT_ID = "/proc/sys/kernel/random/boot_id"     # random(4): a new UUID each time a kernel boots
MEMTOTAL_RE = re.compile(r"^MemTotal:\s+(\d+) kB$")                # proc(5): /proc/meminfo


# --- the host, read now ------------------------------------------------------------------------

def host_facts() -> dict:
    """What the host has, to set against what the inside sees."""
    from pykvm.vm.kvm.system import kvm_backend

    uname = os.uname()
    return {
        "kernel": f"{uname.sysname} {uname.release}",
        "hostname": uname.nodename,
        "boot_id": Path(BOOT_ID).read_text().strip(),
        "processes": sum(1 for entry in os.listdir("/proc") if entry.isdigit()),
        "interfaces": net_dev_names(Path("/proc/net/dev").read_text().splitlines()),
        "mounts": mount_table(Path("/proc/self/mounts").read_text().splitlines()),
        "memory_bytes": meminfo_total(Path("/proc/meminfo").read_text().splitlines()),
        "namespaces": {name: os.readlink(f"/proc/self/ns/{name}") for name in sorted(os.listdir("/proc/self/ns"))},
        "kvm": kvm_backend(),
    }


def net_dev_names(lines: list[str]) -> list[str]:
    """Interface names from /proc/net/dev's lines (proc(5))."""
    return [line.split(":", 1)[0].strip() for line in lines[NET_DEV_HEADER_LINES:] if ":" in line]


def meminfo_total(lines: list[str]) -> int | None:
    for line in lines:
        if match := MEMTOTAL_RE.match(line.strip()):
            return int(match.group(1)) * KIB
    return None


def _sections(workload: Workload, lines: list[str]) -> dict[str, list[str]]:
    return split_sections(lines, workload.prompt)


# --- OS requirement ----------------------------------------------------------------------------

def os_requirement(workload: Workload, lines: list[str], host: dict) -> dict:
    """The kernel the inside reports, and whether it is the very kernel the host runs.

    Same version is not same kernel: a VM may boot the host's own kernel
    package.  The boot_id (random(4)) tells running kernels apart; where the
    inside cannot read one (tiny), name and version decide.
    """
    if "kernel" in workload.unobserved:
        why = workload.unobserved["kernel"].reason
        return {"kernel": None, "same_as_host": None, "measured": False, "how": why}
    sections = _sections(workload, lines)
    kernel = kernel_seen(sections.get("kernel", []))
    boot_id = next((line.strip() for line in sections.get("boot_id", [])), None)
    same_version = None if kernel is None else kernel == host["kernel"]
    return {"kernel": kernel, "host_kernel": host["kernel"], "same_version_as_host": same_version,
            "boot_id": boot_id, "host_boot_id": host["boot_id"],
            "same_as_host": boot_id == host["boot_id"] if boot_id else same_version, "measured": True,
            "how": "the workload's own report from inside: tiny's `info`, or `uname -sr` and "
                   f"{BOOT_ID}; the host's are uname(2) and the same file here.  Same kernel = "
                   "same boot_id (one running kernel); without a boot_id, same name and version"}


def kernel_seen(lines: list[str]) -> str | None:
    """'tiny 1.0' from tiny's `kernel: tiny 1.0 (x86-64)`, or `uname -sr`'s line as it is."""
    for line in lines:
        if match := TINY_KERNEL_RE.match(line.strip()):
            return match.group(1)
    return lines[0].strip() if lines else None


# --- size --------------------------------------------------------------------------------------

def vm_size(files: dict[str, Path], memory_given: int, workload: Workload, lines: list[str]) -> dict:
    """Bytes of the files the VMM loads, the RAM it was given, and the RAM the guest reports."""
    parts = {name: path.stat().st_size for name, path in files.items() if path is not None}
    return {"bytes": sum(parts.values()), "parts": parts, "memory_given_bytes": memory_given,
            "memory_seen_bytes": memory_seen(_sections(workload, lines)),
            "how": "stat(2) of the files the VMM loads (kernel; initrd; --guest image: the image's "
                   "root disk, its apparent size); the memory given is --mem; "
                   "the memory seen is the guest's own report (tiny `info`, Linux /proc/meminfo)"}


def image_size(image, layer_dirs: list[str], workload: Workload, lines: list[str], host: dict) -> dict:
    """Bytes of the image's layers (unpacked, as overlayfs mounts them; and compressed, as stored)."""
    unpacked = sum(tree_bytes(Path(d)) for d in layer_dirs)
    seen = None if "memory" in workload.unobserved else memory_seen(_sections(workload, lines))
    return {"bytes": unpacked, "parts": {"layers": len(layer_dirs), "compressed": image.size},
            "memory_given_bytes": None, "memory_seen_bytes": seen, "host_memory_bytes": host["memory_bytes"],
            "how": "the apparent size of every file in the image's unpacked layers (lstat(2)); "
                   "`compressed` is the manifest's layer and config sizes; no memory limit was set, "
                   "so the container may use the host's RAM, and /proc/meminfo inside says how much"}


def tree_bytes(root: Path) -> int:
    """Sum of lstat sizes of everything under root (symlinks count as the link, not the target)."""
    total = 0
    for folder, dirs, files in os.walk(root):
        total += sum(os.lstat(os.path.join(folder, name)).st_size for name in files)
    return total


def memory_seen(sections: dict[str, list[str]]) -> int | None:
    for line in sections.get("kernel", []):
        if match := TINY_MEMORY_RE.match(line.strip()):
            return int(match.group(1)) * MIB
    return meminfo_total(sections.get("memory", []))


# --- startup and resources ---------------------------------------------------------------------

def startup(samples) -> dict:
    """Launch -> first line, and launch -> exit, over the runs."""
    return {"first_line_s": Stats.of([s.first_line_s for s in samples]).as_dict(),
            "exit_s": Stats.of([s.exit_s for s in samples]).as_dict(),
            "how": "monotonic clock from just before fork+exec of the command to the moment the "
                   "workload's first line was complete on its stdout pipe, and to wait4(2) returning"}


def resources(samples) -> dict:
    """Peak RSS and CPU time of the whole process tree, from wait4(2)'s rusage."""
    return {"peak_rss_bytes": Stats.of([s.peak_rss_bytes for s in samples]).as_dict(),
            "cpu_s": Stats.of([s.cpu_s for s in samples]).as_dict(),
            "floor_rss_bytes": Stats.of([s.floor_rss_bytes for s in samples]).as_dict(),
            "how": "wait4(2) rusage of the command: ru_maxrss is the largest resident set of it "
                   "and every descendant it reaped; CPU is ru_utime + ru_stime summed over them. "
                   "ru_maxrss cannot be below the RSS of the process that forked the command, so a "
                   "small spawner forks it; its own peak is floor_rss_bytes"}


# --- isolation ---------------------------------------------------------------------------------

def isolation(workload: Workload, lines: list[str], host: dict) -> dict:
    """What the inside sees of processes, interfaces, mounts and hostname; and the boundary."""
    sections = _sections(workload, lines)
    items = {name: _isolation_item(name, workload, sections, host) for name in ISOLATION_ITEMS}
    items["boundary"] = (vm_boundary(sections, host) if workload.side == "vm"
                         else namespace_boundary(workload, sections, host))
    return items


def _isolation_item(name: str, workload: Workload, sections: dict, host: dict) -> dict:
    if name in workload.unobserved:
        gap = workload.unobserved[name]
        return {"inside": gap.value, "host": host[name], "measured": False,
                "structural": gap.structural, "how": gap.reason}
    found = sections.get(name, [])
    inside, how = SEEN[name](found)
    return {"inside": inside, "host": host[name], "measured": True, "how": how}


def _processes(lines):
    """Rows of `ps` that start with a PID (busybox and tiny both print a header first)."""
    return (sum(1 for line in lines if line.split() and line.split()[0].isdigit()),
            "rows of `ps` inside (it reads the /proc it can see; tiny's lists its process table); "
            "the host's is the number of PIDs in /proc here")


def _interfaces(lines):
    return net_dev_names(lines), "/proc/net/dev inside vs here"


def _mounts(lines):
    return mount_table(lines), "/proc/mounts inside vs /proc/self/mounts here: how many, and what is at /"


def mount_table(lines: list[str]) -> dict:
    """The number of mounts and what is mounted at / (the last mount there wins), from proc(5)'s mounts."""
    fields = [line.split() for line in lines if len(line.split()) >= 3]
    root = [f for f in fields if f[1] == "/"]
    return {"count": len(fields), "root": root[-1][0] if root else None,
            "root_type": root[-1][2] if root else None}


def _hostname(lines):
    return (lines[0].strip() if lines else None), "`hostname` inside vs uname(2) here"


SEEN = {"processes": _processes, "interfaces": _interfaces, "mounts": _mounts, "hostname": _hostname}


def vm_boundary(sections: dict, host: dict) -> dict:
    """A VM: its own kernel on virtual CPUs; the guest names the hypervisor it found, when it says."""
    hypervisor = hypervisor_seen(sections)
    return {"kind": "virtualization: its own kernel on virtual CPUs",
            "backend": f"KVM ({host['kvm']})",
            "hypervisor": hypervisor,
            "evidence": f"hypervisor seen inside: {hypervisor}" if hypervisor else None,
            "measured": hypervisor is not None,
            "how": "structural: the guest only has what the VMM emulates; measured: the hypervisor "
                   "the guest finds through CPUID leaf 0x40000000 (tiny `info`; Linux logs "
                   "'Hypervisor detected')"}


def hypervisor_seen(sections: dict) -> str | None:
    """'KVMKVMKVM' from tiny's `info`, 'KVM' from a Linux guest's boot log, or None."""
    for line in sections.get("kernel", []):
        if match := TINY_HYPERVISOR_RE.match(line.strip()):
            return match.group(1)
    for line in sections.get("hypervisor", []):
        if match := LINUX_HYPERVISOR_RE.search(line):
            return match.group(1)
    return None


def namespace_boundary(workload: Workload, sections: dict, host: dict) -> dict:
    """A container: namespaces of the one host kernel; which of them differ from the host's."""
    if "namespaces" in workload.unobserved:
        return {"kind": "namespaces on the shared host kernel", "backend": host["kernel"],
                "evidence": None, "measured": False, "structural": False,
                "how": workload.unobserved["namespaces"].reason}
    inside = dict(line.split() for line in sections.get("namespaces", []) if len(line.split()) == 2)
    differ = sorted(name for name, link in inside.items() if host["namespaces"].get(name) != link)
    shared = sorted(name for name in inside if name not in differ)
    return {"kind": "namespaces on the shared host kernel", "backend": host["kernel"],
            "namespaces_own": differ, "namespaces_shared": shared,
            "evidence": f"{len(differ)} of {len(inside)} namespaces differ from the host's",
            "measured": True,
            "how": "readlink of /proc/self/ns/* inside vs here: the same inode means the same namespace"}
