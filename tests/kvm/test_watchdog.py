"""The watchdog: a guest halted with interrupts off, or spinning without exits, is named.

With the in-kernel irqchip KVM handles HLT itself, so without the watchdog
each of these guests would leave pykvm waiting forever, silently.  Each test
has a deadline: a guest the watchdog misses fails with DEADLINE_STATUS.
"""
import logging
import re
import threading
import time

import pytest

from pykvm.errors import GuestError
from pykvm.vm.machine import Machine, MachineConfig
from guestasm import assemble
from vmkit import DEADLINE_STATUS, run_guest

pytestmark = pytest.mark.kvm

DEADLINE = 60      # seconds; the watchdog acts after a few


def stop_reason(tmp_path, source: str, **config) -> str:
    """Run `source` (real mode); it must stop with a GuestError, whose message is returned."""
    with pytest.raises(GuestError) as info:
        status, _ = run_guest(tmp_path, source, deadline=DEADLINE, **config)
        pytest.fail(f"the guest ran until the deadline (status {status})"
                    if status == DEADLINE_STATUS else f"the guest stopped with status {status}")
    return str(info.value)


def test_cli_hlt_stops_with_the_reason_and_registers(tmp_path):
    message = stop_reason(tmp_path, """
        mov $0x1234, %ax
        cli
        hlt
    """)
    assert message.startswith("VM stopped: the guest halted with interrupts disabled"), message
    assert "rip=0000000000001005" in message, message          # just past the hlt
    assert "rax=0000000000001234" in message, message


def test_jmp_self_is_reported_and_stops_at_the_stall_timeout(tmp_path):
    message = stop_reason(tmp_path, "jmp .", stall_timeout=1)
    assert "no VM exit for" in message, message
    assert "vCPU 0 runs in real mode at 0000:1000, code eb fe" in message, message
    assert "jmp ." in message and "rip=0000000000001000" in message, message


def test_chapter3_triple_fault_exercise_gives_feedback(tmp_path):
    """docs/03, exercise 4: a real-mode IDT of limit 0, then ud2.  Hardware KVM checks the
    limit (#UD -> #GP -> #DF -> triple fault); PVM's emulator dispatches #UD through the
    empty vector 6 at 0000:0000 and runs through zeroed memory without exits."""
    from tiers import kvm_flavour

    message = stop_reason(tmp_path, """
        lidt idt
        ud2
    idt: .word 0
         .long 0
    """, stall_timeout=1)
    assert "rip=" in message, message
    if kvm_flavour() == "pvm":      # where it is when looked at varies; mostly zeroed memory
        assert "no VM exit for" in message and "runs in real mode at 0000:" in message, message
    else:
        assert "triple fault" in message, message


def test_idle_guest_with_interrupts_on_is_left_alone(tmp_path):
    """`sti; hlt` waits for an interrupt: the watchdog looks, and lets it wait."""
    kernel = tmp_path / "idle.bin"
    kernel.write_bytes(assemble("sti\nhlt\njmp .-1"))
    with Machine(MachineConfig(kernel=kernel, kernel_format="raw", output=lambda data: None)) as machine:
        def stop_after_two_looks():
            for _ in range(DEADLINE * 10):
                if machine.watchdog is not None and machine.watchdog.looks >= 2:
                    break
                threading.Event().wait(0.1)
            machine.stop(0)
        threading.Thread(target=stop_after_two_looks, daemon=True).start()
        assert machine.run() == 0
        assert machine.watchdog.looks >= 2, machine.watchdog.looks


@pytest.mark.slow
def test_spinning_guest_is_reported_while_it_runs(tmp_path, caplog):
    """Without a stall timeout a spinning guest keeps running, with a report on stderr."""
    kernel = tmp_path / "spin.bin"
    kernel.write_bytes(assemble("jmp ."))
    caplog.set_level(logging.WARNING, logger="pykvm.vm.watchdog")
    with Machine(MachineConfig(kernel=kernel, kernel_format="raw", output=lambda data: None)) as machine:
        def stop_after_a_report():
            for _ in range(DEADLINE * 10):
                if caplog.records:
                    break
                threading.Event().wait(0.1)
            machine.stop(0)
        threading.Thread(target=stop_after_a_report, daemon=True).start()
        assert machine.run() == 0
    reports = [r.getMessage() for r in caplog.records]
    assert reports and re.match(r"pykvm: no VM exit for \d+ s; vCPU 0 runs in real mode", reports[0]), reports


def test_exits_answered_in_c_count_as_progress():
    """A vCPU whose exits are all answered in C (Vcpu.answer_in_c) never reaches the run loop,
    yet it is not silent: the watchdog counts those exits and does not kick it."""
    from pykvm.vm.kvm.bindings import ffi
    from pykvm.vm import watchdog as wd

    for answering in (True, False):
        counts = ffi.new("struct answered_counts *")
        kicked = threading.Event()
        dog = wd.Watchdog(kicked.set, answered=counts)
        dog.start()
        try:
            deadline = time.monotonic() + 2 * wd.LOOK_AFTER + wd.PERIOD   # a look is due by then
            while time.monotonic() < deadline and not kicked.is_set():
                if answering:
                    counts.reads += 1
                    counts.writes += 1
                time.sleep(wd.PERIOD / 5)
        finally:
            dog.stop()
        assert kicked.is_set() is not answering, f"answering={answering}"
