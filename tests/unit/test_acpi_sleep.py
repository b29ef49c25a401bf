"""ACPI S3 parts without a VM: PM1 event registers, the S3 request, the CMOS UIP and alarm."""
from __future__ import annotations

import calendar

from pykvm.vm.arch.x86 import acpi
from pykvm.vm.devices import cmos as rtc
from pykvm.vm.devices.acpi_pm import PM1_RTC, PM1_WAK_STS, AcpiPmControl, AcpiPmEvent

NOON = calendar.timegm((2026, 12, 2, 12, 0, 0))   # 12:00:00 UTC, a whole second


def test_pm1_enable_is_read_write_and_status_is_write_one_to_clear():
    event = AcpiPmEvent()
    event.write(2, 2, PM1_RTC)                                  # PM1_EN.RTC_EN, as s3.c does
    assert event.read(2, 2) == PM1_RTC and event.read(0, 2) == 0
    event.woke(PM1_RTC)
    assert event.read(0, 4) == (PM1_WAK_STS | PM1_RTC) | PM1_RTC << 16
    event.write(0, 2, PM1_WAK_STS)                              # clear WAK_STS only
    assert event.read(0, 2) == PM1_RTC and event.enable == PM1_RTC


def test_slp_typ_1_suspends_5_and_0_power_off():
    calls = []
    control = AcpiPmControl(stop=lambda status: calls.append(("stop", status)),
                            suspend=lambda: calls.append(("suspend",)))
    control.write(0, 2, 0x2400)                                 # SLP_EN | SLP_TYP 1
    control.write(0, 2, 0x2000)                                 # SLP_EN | SLP_TYP 0
    assert calls == [("suspend",), ("stop", 0)]


def test_uip_is_set_only_just_before_a_second_ends():
    now = [NOON + 0.5]
    chip = rtc.Cmos(clock=lambda: now[0])
    assert not chip._read_register(rtc.REG_A) & rtc.A_UIP
    now[0] = NOON + 1 - rtc.UIP_LEAD_S / 2
    assert chip._read_register(rtc.REG_A) & rtc.A_UIP
    chip._write_register(rtc.REG_B, rtc.B_DEFAULT | rtc.B_SET)  # updates frozen: no UIP
    assert not chip._read_register(rtc.REG_A) & rtc.A_UIP


def test_alarm_dont_care_fires_next_second_and_exact_alarms_wait():
    now = [NOON + 0.25]
    chip = rtc.Cmos(clock=lambda: now[0])
    assert chip.seconds_until_alarm() is None                   # AIE off
    chip._write_register(rtc.REG_B, rtc.B_DEFAULT | rtc.B_AIE)
    for alarm in (rtc.REG_SECONDS_ALARM, rtc.REG_MINUTES_ALARM, rtc.REG_HOURS_ALARM):
        chip._write_register(alarm, rtc.ALARM_DONT_CARE)
    assert chip.seconds_until_alarm() == 0.75
    chip._write_register(rtc.REG_SECONDS_ALARM, 0x30)           # BCD 30: at 12:00:30
    assert chip.seconds_until_alarm() == 29.75
    chip.alarm_fired()
    assert chip._read_register(rtc.REG_C) == rtc.C_IRQF | rtc.C_AF
    assert chip._read_register(rtc.REG_C) == 0                  # reading C clears it


def test_waking_vector_is_read_from_the_facs():
    table = bytearray(acpi.facs())
    assert acpi.waking_vector(table) == 0
    table[acpi.FACS_WAKING_VECTOR:acpi.FACS_WAKING_VECTOR + 4] = (0x1000).to_bytes(4, "little")
    assert acpi.waking_vector(table) == 0x1000
