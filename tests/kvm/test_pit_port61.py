"""Port 0x61, the PC's system control port B: PIT channel 2's gate and output.

Linux calibrates its TSC this way (arch/x86/kernel/tsc.c, pit_calibrate_tsc):
gate channel 2 on through port 0x61 bit 0, start a mode 0 count, and poll bit 5
(OUT2) until the count runs out.  KVM answers port 0x61 when the PIT is created
with KVM_PIT_SPEAKER_DUMMY; without it the port reaches pykvm and reads 0xff.
"""
import pytest

from vmkit import POWER_OFF, run_guest

pytestmark = pytest.mark.kvm

PORT_B_GATE2 = 0x01        # port 0x61 bit 0: PIT channel 2 gate
PORT_B_SPEAKER = 0x02      # bit 1: speaker data enable
PORT_B_OUT2 = 0x20         # bit 5: PIT channel 2 output (read only)

# Writes three readings of port 0x61 to the UART's THR:
#   1. after setting the gate and the speaker bit;
#   2. right after starting a 0x8000-tick (27 ms) mode 0 count on channel 2, when OUT2 is low
#      until the count runs out.  A host this loaded may preempt the guest for longer than
#      the count between two instructions, so the guest tries up to 8 times for a low reading;
#   3. once bit 5 is set, or after 1M polls.
CHANNEL2_GUEST = """
    mov $0x3f8, %dx
    mov $0x03, %al            # gate channel 2 on, speaker data on
    out %al, $0x61
    in $0x61, %al
    out %al, %dx              # reading 1
    mov $8, %cx
start:
    mov $0xb0, %al            # PIT control word: channel 2, lobyte/hibyte, mode 0, binary
    out %al, $0x43
    mov $0x00, %al
    out %al, $0x42            # count low byte
    mov $0x80, %al
    out %al, $0x42            # count high byte: 0x8000 ticks of 1.193182 MHz
    in $0x61, %al
    test $0x20, %al
    loopnz start              # OUT2 already high: preempted too long; start again
    out %al, %dx              # reading 2
    mov $0x100000, %ecx
poll:
    in $0x61, %al
    test $0x20, %al
    jnz done
    dec %ecx
    jnz poll
done:
    out %al, %dx              # reading 3
""" + POWER_OFF


def test_channel2_gate_and_output_on_port_61(tmp_path):
    status, output = run_guest(tmp_path, CHANNEL2_GUEST)
    assert status == 0 and len(output) == 3, (status, output)
    gate, started, finished = output
    assert gate & (PORT_B_GATE2 | PORT_B_SPEAKER) == PORT_B_GATE2 | PORT_B_SPEAKER, hex(gate)
    assert not started & PORT_B_OUT2, f"OUT2 high right after a mode 0 count started: {started:#x}"
    assert finished & PORT_B_OUT2, f"OUT2 never rose at the end of the count: {finished:#x}"
    assert finished & PORT_B_GATE2, hex(finished)
