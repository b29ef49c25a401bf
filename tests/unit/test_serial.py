"""The 16550A UART, register by register, against the PC16550D datasheet (TI SNLS378)."""
from __future__ import annotations

import threading
import time

import pytest

from pykvm.vm.devices import serial as uart
from pykvm.vm.devices.serial import HOST_QUEUE_BYTES, Serial16550

# Register offsets, spelled out here so the tests read like the datasheet's Table II.
RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR, MCR, LSR, MSR, SCR = 3, 4, 5, 6, 7

SLOWEST = 0xFFFF        # divisor: 4 character times = ~23 s, so no character timeout during a test


class Uart:
    """A Serial16550 with its output and every INTR transition recorded."""

    def __init__(self):
        self.sent = bytearray()
        self.irqs: list[bool] = []
        self.dev = Serial16550(self.sent.extend, self.irqs.append)

    def __getattr__(self, name):
        return getattr(self.dev, name)

    def rd(self, offset):
        return self.dev.read(offset, 1)

    def wr(self, offset, value):
        self.dev.write(offset, 1, value)

    def set_divisor(self, divisor):
        lcr = self.rd(LCR)
        self.wr(LCR, lcr | 0x80)
        self.wr(DLL, divisor & 0xFF)
        self.wr(DLM, divisor >> 8)
        self.wr(LCR, lcr)

    def drain(self):
        data = bytearray()
        while self.rd(LSR) & 0x01:
            data.append(self.rd(RBR))
        return bytes(data)


@pytest.fixture
def u():
    port = Uart()
    yield port
    port.close()


def test_reset_values(u):
    assert u.rd(IER) == 0x00
    assert u.rd(IIR) == 0x01, "no interrupt pending, FIFOs off"
    assert u.rd(LCR) == 0x00
    assert u.rd(MCR) == 0x00
    assert u.rd(LSR) == 0x60, "THRE and TEMT: the transmitter is empty"
    assert u.rd(MSR) == 0xB0, "host end connected: DCD, DSR, CTS"
    assert u.irqs == []


def test_dlab_switches_offsets_0_and_1_to_the_divisor_latch(u):
    u.wr(IER, 0x05)
    u.wr(LCR, 0x83)                      # DLAB + 8 data bits
    u.wr(DLL, 0x01)
    u.wr(DLM, 0x00)
    assert (u.rd(DLL), u.rd(DLM)) == (0x01, 0x00)
    assert u.baud == 115200
    assert u.sent == b"", "a DLL write is not a THR write"
    u.wr(LCR, 0x03)                      # DLAB off again
    assert u.rd(IER) == 0x05, "IER untouched by the DLM write"
    u.wr(THR, ord("A"))
    assert u.sent == b"A"
    u.wr(LCR, 0x83)
    u.wr(DLL, 0x0C)
    assert u.baud == 9600 and u.rd(DLL) == 0x0C
    assert u.rd(LCR) == 0x83


def test_wide_access_covers_consecutive_registers(u):
    u.wr(LCR, 0x80)
    u.dev.write(DLL, 2, 0x0180)          # one 16-bit write sets DLL and DLM
    assert (u.rd(DLL), u.rd(DLM)) == (0x80, 0x01)
    assert u.dev.read(DLL, 2) == 0x0180


def test_thr_goes_to_the_host_and_lsr_stays_empty(u):
    for byte in b"hello\r\n":
        u.wr(THR, byte)
        assert u.rd(LSR) & 0x60 == 0x60
    assert u.sent == b"hello\r\n"


def test_lsr_data_ready(u):
    assert not u.rd(LSR) & 0x01
    u.receive(b"x")
    assert u.rd(LSR) & 0x01
    assert u.rd(RBR) == ord("x")
    assert not u.rd(LSR) & 0x01
    assert u.rd(RBR) == ord("x"), "RBR keeps the last byte"


@pytest.mark.parametrize("fifo", [False, True])
def test_host_input_arrives_whole_and_in_order(u, fifo):
    if fifo:
        u.wr(FCR, 0x01)
    data = bytes(range(256)) * 3
    assert u.receive(data) == len(data)
    assert u.pending_input == len(data)
    assert u.drain() == data
    assert u.pending_input == 0


def test_overrun_in_fifo_mode_keeps_the_fifo_and_loses_the_new_byte(u):
    u.wr(FCR, 0x01)
    u.wr(MCR, 0x10)                      # loopback: THR feeds the receiver
    for byte in range(17):
        u.wr(THR, byte)
    lsr = u.rd(LSR)
    assert lsr & 0x02, f"OE expected, LSR={lsr:#x}"
    assert not u.rd(LSR) & 0x02, "reading LSR clears OE"
    assert u.drain() == bytes(range(16))
    assert u.sent == b"", "loopback sends nothing to the host"


def test_overrun_in_16450_mode_overwrites_rbr(u):
    u.wr(MCR, 0x10)
    u.wr(THR, 0x41)
    u.wr(THR, 0x42)
    assert u.rd(LSR) & 0x03 == 0x03, "DR and OE"
    assert u.rd(RBR) == 0x42


def test_loopback_disconnects_the_host_until_it_ends(u):
    u.wr(MCR, 0x10)
    u.receive(b"host")
    assert not u.rd(LSR) & 0x01, "SIN is cut off in loopback"
    u.wr(THR, ord("L"))
    assert u.rd(RBR) == ord("L")
    u.wr(MCR, 0x00)
    assert u.drain() == b"host"


def test_loopback_modem_lines_linux_autoconfig(u):
    # Linux's 8250 autoconfig: MCR = LOOP | OUT2 | RTS must read back MSR & 0xf0 == 0x90.
    u.wr(MCR, 0x1A)
    assert u.rd(MSR) & 0xF0 == 0x90
    u.wr(MCR, 0x1F)                      # all four outputs
    assert u.rd(MSR) & 0xF0 == 0xF0
    assert u.rd(MCR) == 0x1F


def test_msr_delta_bits_and_trailing_edge_ri(u):
    u.wr(MCR, 0x10)                      # loopback, all outputs off
    u.rd(MSR)                            # clear the deltas of entering loopback
    u.wr(MCR, 0x10 | 0x04)               # OUT1 -> RI rises: not a trailing edge
    assert u.rd(MSR) == 0x40
    u.wr(MCR, 0x10)                      # RI falls: TERI
    assert u.rd(MSR) == 0x04
    u.wr(MCR, 0x10 | 0x01 | 0x02)        # DTR, RTS -> DSR, CTS with their deltas
    assert u.rd(MSR) == 0x30 | 0x02 | 0x01
    assert u.rd(MSR) == 0x30, "reading MSR clears the deltas"


def test_scratch_register(u):
    for value in (0x00, 0x55, 0xAA, 0xFF):
        u.wr(SCR, value)
        assert u.rd(SCR) == value


def test_ier_upper_bits_read_zero(u):
    u.wr(IER, 0xFF)
    assert u.rd(IER) == 0x0F


def test_thre_interrupt_semantics(u):
    u.wr(IER, 0x02)                      # ETBEI while THR is empty: interrupt at once
    assert u.irqs == [True]
    assert u.rd(IIR) == 0x02
    assert u.irqs == [True, False], "reading IIR when THRE is the source clears it"
    assert u.rd(IIR) == 0x01
    u.wr(THR, ord("a"))                  # the byte leaves, THR empty again: a fresh interrupt
    assert u.irqs == [True, False, True]
    u.wr(THR, ord("b"))                  # INTR drops on the write and rises when the byte left
    assert u.irqs == [True, False, True, False, True]
    u.wr(IER, 0x00)
    assert u.irqs[-1] is False and u.rd(IIR) == 0x01
    assert u.sent == b"ab"


def test_irq_callback_only_on_changes(u):
    u.wr(IER, 0x01)
    u.receive(b"a")
    u.receive(b"b")                      # still pending: no second call
    u.rd(LSR)
    assert u.irqs == [True]
    u.drain()
    assert u.irqs == [True, False]
    assert u.interrupt_line is False


def test_iir_priorities(u):
    """Table IV: line status > data available > THR empty > modem status."""
    u.wr(MCR, 0x10)                      # loopback makes every source reachable
    u.wr(THR, 1)
    u.wr(THR, 2)                         # overrun in 16450 mode: OE + DR
    u.wr(MCR, 0x10 | 0x02)               # RTS -> CTS: a modem status delta
    u.wr(IER, 0x0F)
    assert u.irqs == [True]
    assert u.rd(IIR) == 0x06, "receiver line status first"
    u.rd(LSR)                            # clears OE
    assert u.rd(IIR) == 0x04, "then received data"
    u.rd(RBR)
    assert u.rd(IIR) == 0x02, "then THR empty (cleared by this read)"
    assert u.rd(IIR) == 0x00, "then modem status"
    assert u.irqs == [True]
    u.rd(MSR)
    assert u.rd(IIR) == 0x01
    assert u.irqs == [True, False]


def test_fifo_enable_shows_in_iir_and_reset_clears(u):
    u.receive(b"abc")
    u.wr(FCR, 0x01)                      # enabling the FIFOs clears them (then host bytes refill)
    assert u.rd(IIR) & 0xC0 == 0xC0
    u.wr(MCR, 0x10)                      # loopback so no host bytes refill
    u.wr(FCR, 0x01 | 0x02)               # receiver FIFO reset
    assert not u.rd(LSR) & 0x01
    u.wr(FCR, 0x00)
    assert u.rd(IIR) & 0xC0 == 0x00


def test_fcr_other_bits_ignored_without_enable(u):
    u.set_divisor(SLOWEST)
    u.wr(IER, 0x01)
    u.wr(FCR, 0xC0)                      # trigger 14 without FCR0: not programmed
    u.receive(b"a")
    assert u.rd(IIR) == 0x04, "16450 mode: one byte is enough"


@pytest.mark.parametrize("bits, level", [(0b00, 1), (0b01, 4), (0b10, 8), (0b11, 14)])
def test_fifo_trigger_levels(u, bits, level):
    u.set_divisor(SLOWEST)               # no character timeout within the test
    u.wr(FCR, 0x01 | (bits << 6))
    u.wr(IER, 0x01)
    if level > 1:
        u.receive(b"x" * (level - 1))
        assert u.rd(IIR) == 0xC1, f"{level - 1} bytes are below trigger {level}"
        assert u.irqs == []
    u.receive(b"y")
    assert u.rd(IIR) == 0xC4
    assert u.irqs == [True]
    u.rd(RBR)                            # one below the trigger again
    if level > 1:
        assert u.rd(IIR) == 0xC1 and u.irqs == [True, False]


def test_host_queue_refills_the_fifo_as_the_guest_reads(u):
    u.set_divisor(SLOWEST)
    u.wr(FCR, 0xC1)                      # trigger 14
    u.wr(IER, 0x01)
    u.receive(bytes(range(40)))
    assert u.rd(IIR) == 0xC4
    got = bytes(u.rd(RBR) for _ in range(30))
    assert got == bytes(range(30))
    assert u.rd(IIR) == 0xC1, "10 left, below the trigger"


def test_character_timeout(u):
    u.set_divisor(1)                     # 115200 baud: 4 characters take ~0.35 ms
    u.wr(LCR, 0x03)
    u.wr(FCR, 0xC1)                      # trigger 14
    u.wr(IER, 0x01)
    u.receive(b"abc")
    deadline = time.monotonic() + 5
    while not u.irqs and time.monotonic() < deadline:
        time.sleep(0.001)
    assert u.irqs == [True], "character timeout never fired"
    assert u.rd(IIR) == 0xCC
    assert u.rd(RBR) == ord("a")
    assert u.rd(IIR) == 0xC1, "reading RBR clears the timeout indication"
    assert u.drain() == b"bc"
    time.sleep(0.01)
    assert u.rd(IIR) == 0xC1 and u.irqs[-1] is False, "an empty FIFO never times out"


def test_back_pressure_and_wait_for_room(u):
    data = bytes(HOST_QUEUE_BYTES + 100)
    taken = u.receive(data)
    assert taken == HOST_QUEUE_BYTES
    taken += u.receive(data[taken:])     # the 1-byte RBR took one byte off the queue
    assert taken == HOST_QUEUE_BYTES + 1
    assert u.receive(data[taken:]) == 0
    assert u.wait_for_room(timeout=0.01) is False
    woke = []
    waiter = threading.Thread(target=lambda: woke.append(u.wait_for_room(timeout=5)))
    waiter.start()
    time.sleep(0.02)
    u.rd(RBR)
    waiter.join()
    assert woke == [True]
    assert u.receive(data[taken:]) == 1


def test_receive_from_another_thread_loses_nothing(u):
    u.wr(FCR, 0x01)
    data = bytes(i & 0xFF for i in range(20000))

    def feeder():
        view = data
        while view:
            n = u.receive(view[:333])
            view = view[n:]

    thread = threading.Thread(target=feeder)
    thread.start()
    got = bytearray()
    deadline = time.monotonic() + 10
    while len(got) < len(data) and time.monotonic() < deadline:
        got += u.drain()
    thread.join()
    assert bytes(got) == data


def test_registers_past_the_eighth_read_all_ones(u):
    assert uart.COM1_LENGTH == 8
    assert u.dev.read(6, 4) >> 16 == 0xFFFF
    u.dev.write(7, 4, 0x11223344)        # SCR takes the low byte, the rest has no register
    assert u.rd(SCR) == 0x44
