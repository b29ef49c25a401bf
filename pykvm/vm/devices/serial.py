"""A 16550A UART, the PC's serial port (COM1 at ports 0x3f8-0x3ff, IRQ 4).

Reference: Texas Instruments (formerly National Semiconductor) "PC16550D
Universal Asynchronous Receiver/Transmitter with FIFOs", datasheet SNLS378,
https://www.ti.com/lit/ds/symlink/pc16550d.pdf .  Section numbers below are
that datasheet's: 8.1 LCR, 8.3 baud generator, 8.4 LSR, 8.5 IIR, 8.6 IER,
8.7 MCR, 8.8 MSR, 8.9 FCR, 8.10 FIFO interrupt mode;
Table II is the register summary, Table III the reset values, Table IV the
interrupt control functions.

The register map (offsets from the base port; DLAB is LCR bit 7):

    offset  DLAB  read                        write
      0      0    RBR receiver buffer          THR transmitter holding
      1      0    IER interrupt enable         IER
      2      -    IIR interrupt identification FCR FIFO control
      3      -    LCR line control             LCR
      4      -    MCR modem control            MCR
      5      -    LSR line status              (factory test; ignored)
      6      -    MSR modem status             (ignored)
      7      -    SCR scratch                  SCR
      0      1    DLL divisor latch, low byte  DLL
      1      1    DLM divisor latch, high byte DLM

What is emulated and what is simplified:
  * Transmission is instantaneous: a byte written to THR goes to the host at
    once, so THR and the transmitter are always empty again by the time the
    guest can look (LSR THRE and TEMT read 1).  The THR-empty interrupt still
    behaves as on the chip: it drops on a THR write and comes back when the
    byte has "left".
  * Reception: host bytes wait in a host-side queue (bounded, nothing lost)
    and enter the 16-byte receiver FIFO (or, with FIFOs off, the 1-byte RBR)
    as the guest drains it.  The character-timeout interrupt fires after four
    character times (at the programmed baud rate) with no FIFO activity, as
    section 8.10 says, using a host timer thread.
  * Loopback (MCR bit 4) works: THR feeds the receiver, MCR's outputs feed
    MSR's inputs, and the host is cut off (section 8.7).
  * The interrupt output INTR is a level: `irq(True)` when it rises,
    `irq(False)` when it falls, called only on a change.  On a PC the OUT2 bit
    gates INTR to the PIC; QEMU ignores OUT2 and so do we, so guests written
    against QEMU (xv6 never sets OUT2) get their interrupts here too.
  * There are no parity, framing or break errors on a virtual wire, so LSR
    PE, FE, BI and bit 7 stay 0; OE appears only on a loopback overrun.

Threads: the vCPU thread calls read()/write(); a console thread calls
receive(); the timer thread signals the character timeout.  One lock guards
the state; `irq` is called with it held so level changes reach the interrupt
controller in order.  `out` is called without it.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Callable

__all__ = ["Serial16550", "COM1_BASE", "COM1_IRQ", "COM1_LENGTH", "HOST_QUEUE_BYTES", "FIFO_BYTES"]

# --- where COM1 lives on a PC (IBM PC/AT convention; QEMU and Firecracker use the same)
COM1_BASE = 0x3F8               # first of COM1's eight ports
COM1_LENGTH = 8                 # registers at offsets 0..7
COM1_IRQ = 4                    # ISA IRQ line of COM1

# --- register offsets (Table II)
RBR = 0                         # receiver buffer (read, DLAB=0)
THR = 0                         # transmitter holding (write, DLAB=0)
DLL = 0                         # divisor latch low byte (DLAB=1)
IER = 1                         # interrupt enable (DLAB=0)
DLM = 1                         # divisor latch high byte (DLAB=1)
IIR = 2                         # interrupt identification (read)
FCR = 2                         # FIFO control (write)
LCR = 3                         # line control
MCR = 4                         # modem control
LSR = 5                         # line status
MSR = 6                         # modem status
SCR = 7                         # scratch

# --- IER bits (8.6)
IER_ERBFI = 0x01                # enable received data available (and character timeout) interrupt
IER_ETBEI = 0x02                # enable transmitter holding register empty interrupt
IER_ELSI = 0x04                 # enable receiver line status interrupt
IER_EDSSI = 0x08                # enable modem status interrupt
IER_MASK = 0x0F                 # bits 4-7 are always 0

# --- IIR values (8.5, Table IV), highest priority first
IIR_NO_INT = 0x01               # bit 0 = 1: no interrupt pending
IIR_RLS = 0x06                  # priority 1: receiver line status (OE, PE, FE, BI); cleared by reading LSR
IIR_RDA = 0x04                  # priority 2: received data available (at trigger level); cleared by draining below it
IIR_CTI = 0x0C                  # priority 2: character timeout (FIFO mode); cleared by reading RBR
IIR_THRE = 0x02                 # priority 3: THR empty; cleared by reading IIR (if the source) or writing THR
IIR_MSR = 0x00                  # priority 4: modem status; cleared by reading MSR
IIR_FIFOS_ENABLED = 0xC0        # bits 6-7: both set when FCR bit 0 is set

# --- FCR bits (8.9)
FCR_ENABLE = 0x01               # enable both FIFOs; changing it clears them
FCR_RX_RESET = 0x02             # clear the receiver FIFO (self-clearing)
FCR_TX_RESET = 0x04             # clear the transmitter FIFO (self-clearing)
FCR_DMA_MODE = 0x08             # RXRDY/TXRDY pin mode: no pins here, kept for read-back of state only
FCR_TRIGGER_SHIFT = 6           # bits 6-7: receiver FIFO interrupt trigger level
RX_TRIGGER_LEVELS = (1, 4, 8, 14)   # bytes, for FCR bits 7:6 = 00, 01, 10, 11

# --- LCR bits (8.1)
LCR_WORD_LENGTH = 0x03          # data bits - 5
LCR_STOP_BITS = 0x04            # 0: 1 stop bit; 1: 1.5 or 2
LCR_PARITY_ENABLE = 0x08        # PEN: a parity bit is sent
LCR_EVEN_PARITY = 0x10          # EPS
LCR_STICK_PARITY = 0x20         # stick parity
LCR_BREAK = 0x40                # set break: force the line low
LCR_DLAB = 0x80                 # divisor latch access bit: offsets 0/1 become DLL/DLM

# --- MCR bits (8.7)
MCR_DTR = 0x01                  # data terminal ready  (loopback: -> MSR DSR)
MCR_RTS = 0x02                  # request to send      (loopback: -> MSR CTS)
MCR_OUT1 = 0x04                 # user output 1        (loopback: -> MSR RI)
MCR_OUT2 = 0x08                 # user output 2        (loopback: -> MSR DCD; gates INTR on PCs)
MCR_LOOP = 0x10                 # loopback mode
MCR_MASK = 0x1F                 # bits 5-7 are always 0

# --- LSR bits (8.4)
LSR_DR = 0x01                   # data ready: at least one byte in RBR / the receiver FIFO
LSR_OE = 0x02                   # overrun error: a byte arrived with nowhere to go (cleared by reading LSR)
LSR_PE = 0x04                   # parity error (never on a virtual wire)
LSR_FE = 0x08                   # framing error (never on a virtual wire)
LSR_BI = 0x10                   # break interrupt (never on a virtual wire)
LSR_THRE = 0x20                 # THR (or the transmitter FIFO) is empty
LSR_TEMT = 0x40                 # THR and the transmitter shift register are both empty
LSR_RX_FIFO_ERROR = 0x80        # a PE/FE/BI byte is in the FIFO (never here)
LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI   # the receiver line status interrupt sources

# --- MSR bits (8.8)
MSR_DCTS = 0x01                 # delta CTS since the last MSR read
MSR_DDSR = 0x02                 # delta DSR
MSR_TERI = 0x04                 # trailing edge of RI: RI went from 1 to 0
MSR_DDCD = 0x08                 # delta DCD
MSR_DELTAS = 0x0F               # any of the above: the modem status interrupt source
MSR_CTS = 0x10                  # clear to send
MSR_DSR = 0x20                  # data set ready
MSR_RI = 0x40                   # ring indicator
MSR_DCD = 0x80                  # data carrier detect
HOST_MODEM_LINES = MSR_DCD | MSR_DSR | MSR_CTS   # the host end is "connected", as in QEMU

# --- clocking and buffers
INPUT_CLOCK_HZ = 1_843_200      # the PC's 1.8432 MHz crystal; baud = clock / (16 * divisor)
RESET_DIVISOR = 12              # 9600 baud until the guest programs DLL/DLM
FIFO_BYTES = 16                 # 16550A receiver and transmitter FIFO depth
HOST_QUEUE_BYTES = 64 * 1024    # host input waiting for the guest; beyond this receive() accepts less

_BYTE = [bytes((i,)) for i in range(256)]       # one preallocated bytes object per value for `out`


class Serial16550:
    """A 16550A UART.  `out(data)` receives transmitted bytes; `irq(level)` follows the INTR pin.

    Mapped on a bus with length 8; `read`/`write` take the register offset.
    `irq` is called with the UART's lock held (so level changes stay in order)
    and from any of the three threads: it must be quick, thread-safe, and must
    not call back into the UART.  KVM_IRQ_LINE is all three.
    """

    def __init__(self, out: Callable[[bytes], None], irq: Callable[[bool], None]):
        self._out = out
        self._irq = irq
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)   # signalled when the host queue drains below full
        self._host = bytearray()                       # host bytes not yet in the receiver
        self._rx: collections.deque[int] = collections.deque()   # the receiver FIFO (or the 1-byte RBR)
        self._intr = False                             # the INTR pin as last reported through irq()
        self._timer: threading.Timer | None = None     # the character-timeout timer thread, if running
        self._timeout_deadline: float | None = None    # monotonic time the character timeout is due
        self._reset_registers()
        self._register_table()

    def _reset_registers(self) -> None:
        """Master reset values (Table III)."""
        self._ier = 0
        self._lcr = 0
        self._mcr = 0
        self._fcr = 0                   # the FCR bits that stick: enable, DMA mode, trigger
        self._rx_trigger = RX_TRIGGER_LEVELS[0]
        self._lsr_errors = 0            # OE/PE/FE/BI latched until LSR is read
        self._msr_lines = HOST_MODEM_LINES
        self._msr_deltas = 0
        self._scr = 0
        self._divisor = RESET_DIVISOR
        self._last_rx = 0               # RBR keeps the last byte once the FIFO is empty
        self._thr_pending = False       # the THR-empty interrupt condition (hidden state)
        self._timeout_pending = False   # the character-timeout interrupt condition
        self._iid = IIR_NO_INT          # the IIR interrupt ID, bits 0-3

    # ------------------------------------------------------------------ bus side (vCPU thread)

    def read(self, offset: int, size: int) -> int:
        """Guest read.  The UART's registers are bytes; a wider access reads consecutive registers."""
        with self._lock:
            if size == 1:
                return self._readers[offset]()
            return sum(self._read_register(offset + i) << (8 * i) for i in range(size))

    def write(self, offset: int, size: int, value: int) -> None:
        """Guest write.  A wider access writes consecutive registers, low byte first."""
        if size == 1:
            with self._lock:
                sent = self._writers[offset](value & 0xFF)
            if sent is not None:
                self._out(_BYTE[sent])
            return
        for i in range(min(size, COM1_LENGTH - offset)):     # bytes past the eighth register fall away
            self.write(offset + i, 1, (value >> (8 * i)) & 0xFF)

    def _read_register(self, offset: int) -> int:
        """One register; past the eighth nothing drives the bus."""
        return self._readers[offset]() if offset < COM1_LENGTH else 0xFF

    def _register_table(self) -> None:
        """Per-offset handlers (Table II): one indexed call per access on the VM-exit path."""
        self._readers = (self._read_rbr_dll, self._read_ier_dlm, self._read_iir, lambda: self._lcr,
                         lambda: self._mcr, self._read_lsr, self._read_msr, lambda: self._scr)
        self._writers = (self._write_thr_dll, self._write_ier_dlm, self._write_fcr, self._write_lcr,
                         self._write_mcr, self._write_ignored, self._write_ignored, self._write_scr)

    def _read_rbr_dll(self) -> int:
        return self._divisor & 0xFF if self._lcr & LCR_DLAB else self._read_rbr()

    def _read_ier_dlm(self) -> int:
        return self._divisor >> 8 if self._lcr & LCR_DLAB else self._ier

    def _write_thr_dll(self, value: int) -> int | None:
        """THR, or DLL when DLAB is set; returns the byte to send to the host, if any."""
        if self._lcr & LCR_DLAB:
            self._divisor = (self._divisor & 0xFF00) | value
            return None
        return self._write_thr(value)

    def _write_ier_dlm(self, value: int) -> None:
        if self._lcr & LCR_DLAB:
            self._divisor = (self._divisor & 0x00FF) | (value << 8)
        else:
            self._write_ier(value)

    def _write_lcr(self, value: int) -> None:
        self._lcr = value

    def _write_scr(self, value: int) -> None:
        self._scr = value

    def _write_ignored(self, value: int) -> None:
        """LSR and MSR writes are for factory testing only (8.4); ignored."""

    # --- receiver (8.4, 8.10)

    def _read_rbr(self) -> int:
        """Take the oldest received byte; refill from the host; re-arm the character timeout."""
        if self._rx:
            self._last_rx = self._rx.popleft()
            self._refill_rx()
        if self._fcr & FCR_ENABLE:
            self._timeout_pending = False           # reading RBR clears the timeout indication
            if self._rx:
                self._arm_timeout()
            else:
                self._disarm_timeout()
        self._update_interrupt()
        return self._last_rx

    def _rx_capacity(self) -> int:
        return FIFO_BYTES if self._fcr & FCR_ENABLE else 1

    def _refill_rx(self) -> None:
        """Move host bytes into the receiver while there is room (not in loopback: SIN is cut off)."""
        if self._mcr & MCR_LOOP or not self._host:
            return
        room = self._rx_capacity() - len(self._rx)
        if room <= 0:
            return
        was_full = len(self._host) >= HOST_QUEUE_BYTES
        moved = self._host[:room]
        del self._host[:room]
        self._rx.extend(moved)
        if self._fcr & FCR_ENABLE:
            self._arm_timeout()
        if was_full:
            self._room.notify_all()

    def _receive_byte(self, byte: int) -> None:
        """A byte arrives from the (looped-back) line; with nowhere to put it, that is an overrun."""
        if len(self._rx) < self._rx_capacity():
            self._rx.append(byte)
        elif self._fcr & FCR_ENABLE:
            self._lsr_errors |= LSR_OE              # FIFO full: the new byte is lost (8.4, bit 1)
        else:
            self._rx[0] = byte                      # 16450 mode: RBR is overwritten
            self._lsr_errors |= LSR_OE
        if self._fcr & FCR_ENABLE:
            self._arm_timeout()

    def _clear_rx(self) -> None:
        self._rx.clear()
        self._timeout_pending = False
        self._disarm_timeout()

    # --- transmitter (8.4: THRE, TEMT)

    def _write_thr(self, value: int) -> int | None:
        """Send one byte.  It leaves at once, so THR is empty again before the guest can look."""
        sent = None
        if self._mcr & MCR_LOOP:
            self._receive_byte(value)               # loopback: TSR feeds RSR (8.7, bit 4)
        else:
            sent = value
        if self._ier & IER_ETBEI:
            self._thr_pending = False
            self._update_interrupt()                # INTR drops: the next THRE is a fresh edge
        self._thr_pending = True
        if self._ier or sent is None:               # nothing else can have changed INTR
            self._update_interrupt()
        return sent

    # --- control registers

    def _write_ier(self, value: int) -> None:
        value &= IER_MASK
        if (value ^ self._ier) & IER_ETBEI:
            # Enabling ETBEI while THR is empty (always, here) raises THRE at once; Linux relies on it.
            self._thr_pending = bool(value & IER_ETBEI)
        self._ier = value
        self._update_interrupt()

    def _write_fcr(self, value: int) -> None:
        """FIFO control (8.9): bit 0 must be set for the other bits to take effect."""
        enabled = bool(self._fcr & FCR_ENABLE)
        if not value & FCR_ENABLE:
            if enabled:
                self._clear_rx()                    # clearing FCR0 empties both FIFOs
                self._fcr = 0
                self._refill_rx()
                self._update_interrupt()
            return
        if not enabled or value & FCR_RX_RESET:
            self._clear_rx()
        self._fcr = value & (FCR_ENABLE | FCR_DMA_MODE | (0x3 << FCR_TRIGGER_SHIFT))
        self._rx_trigger = RX_TRIGGER_LEVELS[value >> FCR_TRIGGER_SHIFT]
        self._refill_rx()
        self._update_interrupt()

    def _write_mcr(self, value: int) -> None:
        """Modem control (8.7).  Leaving loopback reconnects the host input."""
        self._mcr = value & MCR_MASK
        self._set_modem_lines(self._loopback_lines() if self._mcr & MCR_LOOP else HOST_MODEM_LINES)
        self._refill_rx()
        self._update_interrupt()

    def _loopback_lines(self) -> int:
        """In loopback, MCR's four outputs drive MSR's four inputs (8.7, bit 4)."""
        lines = 0
        if self._mcr & MCR_RTS:
            lines |= MSR_CTS
        if self._mcr & MCR_DTR:
            lines |= MSR_DSR
        if self._mcr & MCR_OUT1:
            lines |= MSR_RI
        if self._mcr & MCR_OUT2:
            lines |= MSR_DCD
        return lines

    def _set_modem_lines(self, lines: int) -> None:
        """New modem input levels; latch the delta bits of MSR (8.8)."""
        changed = (lines ^ self._msr_lines) >> 4
        if self._msr_lines & MSR_RI and not lines & MSR_RI:
            changed |= MSR_TERI
        else:
            changed &= ~MSR_TERI                    # TERI is for the 1 -> 0 edge only
        self._msr_deltas |= changed
        self._msr_lines = lines

    # --- status registers with read side effects

    def _read_iir(self) -> int:
        """Reading IIR acknowledges a THR-empty interrupt if that is what it reports (8.5)."""
        iid = self._iid
        if iid == IIR_THRE:
            self._thr_pending = False
            self._update_interrupt()
        return iid | (IIR_FIFOS_ENABLED if self._fcr & FCR_ENABLE else 0)

    def _lsr(self) -> int:
        lsr = LSR_THRE | LSR_TEMT | self._lsr_errors
        if self._rx:
            lsr |= LSR_DR
        return lsr

    def _read_lsr(self) -> int:
        """Reading LSR clears the error bits and with them a line status interrupt (8.4)."""
        lsr = self._lsr()
        if self._lsr_errors:
            self._lsr_errors = 0
            self._update_interrupt()
        return lsr

    def _read_msr(self) -> int:
        """Reading MSR clears the delta bits and with them a modem status interrupt (8.8)."""
        msr = self._msr_lines | self._msr_deltas
        if self._msr_deltas:
            self._msr_deltas = 0
            self._update_interrupt()
        return msr

    # --- the interrupt logic (8.5, Table IV)

    def _pending_interrupt(self) -> int:
        """The highest-priority enabled interrupt condition, as an IIR ID."""
        ier = self._ier
        if ier & IER_ELSI and self._lsr_errors:
            return IIR_RLS
        if ier & IER_ERBFI:
            if self._timeout_pending:
                return IIR_CTI
            if self._rx and (not self._fcr & FCR_ENABLE or len(self._rx) >= self._rx_trigger):
                return IIR_RDA
        if ier & IER_ETBEI and self._thr_pending:
            return IIR_THRE
        if ier & IER_EDSSI and self._msr_deltas:
            return IIR_MSR
        return IIR_NO_INT

    def _update_interrupt(self) -> None:
        """Recompute IIR and drive INTR; tell `irq` only when the level changes."""
        self._iid = self._pending_interrupt()
        level = self._iid != IIR_NO_INT
        if level != self._intr:
            self._intr = level
            self._irq(level)

    # --- the character timeout (8.10): a byte waits and nothing went in or out for 4 character times

    def char_time(self) -> float:
        """Seconds one character takes on the wire: start + data + parity + stop bits at the baud rate."""
        bits = 1 + 5 + (self._lcr & LCR_WORD_LENGTH) + 1
        if self._lcr & LCR_PARITY_ENABLE:
            bits += 1
        if self._lcr & LCR_STOP_BITS:
            bits += 1
        return bits * 16 * max(self._divisor, 1) / INPUT_CLOCK_HZ

    def _arm_timeout(self) -> None:
        """Restart the four-character-time countdown; start the timer thread if none is running."""
        delay = 4 * self.char_time()
        self._timeout_deadline = time.monotonic() + delay
        if self._timer is None:
            self._start_timer(delay)

    def _disarm_timeout(self) -> None:
        self._timeout_deadline = None               # a running timer finds nothing to do

    def _start_timer(self, delay: float) -> None:
        self._timer = threading.Timer(delay, self._timeout_expired)
        self._timer.daemon = True
        self._timer.start()

    def _timeout_expired(self) -> None:
        """Timer thread: raise the character timeout if the deadline really passed, else wait on."""
        with self._lock:
            self._timer = None
            if self._timeout_deadline is None:
                return
            remaining = self._timeout_deadline - time.monotonic()
            if remaining > 0:
                self._start_timer(remaining)
                return
            self._timeout_deadline = None
            if self._rx and self._fcr & FCR_ENABLE:
                self._timeout_pending = True
                self._update_interrupt()

    # ------------------------------------------------------------------ snapshots (pykvm.vm.snapshot)

    STATE_REGISTERS = ("ier", "lcr", "mcr", "fcr", "rx_trigger", "lsr_errors", "msr_lines", "msr_deltas",
                       "scr", "divisor", "last_rx", "thr_pending", "timeout_pending", "iid", "intr")

    def get_state(self) -> dict:
        """Every register, the receiver FIFO, the host bytes still queued, and the INTR level."""
        with self._lock:
            state = {name: getattr(self, "_" + name) for name in self.STATE_REGISTERS}
            state["rx_fifo"] = bytes(self._rx).hex()
            state["host_queue"] = bytes(self._host).hex()
            return state

    def set_state(self, state: dict) -> None:
        """Back to `state`; a raised INTR is raised again (the new VM's interrupt line starts low)."""
        with self._lock:
            for name in self.STATE_REGISTERS:
                setattr(self, "_" + name, type(getattr(self, "_" + name))(state[name]))
            self._rx = collections.deque(bytes.fromhex(state["rx_fifo"])[:FIFO_BYTES])
            self._host = bytearray(bytes.fromhex(state["host_queue"])[:HOST_QUEUE_BYTES])
            if self._rx and self._fcr & FCR_ENABLE:
                self._arm_timeout()
            if self._intr:
                self._irq(True)

    # ------------------------------------------------------------------ host side (console thread)

    def receive(self, data: bytes) -> int:
        """Queue host input for the guest.  Returns how many bytes were taken (all, unless the
        host queue holds HOST_QUEUE_BYTES already: then wait_for_room() and offer the rest)."""
        with self._lock:
            taken = data[:HOST_QUEUE_BYTES - len(self._host)]
            self._host += taken
            self._refill_rx()
            self._update_interrupt()
        return len(taken)

    def wait_for_room(self, timeout: float | None = None) -> bool:
        """Block until the host queue can take more input (the guest read some); False on timeout."""
        with self._room:
            return self._room.wait_for(lambda: len(self._host) < HOST_QUEUE_BYTES, timeout)

    @property
    def pending_input(self) -> int:
        """Host bytes accepted by receive() that the guest has not read yet."""
        with self._lock:
            return len(self._host) + len(self._rx)

    @property
    def baud(self) -> float:
        """The programmed line speed: 1.8432 MHz / (16 * divisor)."""
        return INPUT_CLOCK_HZ / (16 * max(self._divisor, 1))

    @property
    def interrupt_line(self) -> bool:
        """The INTR pin's current level."""
        return self._intr

    def close(self) -> None:
        """Stop the character-timeout timer, if one is running."""
        with self._lock:
            self._timeout_deadline = None
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
