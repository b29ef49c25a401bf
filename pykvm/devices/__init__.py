"""Emulated devices: the PIO/MMIO buses and one module per device."""
