"""The 8254 PIT's channel 0 as a PC BIOS leaves it: the 18.2 Hz tick on IRQ 0.

Spec: Intel 82C54 datasheet, "Mode 2: Rate Generator" and the control word
(SC=00 channel 0, RW=11 low byte then high byte, M=010, BCD=0); SeaBIOS
src/hw/timer.c (timer_setup) writes exactly that with a count of 0, which
the 8254 takes as 65536: 1193182 Hz / 65536 = 18.2 interrupts a second, the
BIOS tick a real-mode program waits on with HLT (under QEMU, kvm-unit-tests'
realmode does).  KVM's in-kernel PIT (arch/x86/kvm/i8254.c) starts with its
channels unprogrammed (mode 0xff, no timer); KVM_SET_PIT2 loads the count
and starts channel 0's timer when the mode is periodic (kvm_pit_load_count).
Channels 1 and 2 keep their reset state (2 belongs to port 0x61's speaker gate).
"""
from __future__ import annotations

from pykvm.vm.kvm.bindings import ffi

__all__ = ["bios_state", "BIOS_TICK_COUNT", "RATE_GENERATOR"]

TIMER_CHANNEL = 0
RATE_GENERATOR = 2             # M=010: a pulse every `count` input clocks, periodic
ACCESS_LOW_THEN_HIGH = 3       # RW=11: the count is written low byte, then high byte
BIOS_TICK_COUNT = 0            # 0 means 65536 input clocks: 18.2 Hz
GATE_OPEN = 1                  # channel 0's gate is wired high on a PC


def bios_state(pit: bytes) -> bytes:
    """`pit` (a struct kvm_pit_state2 from KVM_GET_PIT2) with channel 0 ticking as the BIOS set it."""
    state = ffi.new("struct kvm_pit_state2 *")
    ffi.buffer(state)[:] = pit
    channel = state.channels[TIMER_CHANNEL]
    channel.mode = RATE_GENERATOR
    channel.rw_mode = channel.read_state = channel.write_state = ACCESS_LOW_THEN_HIGH
    channel.bcd = 0
    channel.gate = GATE_OPEN
    channel.count = BIOS_TICK_COUNT
    return bytes(ffi.buffer(state))
