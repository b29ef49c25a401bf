"""The two 8259A PICs as a PC BIOS leaves them: initialised, vectors 08h and 70h, most IRQs masked.

Spec: Intel 8259A datasheet, "Initialization Command Words" (ICW1-ICW4) and
OCW1 (the interrupt mask register); the values are SeaBIOS's (src/hw/pic.c:
pic_setup, enable_hwirq).  After reset an 8259A is not initialised: KVM's
in-kernel PICs (arch/x86/kvm/i8259.c) start with vector base 0 and nothing
masked, so an interrupt would arrive on an exception's vector.  A BIOS
programs them before any OS runs:

    master (ports 0x20-0x21)  IRQ 0-7  -> INT 08h-0Fh, slave on IRQ 2
    slave  (ports 0xa0-0xa1)  IRQ 8-15 -> INT 70h-77h, cascade identity 2

then masks every line but the cascade (PIC_IRQMASK_DEFAULT) and unmasks
each line whose device it drives.  pykvm leaves unmasked the lines of the
devices both it and SeaBIOS have: the PIT's IRQ 0 (the BIOS tick, 18.2 Hz:
pit.py), the RTC's IRQ 8 and the FPU's IRQ 13.  Every line stays
edge-triggered (ELCR 0): SeaBIOS makes IRQ 10 and 11 level-triggered for
PCI INTx, and pykvm has no PCI device, while its virtio-mmio devices signal
edges on those lines.

A kernel that runs with interrupts enabled reprograms the PICs first (Linux,
the tiny kernel's pic.c); kvm-unit-tests masks them; a real-mode program
(kvm-unit-tests' realmode) finds the BIOS tick at INT 08h, as under QEMU.
KVM_GET_IRQCHIP / KVM_SET_IRQCHIP move one chip's state, struct kvm_pic_state.
"""
from __future__ import annotations

from pykvm.vm.kvm.bindings import ffi

__all__ = ["bios_state", "MASTER_VECTOR_BASE", "SLAVE_VECTOR_BASE", "UNMASKED_IRQS", "irq_vector"]

MASTER_VECTOR_BASE = 0x08      # ICW2: IRQ 0-7 -> INT 08h-0Fh (SeaBIOS BIOS_HWIRQ0_VECTOR)
SLAVE_VECTOR_BASE = 0x70       # ICW2: IRQ 8-15 -> INT 70h-77h (BIOS_HWIRQ8_VECTOR)
CASCADE_IRQ = 2                # ICW3: the slave's output drives master IRQ 2
TIMER_IRQ = 0                  # the PIT's channel 0 (the BIOS tick)
RTC_IRQ = 8                    # the CMOS real-time clock
FPU_IRQ = 13                   # the math coprocessor's error line
UNMASKED_IRQS = (TIMER_IRQ, CASCADE_IRQ, RTC_IRQ, FPU_IRQ)
IRQS_PER_CHIP = 8


def irq_vector(irq: int) -> int:
    """The vector a BIOS-programmed PIC pair gives ISA IRQ `irq` (0-15)."""
    if irq < IRQS_PER_CHIP:
        return MASTER_VECTOR_BASE + irq
    return SLAVE_VECTOR_BASE + irq - IRQS_PER_CHIP


def bios_state(chip: bytes, slave: bool) -> bytes:
    """`chip` (a struct kvm_irqchip from KVM_GET_IRQCHIP) as the BIOS leaves that PIC."""
    state = ffi.new("struct kvm_irqchip *")
    ffi.buffer(state)[:] = chip
    pic = state.chip.pic
    first_irq = IRQS_PER_CHIP if slave else 0
    pic.irq_base = SLAVE_VECTOR_BASE if slave else MASTER_VECTOR_BASE      # ICW2
    pic.imr = _mask(first_irq)                                             # OCW1
    pic.init4 = 1                         # ICW1 said ICW4 follows; ICW4: 8086 mode, normal EOI
    pic.auto_eoi = 0
    pic.special_fully_nested_mode = 0
    pic.init_state = 0                    # initialisation done: the next writes are OCWs
    pic.elcr = 0                          # every line edge-triggered
    pic.irr = pic.isr = pic.priority_add = pic.read_reg_select = 0
    return bytes(ffi.buffer(state))


def _mask(first_irq: int) -> int:
    """The chip's interrupt mask register: 1 = masked, for IRQs first_irq .. first_irq + 7."""
    unmasked = sum(1 << (irq - first_irq) for irq in UNMASKED_IRQS
                   if first_irq <= irq < first_irq + IRQS_PER_CHIP)
    return ~unmasked & 0xFF
