"""Benchmark: what the bus and the UART add to one VM exit (pure Python, no KVM).

Run: .venv/bin/python tests/bench/bus_dispatch.py
Prints min/median/max nanoseconds per access over 7 repeats, and the bus's
overhead as a ratio against calling the device directly (the peer: no bus).
A VM exit costs ~10 us on this machine, so a few hundred ns is a few percent.
"""
from __future__ import annotations

import statistics
import timeit

from pykvm.vm.devices.bus import Bus, BusDevice
from pykvm.vm.devices.serial import COM1_BASE, COM1_LENGTH, Serial16550

REPEATS = 7
NUMBER = 200_000


class Null(BusDevice):
    def read(self, offset, size):
        return 0

    def write(self, offset, size, value):
        pass


def per_access_ns(stmt: str, env: dict) -> list[float]:
    times = timeit.repeat(stmt, globals=env, number=NUMBER, repeat=REPEATS)
    return sorted(t / NUMBER * 1e9 for t in times)


def report(label: str, ns: list[float]) -> None:
    print(f"{label:40s} min {ns[0]:6.0f}  median {statistics.median(ns):6.0f}  max {ns[-1]:6.0f} ns")


def main() -> None:
    bus, null = Bus("pio"), Null()
    for i in range(16):                           # a realistic number of neighbours to search
        bus.insert(Null(), 0x100 + 0x10 * i, 8)
    bus.insert(null, COM1_BASE, COM1_LENGTH)
    uart_bus = Bus("pio")
    uart = Serial16550(lambda data: None, lambda level: None)
    uart_bus.insert(uart, COM1_BASE, COM1_LENGTH)
    env = dict(bus=bus, null=null, uart_bus=uart_bus, uart=uart)

    direct = per_access_ns("null.write(5, 1, 0x41)", env)
    via_bus = per_access_ns("bus.write(0x3fd, 1, 0x41)", env)
    report("device.write, direct (the peer)", direct)
    report("bus.write -> no-op device", via_bus)
    report("bus.read  -> no-op device", per_access_ns("bus.read(0x3fd, 1)", env))
    report("bus.read  unmapped (all-ones)", per_access_ns("bus.read(0x80, 1)", env))
    report("bus.write -> UART THR (outb 0x3f8)", per_access_ns("uart_bus.write(0x3f8, 1, 0x41)", env))
    report("bus.read  -> UART LSR (inb 0x3fd)", per_access_ns("uart_bus.read(0x3fd, 1)", env))
    overhead = statistics.median(via_bus) - statistics.median(direct)
    print(f"bus overhead per access: {overhead:.0f} ns "
          f"(bus/direct = {statistics.median(via_bus) / statistics.median(direct):.2f}x)")
    uart.close()


if __name__ == "__main__":
    import logging
    logging.disable(logging.WARNING)              # the unmapped read is logged once; keep output clean
    main()
