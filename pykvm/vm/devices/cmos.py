"""CMOS RAM and real-time clock: the Motorola MC146818A behind ports 0x70/0x71.

Datasheet: Motorola MC146818A "Real-Time Clock Plus RAM (RTC)"; the PC's use
of it: the IBM PC/AT Technical Reference, "CMOS RAM Address Map".  Linux
reads the time from it at boot (drivers/rtc/rtc-cmos.c, arch/x86/kernel/rtc.c:
mach_get_cmos_time) and, without ACPI, probes it as the platform RTC.

Two ports: write a register number to the index port, then read or write
the register through the data port.

    0x70  index   bits 6..0 register number, bit 7 = 1 masks NMI (ignored here)
    0x71  data    the selected register

The clock is the host's clock in UTC, read at every access (kvmtool's
hw/rtc.c does the same); the guest cannot set it: writes to the time
registers are ignored, so the guest's idea of time never drifts from the
host's.  Registers that are not time keep what the guest writes (the
"battery-backed" RAM).  Status register A's UIP bit reads 1 during the
244 us before each second's update (datasheet: "UIP ... 244 us before the
update cycle"; QEMU's mc146818rtc.c UIP_HOLD_LENGTH): a guest that waits for
it to fall knows a second has just begun.  No RTC interrupt (IRQ 8) is
raised; a sleeping machine asks `seconds_until_alarm` when the alarm would
wake it (ACPI S3, see pykvm.vm.devices.acpi_pm).
"""
from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Cmos", "CMOS_BASE", "CMOS_LENGTH"]

CMOS_BASE = 0x70     # index port; the data port follows
CMOS_LENGTH = 2

INDEX_PORT = 0       # offsets from CMOS_BASE
DATA_PORT = 1
INDEX_MASK = 0x7F    # bit 7 of the index is the NMI mask, not part of the register number
CMOS_SIZE = 128      # bytes of CMOS (MC146818A: 14 clock registers + 114 RAM bytes)

# Clock registers (MC146818A, "Address Map")
REG_SECONDS = 0x00
REG_SECONDS_ALARM = 0x01
REG_MINUTES = 0x02
REG_MINUTES_ALARM = 0x03
REG_HOURS = 0x04
REG_HOURS_ALARM = 0x05
REG_DAY_OF_WEEK = 0x06   # 1 = Sunday
REG_DAY_OF_MONTH = 0x07
REG_MONTH = 0x08
REG_YEAR = 0x09          # two digits; the century is in REG_CENTURY
REG_A = 0x0A             # status register A
REG_B = 0x0B             # status register B
REG_C = 0x0C             # status register C: interrupt flags, cleared by reading
REG_D = 0x0D             # status register D
REG_CENTURY = 0x32       # IBM PC/AT: century in BCD (ACPI FADT "CENTURY" points here)

# Status register A
A_UIP = 1 << 7           # update in progress: never set here, the time is always readable
A_DV_32768HZ = 0x20      # divider bits 6..4 = 010: 32.768 kHz time base
A_RS_1024HZ = 0x06       # rate select bits 3..0 = 0110: 1.024 kHz periodic rate (PC default)

# Status register B
B_SET = 1 << 7           # guest is setting the time (updates frozen)
B_PIE = 1 << 6           # periodic interrupt enable
B_AIE = 1 << 5           # alarm interrupt enable
B_UIE = 1 << 4           # update-ended interrupt enable
B_DM_BINARY = 1 << 2     # data mode: 1 = binary, 0 = BCD
B_24HOUR = 1 << 1        # 1 = 24-hour mode, 0 = 12-hour with bit 7 of hours = PM
B_DEFAULT = B_24HOUR     # what a PC BIOS leaves: BCD, 24-hour

# Status register C
C_IRQF = 1 << 7          # an enabled interrupt flag is set
C_AF = 1 << 5            # alarm flag: the time matched the alarm registers

# Alarm registers: a value with both top bits set matches any time ("don't care")
ALARM_DONT_CARE = 0xC0
ALARMS = {REG_SECONDS_ALARM: REG_SECONDS, REG_MINUTES_ALARM: REG_MINUTES, REG_HOURS_ALARM: REG_HOURS}
UIP_LEAD_S = 244e-6      # UIP is 1 for this long before each update
SECONDS_PER_DAY = 86400  # the alarm repeats at least daily

# Status register D
D_VRT = 1 << 7           # valid RAM and time: the battery is fine

HOURS_PM = 1 << 7        # 12-hour mode: PM flag in the hours register

TIME_REGISTERS = {REG_SECONDS, REG_MINUTES, REG_HOURS, REG_DAY_OF_WEEK, REG_DAY_OF_MONTH,
                  REG_MONTH, REG_YEAR, REG_CENTURY}


def to_bcd(value: int) -> int:
    """Two decimal digits packed in one byte: 59 -> 0x59."""
    return (value // 10) << 4 | value % 10


class Cmos:
    """The RTC and CMOS RAM; `clock` returns seconds since the epoch (host UTC by default)."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.index = 0
        self.ram = bytearray(CMOS_SIZE)
        self.ram[REG_A] = A_DV_32768HZ | A_RS_1024HZ
        self.ram[REG_B] = B_DEFAULT
        self.ram[REG_D] = D_VRT

    def get_state(self) -> dict:
        """The selected register and the 128 bytes of RAM (the time registers are the host's clock)."""
        return {"index": self.index, "ram": self.ram.hex()}

    def set_state(self, state: dict) -> None:
        ram = bytes.fromhex(state["ram"])
        if len(ram) != CMOS_SIZE:
            raise ValueError(f"CMOS RAM of {len(ram)} bytes, not {CMOS_SIZE}")
        self.index, self.ram[:] = state["index"] & INDEX_MASK, ram

    def read(self, offset: int, size: int) -> int:
        if offset == INDEX_PORT:
            return self.index
        return self._read_register(self.index)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == INDEX_PORT:
            self.index = value & INDEX_MASK
        else:
            self._write_register(self.index, value & 0xFF)

    def _read_register(self, reg: int) -> int:
        if reg in TIME_REGISTERS:
            return self._time_register(reg)
        if reg == REG_A and self._update_in_progress():
            return self.ram[REG_A] | A_UIP
        if reg == REG_C:
            flags, self.ram[REG_C] = self.ram[REG_C], 0     # reading C acknowledges interrupts
            return flags
        return self.ram[reg]

    def _write_register(self, reg: int, value: int) -> None:
        if reg in TIME_REGISTERS or reg in (REG_C, REG_D):
            return                        # the host owns the clock; C and D are read-only
        if reg == REG_A:
            value &= ~A_UIP & 0xFF        # UIP is read-only
        self.ram[reg] = value

    def _update_in_progress(self) -> bool:
        """True during the UIP_LEAD_S before a second ends, unless the guest froze updates (SET)."""
        if self.ram[REG_B] & B_SET:
            return False
        now = self.clock()
        return now - int(now) >= 1 - UIP_LEAD_S

    def seconds_until_alarm(self) -> float | None:
        """How long until the time matches the alarm registers, or None if alarms are off (B.AIE)."""
        if not self.ram[REG_B] & B_AIE:
            return None
        now = self.clock()
        for ahead in range(1, SECONDS_PER_DAY + 1):
            if self._alarm_matches(int(now) + ahead):
                return int(now) + ahead - now
        return None

    def _alarm_matches(self, when: int) -> bool:
        return all(self.ram[alarm] & ALARM_DONT_CARE == ALARM_DONT_CARE
                   or self.ram[alarm] == self._time_register(reg, when)
                   for alarm, reg in ALARMS.items())

    def alarm_fired(self) -> None:
        """Latch the alarm in register C, as the chip does when the alarm time comes."""
        self.ram[REG_C] |= C_IRQF | C_AF

    def _time_register(self, reg: int, when: float | None = None) -> int:
        now = time.gmtime(self.clock() if when is None else when)
        values = {
            REG_SECONDS: now.tm_sec,
            REG_MINUTES: now.tm_min,
            REG_HOURS: now.tm_hour,
            REG_DAY_OF_WEEK: (now.tm_wday + 1) % 7 + 1,   # tm_wday 0 = Monday; RTC 1 = Sunday
            REG_DAY_OF_MONTH: now.tm_mday,
            REG_MONTH: now.tm_mon,
            REG_YEAR: now.tm_year % 100,
            REG_CENTURY: now.tm_year // 100,
        }
        value = values[reg]
        pm = 0
        if reg == REG_HOURS and not self.ram[REG_B] & B_24HOUR:
            pm = HOURS_PM if value >= 12 else 0
            value = (value % 12) or 12
        if not self.ram[REG_B] & B_DM_BINARY:
            value = to_bcd(value)
        return value | pm
