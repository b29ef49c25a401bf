"""ACPI S3 on a real vCPU: a guest suspends to RAM, the RTC alarm wakes it at its waking vector.

The guest (32-bit PVH, so pykvm leaves ACPI tables) does what an OS does
before S3 (ACPI 6.5, 16.1.3 and 7.4.2): writes its real-mode resume address
into the FACS, arms a wake source (CMOS alarm interrupt + PM1_EN.RTC_EN),
and writes SLP_TYP 1 | SLP_EN to PM1a_CNT.  The resume code, copied below
1 MiB, reports PM1a_STS through isa-debug-exit: WAK_STS and RTC_STS set
means woken by the alarm.
"""
import pytest

from guestasm import pvh_elf
from pykvm.vm.arch.x86 import acpi
from pykvm.vm import layout
from pykvm.vm.machine import Machine, MachineConfig

pytestmark = pytest.mark.kvm

RESUME_AT = 0x1000
FACS_WAKING_VECTOR = layout.ACPI_TABLES + acpi.FACS_OFFSET + acpi.FACS_WAKING_VECTOR
PM1_WAK_RTC_HIGH_BYTE = 0x84          # PM1_STS bits 15 (WAK_STS) and 10 (RTC_STS), >> 8

S3_GUEST = f"""
    movl ${RESUME_AT:#x}, {FACS_WAKING_VECTOR:#x}
    mov $resume, %esi
    mov ${RESUME_AT:#x}, %edi
    mov $(resume_end - resume), %ecx
    rep movsb
    mov $0x0b, %al                    # CMOS register B: alarm interrupt enable, 24-hour
    out %al, $0x70
    mov $0x22, %al
    out %al, $0x71
    mov $0xc0, %bl                    # seconds, minutes, hours alarms: "don't care"
    mov $1, %al
    out %al, $0x70
    mov %bl, %al
    out %al, $0x71
    mov $3, %al
    out %al, $0x70
    mov %bl, %al
    out %al, $0x71
    mov $5, %al
    out %al, $0x70
    mov %bl, %al
    out %al, $0x71
    mov $0x602, %dx                   # PM1a_EN: RTC_EN
    mov $0x400, %ax
    out %ax, %dx
    mov $0x604, %dx                   # PM1a_CNT: SLP_TYP 1 (S3) | SLP_EN
    mov $0x2400, %ax
    out %ax, %dx
asleep:
    jmp asleep                        # never runs on: the CPU state is gone
resume:
    .code16
    mov $0x600, %dx                   # PM1a_STS
    in %dx, %ax
    shr $8, %ax
    out %al, $0xf4                    # isa-debug-exit: the status's high byte
resume_end:
    .code32
"""


def test_s3_wakes_on_the_rtc_alarm_at_the_waking_vector_in_real_mode(tmp_path):
    kernel = pvh_elf(S3_GUEST, tmp_path / "s3.elf")
    with Machine(MachineConfig(kernel=kernel, output=lambda data: None)) as machine:
        status = machine.run()
        sregs = machine.vcpu.get_sregs()
    assert status == (PM1_WAK_RTC_HIGH_BYTE << 1) | 1, f"exit status {status:#x}"
    assert sregs.cr0 & 1 == 0, f"cr0 {sregs.cr0:#x}: not real mode"
    assert (sregs.cs.selector, sregs.cs.base) == (RESUME_AT >> 4, RESUME_AT)


def test_s3_with_no_wake_source_stops_the_vm(tmp_path):
    kernel = pvh_elf("""
        mov $0x604, %dx
        mov $0x2400, %ax
        out %ax, %dx
    1:  jmp 1b
    """, tmp_path / "s3-forever.elf")
    with Machine(MachineConfig(kernel=kernel, output=lambda data: None)) as machine:
        assert machine.run() == 0
