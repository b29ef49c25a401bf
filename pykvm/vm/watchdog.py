"""The vCPU watchdog: say what a guest is doing when it has gone quiet.

With the in-kernel irqchip (KVM_CREATE_IRQCHIP) KVM handles HLT itself: a
halted vCPU sleeps inside KVM_RUN until an interrupt wakes it, and KVM_RUN
does not return (api.rst 5, KVM_EXIT_HLT: "only if KVM_CAP_HLT and no
in-kernel irqchip").  So a guest that ends with `cli; hlt` (the classic first
KVM guest) would leave pykvm waiting forever, without a word.  So would a
guest that spins without exits: `jmp .`, or a real-mode guest that took an
exception through an empty interrupt vector and now runs through zeroed
memory.  The watchdog turns those silences into messages:

    watchdog thread                           vCPU thread (Machine._run_loop)
    every PERIOD: any VM exit since?
    quiet for LOOK_AFTER s: ask, kick  --->   KVM_RUN returns EINTR (Interrupted)
                                              look(): KVM_GET_MP_STATE, registers
                                                HALTED, RFLAGS.IF = 0 -> stop the VM
                                                HALTED, IF = 1        -> idle: fine
                                                RUNNABLE              -> report

Why stop on HALTED with IF = 0: with interrupts disabled only an NMI, an SMI
or an INIT can wake a halted CPU (Intel SDM Vol. 2A, HLT), and only another
CPU sends those.  So a machine stops once every vCPU is halted so (a kernel
parks a spare CPU that way while the others go on); an application
processor still waiting for its start-up IPI (MP state INIT_RECEIVED) is
waiting, not stuck.  The vCPU was still HALTED after a quiet
second, so KVM found no wake-up event pending either (kvm_vcpu_has_events).

The look runs on the vCPU's own thread because vCPU ioctls wait for the
vCPU's lock, which KVM_RUN holds; a look every LOOK_AFTER seconds of quiet
costs one exit.  A RUNNABLE vCPU is reported only after
RUNNING_LOOKS looks in a row found it running: a healthy guest that idles in
`sti; hlt` and takes timer interrupts inside the kernel (which makes no exit to
user space) is halted nearly every time it is looked at.  Reports come after
REPORT_AFTER seconds, then after twice as long each time; with a stall timeout
the VM stops instead once that many quiet seconds have passed.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from pykvm.vm.kvm.bindings import lib

__all__ = ["Watchdog", "PERIOD", "LOOK_AFTER", "REPORT_AFTER", "RUNNING_LOOKS", "describe_vcpu",
           "HALTED_WITH_INTERRUPTS_OFF"]

log = logging.getLogger("pykvm.vm.watchdog")

PERIOD = 0.25          # seconds between the watchdog thread's checks of the exit count
LOOK_AFTER = 1.0       # seconds without a VM exit before the vCPU is looked at (and then each second)
REPORT_AFTER = 5.0     # seconds without a VM exit before the first "no VM exit" report
RUNNING_LOOKS = 3      # looks in a row that found the vCPU running, before it counts as spinning
RFLAGS_IF = 1 << 9     # interrupt enable flag (Intel SDM Vol. 1, 3.4.3)
CR0_PE = 1 << 0        # protected mode
CR0_PG = 1 << 31       # paging: RIP is then a virtual address
EFER_LMA = 1 << 10     # long mode active
CODE_PEEK = 8          # bytes of code shown at CS:RIP
ZEROS_HINT = ("it is running through zeroed memory (00 00 decodes as an `add`): a jump to a "
              "wrong address, or an exception through an empty interrupt vector")
SELF_JUMP_HINT = "a jump to itself (`jmp .`)"
SELF_JUMP = bytes.fromhex("ebfe")
HALTED_WITH_INTERRUPTS_OFF = ("the guest halted with interrupts disabled (hlt with RFLAGS.IF=0): "
                              "nothing can wake it")


class Watchdog:
    """Notices a vCPU without VM exits and has the run loop look at it.

    The run loop counts every exit in `exits` and calls look() on each
    Interrupted exit; `kick` makes the vCPU's KVM_RUN return (immediate_exit
    and a signal: Machine._kick).  `stall_timeout`, if set, is how many
    seconds a running vCPU may go without exits before look() says stop.
    `answered`, the vCPU's `answered_counts`, adds the exits answered in C
    (Vcpu.answer_in_c), which never reach the run loop.
    """

    def __init__(self, kick: Callable[[], None], stall_timeout: float | None = None,
                 answered=None):
        self.exits = 0                   # incremented by the run loop, once per exit
        self._answered = answered
        self.looks = 0                   # how often the vCPU was looked at
        self._kick = kick
        self._stall_timeout = stall_timeout
        self._interrupts = 0             # Interrupted exits: not the guest's doing
        self._asked = False              # set by the watchdog thread, cleared by look()
        self._quiet_since = time.monotonic()   # written by the watchdog thread only
        self._last_ask = 0.0
        self._stretch = self._quiet_since      # the quiet stretch the looks below belong to
        self._running_looks = 0
        self._next_report = REPORT_AFTER
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="pykvm-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def quiet_seconds(self) -> float:
        """How long the guest has gone without a VM exit of its own."""
        return time.monotonic() - self._quiet_since

    # --- the watchdog thread ----------------------------------------------------
    def _watch(self) -> None:
        seen = self._progress()
        while not self._stopping.wait(PERIOD):
            if self._asked:
                continue                 # the run loop has not looked yet
            progress, now = self._progress(), time.monotonic()
            if progress != seen:
                seen, self._quiet_since = progress, now
            elif now - self._quiet_since >= LOOK_AFTER and now - self._last_ask >= LOOK_AFTER:
                self._last_ask, self._asked = now, True
                self._kick()

    def _progress(self) -> int:
        progress = self.exits - self._interrupts
        if self._answered is not None:
            progress += self._answered.reads + self._answered.writes
        return progress

    # --- the vCPU thread ----------------------------------------------------------
    def look(self, vcpu, memory) -> str | None:
        """Called by the run loop on every Interrupted exit: a reason to stop the VM, or None.

        Clears immediate_exit (the watchdog's kick, or stop()'s) before the
        run loop re-checks whether the VM is stopping, so no stop is lost.
        """
        self._interrupts += 1
        vcpu.immediate_exit = False
        if not self._asked:
            return None                  # a signal, or a stop(): not ours
        try:
            return self._verdict(vcpu, memory)
        finally:
            self.looks += 1
            self._asked = False

    def _verdict(self, vcpu, memory) -> str | None:
        if self._stretch != self._quiet_since:   # the guest made exits since the last look
            self._stretch, self._running_looks, self._next_report = self._quiet_since, 0, REPORT_AFTER
        quiet = self.quiet_seconds()
        regs = vcpu.get_regs()
        state = vcpu.get_mp_state()
        if state in (lib.KVM_MP_STATE_INIT_RECEIVED, lib.KVM_MP_STATE_SIPI_RECEIVED):
            self._running_looks = 0
            return None                  # an AP waiting for its start-up IPI
        if state == lib.KVM_MP_STATE_HALTED:
            self._running_looks = 0
            if regs.rflags & RFLAGS_IF:
                return None              # idle, waiting for an interrupt
            return HALTED_WITH_INTERRUPTS_OFF
        self._running_looks += 1
        if self._running_looks < RUNNING_LOOKS:
            return None
        what = f"no VM exit for {quiet:.0f} s; {describe_vcpu(vcpu, regs, memory)}"
        if self._stall_timeout is not None and quiet >= self._stall_timeout:
            return what
        if quiet >= self._next_report:
            self._next_report *= 2
            log.warning("pykvm: %s (Ctrl-A x quits)", what)
        return None


def describe_vcpu(vcpu, regs, memory) -> str:
    """'vCPU 0 runs in real mode at 0000:1000, code eb fe ...: a jump to itself'."""
    sregs = vcpu.get_sregs()
    if sregs.efer & EFER_LMA:
        mode = "64-bit mode" if sregs.cs.l else "compatibility mode"
    else:
        mode = "protected mode" if sregs.cr0 & CR0_PE else "real mode"
    where = f"{sregs.cs.selector:04x}:{regs.rip:04x}" if mode == "real mode" else f"rip {regs.rip:#x}"
    text = f"vCPU {vcpu.id} runs in {mode} at {where}"
    address = sregs.cs.base + regs.rip
    if sregs.cr0 & CR0_PG or memory is None or not memory.contains(address, CODE_PEEK):
        return text                      # a virtual address, or outside RAM: no code to show
    code = memory.read(address, CODE_PEEK)
    hint = SELF_JUMP_HINT if code[:2] == SELF_JUMP else ZEROS_HINT if not any(code) else ""
    return f"{text}, code {code.hex(' ')}" + (f": {hint}" if hint else "")
