"""The report as the seed's table: one row per property, VM beside container.

`rows(report)` is the single source of the cells; `text_table` and
`markdown_table` only lay them out, so the two never disagree.  `explain`
turns each property's "how" into the notes `--explain` prints.
"""
from __future__ import annotations

from pykvm.sizes import format_size

__all__ = ["rows", "text_table", "markdown_table", "explain", "header_lines", "NOT_MEASURED", "NOT_OBSERVED"]

NOT_MEASURED = "*"      # marks a cell that holds by construction, not by looking (see --explain)
NOTE = f"{NOT_MEASURED} holds by construction, not measured inside"


def seconds(stats: dict) -> str:
    """'0.41 s (0.39-0.45)': median, then min-max."""
    return f"{stats['median']:.2f} s ({stats['min']:.2f}-{stats['max']:.2f})"


def megabytes(stats: dict) -> str:
    return f"{stats['median'] / 2**20:.1f} MiB ({stats['min'] / 2**20:.1f}-{stats['max'] / 2**20:.1f})"


NOT_OBSERVED = "not observed"


def _mark(item: dict, text: str) -> str:
    return text if item.get("measured", True) else text + NOT_MEASURED


def _observed(item: dict) -> bool:
    """False for what the workload could not look at (the hello image has no tools)."""
    return item.get("measured", True) or item.get("structural", True)


def _kernel(side: dict) -> str:
    os_row = side["os"]
    return NOT_OBSERVED if os_row["kernel"] is None else os_row["kernel"]


def _same(side: dict) -> str:
    os_row = side["os"]
    same = os_row["same_as_host"]
    if same is None:
        return NOT_OBSERVED
    basis = "boot_id" if os_row.get("boot_id") else "name and version"
    return f"{'yes' if same else 'no'} ({'same' if same else 'other'} {basis})"


def _size(side: dict) -> str:
    size = side["size"]
    parts = size["parts"]
    if "layers" in parts:
        return (f"{format_size(size['bytes'])} ({parts['layers']} layer(s) unpacked; "
                f"{format_size(parts['compressed'])} compressed)")
    return f"{format_size(size['bytes'])} ({' + '.join(parts)})"


def _memory(side: dict) -> str:
    size = side["size"]
    seen = NOT_OBSERVED if size["memory_seen_bytes"] is None else format_size(size["memory_seen_bytes"])
    if size["memory_given_bytes"] is None:
        return f"no limit; sees: {seen} (the host has {format_size(size['host_memory_bytes'])})"
    return f"given {format_size(size['memory_given_bytes'])}, sees {seen}"


def _items(item: dict, host: bool = False) -> str:
    value = item["host" if host else "inside"]
    if isinstance(value, list):
        return f"{len(value)}" + (f": {' '.join(value)}" if value else "")
    if isinstance(value, dict):
        return f"{value['count']}" + (f", / is {value['root_type']}" if value["root_type"] else "")
    return "none" if value is None else str(value)


def _isolation(side: dict, name: str) -> str:
    item = side["isolation"][name]
    host = f"(host: {_items(item, host=True)})"
    return _mark(item, f"{_items(item)} {host}") if _observed(item) else f"{NOT_OBSERVED} {host}"


def _boundary(side: dict) -> str:
    b = side["isolation"]["boundary"]
    if not _observed(b):
        return f"{b['kind']} ({NOT_OBSERVED})"
    if "namespaces_own" in b:
        return f"namespaces of the host's kernel: {len(b['namespaces_own'])} of " \
               f"{len(b['namespaces_own']) + len(b['namespaces_shared'])} its own"
    seen = f"; CPUID says {b['hypervisor']}" if b.get("hypervisor") else ""
    return _mark(b, f"own kernel on {b['backend']}{seen}")


ROWS = [
    ("OS requirement: kernel seen inside", _kernel),
    ("  the host's running kernel?", _same),
    ("Size: bytes needed to start", _size),
    ("  memory", _memory),
    ("Startup: launch -> first line", lambda s: seconds(s["startup"]["first_line_s"])),
    ("  launch -> exit", lambda s: seconds(s["startup"]["exit_s"])),
    ("Isolation: processes seen", lambda s: _isolation(s, "processes")),
    ("  network interfaces", lambda s: _isolation(s, "interfaces")),
    ("  mounts", lambda s: _isolation(s, "mounts")),
    ("  hostname", lambda s: _isolation(s, "hostname")),
    ("  boundary", _boundary),
    ("Resources: peak RSS", lambda s: megabytes(s["resources"]["peak_rss_bytes"])),
    ("  CPU time (user+sys)", lambda s: seconds(s["resources"]["cpu_s"])),
]


def rows(report: dict) -> list[tuple[str, str, str]]:
    """(property, VM cell, container cell) for every row of the table."""
    return [(label, cell(report["vm"]), cell(report["container"])) for label, cell in ROWS]


def header_lines(report: dict) -> list[str]:
    host = report["host"]
    base = report["baseline"]
    return [
        f"pykvm compare: {report['runs']} run(s) of each side on {host['hostname']} "
        f"({host['kernel']}, KVM: {host['kvm']}); times are median (min-max)",
        f"  VM:        {report['vm']['command']}",
        f"  container: {report['container']['command']}",
        f"  baseline:  {base['command']} exits in {seconds(base['startup']['exit_s'])}, "
        f"peak RSS {megabytes(base['resources']['peak_rss_bytes'])}: both sides include this Python front-end",
        f"  peak RSS cannot be below the spawner's {megabytes(base['resources']['floor_rss_bytes'])} "
        "(see --explain)",
    ]


def _titles(report: dict) -> tuple[str, str, str]:
    return ("property", f"VM ({report['vm']['name']})", f"container ({report['container']['name']})")


def text_table(report: dict) -> str:
    table = [_titles(report), *rows(report)]
    widths = [max(len(r[i]) for r in table) for i in range(2)]
    lines = header_lines(report) + [""]
    for n, (a, b, c) in enumerate(table):
        lines.append(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}".rstrip())
        if n == 0:
            lines.append("-" * (widths[0] + widths[1] + 4 + max(len(r[2]) for r in table)))
    lines += ["", f"{NOTE} (--explain says why)"]
    return "\n".join(lines)


def markdown_table(report: dict) -> str:
    def cells(r):
        return "| " + " | ".join(_md(c.strip()) for c in r) + " |"
    lines = [f"> {line.strip()}" + "  " for line in header_lines(report)] + [""]
    lines += [cells(_titles(report)), "|---|---|---|"] + [cells(r) for r in rows(report)]
    lines += ["", _md(NOTE) + " (`--explain` says why)"]
    return "\n".join(lines)


def _md(text: str) -> str:
    """Escape the characters Markdown would read as table or emphasis syntax."""
    return text.replace("|", "\\|").replace("*", "\\*")


def explain(report: dict) -> str:
    """How each number was measured, side by side, from the report's own "how" fields."""
    out = ["How each number was measured:"]
    for side in ("vm", "container"):
        s = report[side]
        out.append(f"\n{side} ({s['name']}):")
        out.append(f"  OS requirement: {s['os']['how']}")
        out.append(f"  size: {s['size']['how']}")
        out.append(f"  startup: {s['startup']['how']}")
        for name, item in s["isolation"].items():
            kind = "measured" if item["measured"] else (
                "structural, not measured" if item.get("structural", True) else "not observed")
            out.append(f"  isolation/{name} ({kind}): {item['how']}")
        out.append(f"  resources: {s['resources']['how']}")
    out.append(f"\nbaseline: `{report['baseline']['command']}`, run as often as each side, "
               "measured the same way: the part of both sides' time and memory that is Python itself.")
    return "\n".join(out)
