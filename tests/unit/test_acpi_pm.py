"""ACPI PM1a event block (ACPI 6.5, 4.8.3.1): PM1_STS reads 0, PM1_EN reads back its defined bits."""
from pykvm.vm.devices.acpi_pm import (PM1_EN, PM1_EN_BITS, PM1_GBL_EN, PM1_PWRBTN_EN, PM1_STS,
                                   AcpiPmEvent)


def test_status_reads_zero_and_ignores_write_one_to_clear():
    pm = AcpiPmEvent()
    pm.write(PM1_STS, 2, 0xFFFF)                      # Linux clears every status bit at start
    assert pm.read(PM1_STS, 2) == 0
    assert pm.read(PM1_EN, 2) == 0


def test_enable_keeps_only_defined_bits():
    pm = AcpiPmEvent()
    pm.write(PM1_EN, 2, 0xFFFF)
    assert pm.read(PM1_EN, 2) == PM1_EN_BITS == 0x4721, hex(pm.read(PM1_EN, 2))


def test_byte_and_dword_accesses_land_in_the_right_register():
    pm = AcpiPmEvent()
    pm.write(PM1_EN + 1, 1, PM1_PWRBTN_EN >> 8)         # high byte of PM1_EN
    assert pm.read(PM1_EN, 2) == PM1_PWRBTN_EN
    pm.write(PM1_STS, 4, (PM1_GBL_EN << 16) | 0xFFFF)   # one dword: clear status, set GBL_EN
    assert pm.read(PM1_STS, 4) == PM1_GBL_EN << 16, hex(pm.read(PM1_STS, 4))
    assert pm.read(PM1_EN, 1) == PM1_GBL_EN
