"""bench_linux_boot_exits.py's readers of tracefs: a hist trigger's counts and kvm_exit's
exit reason names, on text as Linux 6.1 writes it (arch/x86/kvm/trace.h, kernel/trace/trace_events_hist.c)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_linux_boot_exits import parse_exit_reason_names, parse_histogram  # noqa: E402

HIST = """# event histogram
#
# trigger info: hist:keys=port,rw:vals=hitcount:sort=hitcount:size=8192 [active]
#

{ port:         64, rw:          1 } hitcount:          4
{ port:       1016, rw:          1 } hitcount:      21917

Totals:
    Hits: 21921
    Entries: 2
    Dropped: 0
"""

FORMAT = """name: kvm_exit
print fmt: "vcpu %u reason %s%s%s rip 0x%lx", REC->vcpu_id, (REC->isa == 1) ?
__print_symbolic(REC->exit_reason & 0xffff, { 0, "EXCEPTION_NMI" }, { 12, "HLT" }, { 48, "EPT_VIOLATION" }) :
__print_symbolic(REC->exit_reason, { 0x078, "hlt" }, { 0x07b, "io" }, { 0x400, "npf" }),
(REC->isa == 1 && REC->exit_reason & ~0xffff) ? " " : "", REC->guest_rip
"""


def test_a_histogram_is_read_as_counts_by_key_values():
    assert parse_histogram(HIST) == {(64, 1): 4, (1016, 1): 21917}


def test_exit_reasons_are_named_per_instruction_set():
    names = parse_exit_reason_names(FORMAT)
    assert names[(1, 12)] == "HLT" and names[(1, 48)] == "EPT_VIOLATION"     # VMX: isa 1
    assert names[(2, 0x78)] == "hlt" and names[(2, 0x400)] == "npf"          # SVM: isa 2
    assert (2, 12) not in names
