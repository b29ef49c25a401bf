#!/usr/bin/env python3
"""Where a Linux boot's VM exits go: pykvm vs QEMU -M microvm, by reason, side by side.

bench_linux_boot.py counts every exit of a boot to the shell's prompt (KVM's
"exits" statistic).  Most of them never reach the VMM: KVM handles them itself
(a HLT, a LAPIC timer write, a fault on guest RAM that is not mapped yet).
This script boots the same kernel and initramfs once per VMM (bench_linux_boot's
command lines) and, when the prompt shows, reads what the host's KVM recorded:

  exit reasons  the kvm:kvm_exit tracepoint, counted by its exit_reason field
                (a tracefs "hist" trigger: the kernel keeps one counter per
                value, nothing is logged); the names come from the event's own
                format file (SVM: AMD APM vol. 2, appendix C; VMX: Intel SDM
                vol. 3, appendix C)
  ports, MSRs   kvm:kvm_pio by port, kvm:kvm_msr by MSR number, kvm:kvm_mmio by
  MMIO, vectors address and kvm:kvm_inj_virq by vector: what the I/O, MSR and
                NPF exits were for, and which interrupts woke the guest
  statistics    the VM's KVM statistics in debugfs (/sys/kernel/debug/kvm/PID-FD/:
                halt_exits, irq_window_exits, pf_taken, pages_4k, pages_2m, ...;
                the same counters KVM_GET_STATS_FD and QMP query-stats give)
  guest's view  /proc/cpuinfo's flags the two guests differ in, and the kernel's
                log lines about clocks and timers

It needs root (tracefs, debugfs) and hardware-style KVM; on PVM-backed KVM run
it in the L1 lane, where it is run with bench_linux_boot.py:

    python tests/hw/lane.py --bench linux_boot_exits [-- --console virtio,ttyS0]
    .venv/bin/python tests/bench/bench_linux_boot_exits.py [--console virtio] [--runs 1]

With --runs N each VMM boots N times and each count is the median of the N.
"""
from __future__ import annotations

import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
from bench_linux_boot import CMDLINES, PROMPT, can_measure, parse_arguments, pykvm_cmd, qemu_cmd  # noqa: E402
from linux_guest import SerialSession  # noqa: E402

TRACING = Path("/sys/kernel/tracing")
DEBUGFS = Path("/sys/kernel/debug")
KVM_DEBUGFS = DEBUGFS / "kvm"
# tracepoint -> the fields its counts are kept by (one hist trigger each)
HISTOGRAMS = {
    "kvm_exit": ("exit_reason", "isa"),
    "kvm_pio": ("port", "rw"),
    "kvm_msr": ("ecx", "write"),
    "kvm_mmio": ("gpa", "type"),
    "kvm_inj_virq": ("irq",),
}
# What the guest is asked at the prompt, after the counts are read.  The end marker is
# typed with quotes in it, so the echo of the typed line does not match it.
GUEST_QUESTIONS = ("echo; grep -m1 ^flags /proc/cpuinfo; "
                   "dmesg | grep -i -E 'clocksource|tsc|apic|timer|pit|hpet|kvm' ; echo @@e''nd")
END_MARKER = "@@end"
STATS_SHOWN = ("exits", "halt_exits", "halt_wakeup", "irq_window_exits", "irq_exits", "io_exits",
               "mmio_exits", "insn_emulation", "hypercalls", "irq_injections", "req_event",
               "pf_taken", "pf_fixed", "pf_guest", "pf_spurious", "pf_fast", "pf_mmio_spte_created",
               "tlb_flush", "invlpg", "pages_4k", "pages_2m", "pages_1g", "signal_exits",
               "request_irq_exits", "nmi_window_exits", "fpu_reload", "host_state_reload")


def mount_once(path: Path, fstype: str) -> None:
    """Mount tracefs or debugfs at `path` unless something is mounted there already."""
    if not any(line.split()[1] == str(path) for line in Path("/proc/mounts").read_text().splitlines()):
        subprocess.run(["mount", "-t", fstype, fstype, str(path)], check=True)


def trigger_file(event: str) -> Path:
    return TRACING / "events" / "kvm" / event / "trigger"


def hist_spec(keys: tuple[str, ...]) -> str:
    return f"hist:keys={','.join(keys)}:size=8192"


def event_fields(event: str) -> set[str]:
    """The field names of a kvm tracepoint, from lines such as `field:unsigned int vector;`."""
    text = (TRACING / "events" / "kvm" / event / "format").read_text()
    return set(re.findall(r"field:[^;]*?(\w+)(?:\[\d*\])?;", text))


def histogram_keys(event: str) -> tuple[str, ...]:
    """HISTOGRAMS' keys for `event`; kvm_inj_virq's field is `irq` in older kernels."""
    if event == "kvm_inj_virq" and "vector" in event_fields(event):
        return ("vector",)
    return HISTOGRAMS[event]


def start_counting() -> None:
    for event in HISTOGRAMS:
        try:
            trigger_file(event).write_text(hist_spec(histogram_keys(event)) + "\n")
        except OSError as e:
            print(f"not counted: {event} ({e})")


def stop_counting() -> None:
    for event in HISTOGRAMS:
        try:
            trigger_file(event).write_text("!" + hist_spec(histogram_keys(event)) + "\n")
        except OSError:
            pass                           # never started (see start_counting)


def read_histogram(event: str) -> dict[tuple[int, ...], int]:
    return parse_histogram((TRACING / "events" / "kvm" / event / "hist").read_text())


def parse_histogram(text: str) -> dict[tuple[int, ...], int]:
    """{(key values...): hits} from a hist trigger's output, lines such as
    `{ port:         64, rw:          1 } hitcount:        120`."""
    counts = {}
    for keys, hits in re.findall(r"\{(.*?)\}\s*hitcount:\s*(\d+)", text):
        values = tuple(int(part.split(":")[1]) for part in keys.split(","))
        counts[values] = int(hits)
    return counts


def exit_reason_names() -> dict[tuple[int, int], str]:
    return parse_exit_reason_names((TRACING / "events" / "kvm" / "kvm_exit" / "format").read_text())


def parse_exit_reason_names(fmt: str) -> dict[tuple[int, int], str]:
    """{(isa, code): name} from kvm_exit's print format, which lists VMX's names first,
    then SVM's: `__print_symbolic(..., { 0x078, "hlt" }, ...)`."""
    names = {}
    for isa, text in zip((1, 2), fmt.split("__print_symbolic")[1:3]):
        for code, name in re.findall(r'\{\s*(0x[0-9a-fA-F]+|\d+)\s*,\s*"(\w+)"\s*\}', text):
            names[(isa, int(code, 0))] = name
    return names


def vm_statistics() -> dict[str, int]:
    """The KVM statistics of every VM now running (vCPUs summed in each VM's debugfs directory,
    PID-FD, then VMs summed: a VMM may hold more than one VM, and nothing else runs a VM here)."""
    stats: dict[str, int] = {}
    for vm in KVM_DEBUGFS.iterdir():
        if not (vm.is_dir() and "-" in vm.name):
            continue
        for f in vm.iterdir():
            try:
                stats[f.name] = stats.get(f.name, 0) + int(f.read_text().split()[0])
            except (ValueError, IndexError, OSError):
                pass                       # a directory (vcpuN) or not a counter
    return stats


def breakdown(argv: list[str]) -> tuple[dict[str, dict], str]:
    """Boot `argv` to the prompt; (counts by table, the guest's answers to GUEST_QUESTIONS)."""
    names = exit_reason_names()
    start_counting()
    try:
        with SerialSession(argv) as vm:
            vm.expect(PROMPT, timeout=300)
            exits = {}
            for (code, isa), hits in read_histogram("kvm_exit").items():
                reason = names.get((isa, code), f"0x{code:x}")
                exits[reason] = exits.get(reason, 0) + hits
            counts = {
                "exit reason (kvm:kvm_exit)": exits,
                "port I/O (kvm:kvm_pio)": {f"port 0x{port:x} {('in', 'out')[rw]}": n
                                           for (port, rw), n in read_histogram("kvm_pio").items()},
                "MSR (kvm:kvm_msr)": {f"MSR 0x{msr:x} {('read', 'write')[w]}": n
                                      for (msr, w), n in read_histogram("kvm_msr").items()},
                "MMIO (kvm:kvm_mmio)": {f"0x{gpa:x} {kind}": n for (gpa, kind), n
                                        in read_histogram("kvm_mmio").items()},
                "injected vector (kvm:kvm_inj_virq)": {f"vector 0x{v:x}": n for (v,), n
                                                       in read_histogram("kvm_inj_virq").items()},
                "KVM statistics (debugfs)": vm_statistics(),
            }
            stop_counting()                # the questions below are not counted
            at = len(vm.output)
            vm.send(GUEST_QUESTIONS)
            end = vm.expect(END_MARKER, timeout=60, start=at)
            answers = vm.output[at:end].decode(errors="replace")
            vm.send("poweroff -f")
            vm.wait(timeout=120)
    finally:
        stop_counting()                    # again, for a boot that failed on the way
    return counts, answers


def median_counts(runs: list[dict[str, dict]]) -> dict[str, dict]:
    """Each count's median over the runs (a count missing from a run is 0 there)."""
    merged = {}
    for table in runs[0]:
        keys = set().union(*(run[table] for run in runs))
        merged[table] = {k: statistics.median(run[table].get(k, 0) for run in runs) for k in keys}
    return merged


def flags(answers: str) -> set[str]:
    line = next((ln for ln in answers.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def print_side_by_side(title: str, ours: dict, theirs: dict, only: tuple[str, ...] = (),
                       limit: int = 25) -> None:
    """The keys both sides have, biggest first (by the larger of the two); `only` keeps those keys,
    in that order; rows past `limit` are summed into one."""
    keys = [k for k in only if k in ours or k in theirs] if only else \
        sorted(set(ours) | set(theirs), key=lambda k: -max(ours.get(k, 0), theirs.get(k, 0)))
    print(f"\n{title:<44} {'pykvm':>10} {'qemu':>10}")
    for k in keys[:limit]:
        print(f"  {k:<42} {ours.get(k, 0):>10g} {theirs.get(k, 0):>10g}")
    if rest := keys[limit:]:
        print(f"  {f'({len(rest)} more)':<42} {sum(ours.get(k, 0) for k in rest):>10g} "
              f"{sum(theirs.get(k, 0) for k in rest):>10g}")


def main() -> None:
    args, consoles = parse_arguments(__doc__.splitlines()[0], runs=1,
                                     runs_help="boots per VMM (counts: medians)", consoles="virtio,ttyS0")
    if not can_measure(args.kernel, args.initrd, "linux_boot_exits"):
        return
    mount_once(TRACING, "tracefs")
    mount_once(DEBUGFS, "debugfs")
    files = (args.kernel, args.initrd, args.mem)
    for console in consoles:
        counts, answers = {}, {}
        for name, command in (("pykvm", pykvm_cmd), ("qemu", qemu_cmd)):
            runs = []
            for _ in range(args.runs):
                found, answers[name] = breakdown(command(*files, console))
                runs.append(found)
            counts[name] = median_counts(runs)
        print(f"\n=== console {console}: {CMDLINES[console]!r}; counts at the prompt, "
              f"median of {args.runs} boot(s) each")
        for table in counts["pykvm"]:
            if table.startswith("KVM statistics"):
                print_side_by_side(table, counts["pykvm"][table], counts["qemu"][table],
                                   only=STATS_SHOWN, limit=len(STATS_SHOWN))
            else:
                print_side_by_side(table, counts["pykvm"][table], counts["qemu"][table])
        ours, theirs = flags(answers["pykvm"]), flags(answers["qemu"])
        print(f"\nCPU flags only pykvm's guest has: {' '.join(sorted(ours - theirs)) or '-'}")
        print(f"CPU flags only QEMU's guest has:  {' '.join(sorted(theirs - ours)) or '-'}")
        for name, text in answers.items():
            print(f"\n{name} guest's log on clocks and timers:")
            for line in text.splitlines():
                if not line.startswith("flags") and line.strip() and "@@" not in line:
                    print(f"  {line.strip()}")


if __name__ == "__main__":
    main()
