"""Vm: one virtual machine's file descriptor (api.rst section 4, "vm ioctl"s).

A Vm holds guest memory slots, the in-kernel interrupt controllers and timer,
and creates vCPUs.  It knows nothing about how a guest boots: that policy
lives in pykvm.vm.machine and pykvm.vm.boot.
"""
from __future__ import annotations

from pykvm.vm.kvm.bindings import ffi, lib
from pykvm.vm.kvm.fd import FdObject

__all__ = ["Vm", "PIT_SPEAKER_DUMMY", "IRQCHIP_PIC_MASTER", "IRQCHIP_PIC_SLAVE", "IRQCHIP_IOAPIC"]

PIT_SPEAKER_DUMMY = lib.KVM_PIT_SPEAKER_DUMMY   # create_pit2 flag: the kernel answers port 0x61 too
IRQCHIP_PIC_MASTER = lib.KVM_IRQCHIP_PIC_MASTER   # get_irqchip: the 8259 at ports 0x20-0x21 (IRQ 0-7)
IRQCHIP_PIC_SLAVE = lib.KVM_IRQCHIP_PIC_SLAVE     # the 8259 at ports 0xa0-0xa1 (IRQ 8-15)
IRQCHIP_IOAPIC = lib.KVM_IRQCHIP_IOAPIC           # the IOAPIC at 0xfec00000


class Vm(FdObject):
    """A VM created by Kvm.create_vm()."""

    def __init__(self, fd: int, kvm):
        super().__init__(fd)
        self.kvm = kvm
        self.vcpus = []

    def check_extension(self, capability: str) -> int:
        """Wraps KVM_CHECK_EXTENSION on the VM fd (some answers are per-VM)."""
        return self._ioctl_int("KVM_CHECK_EXTENSION", getattr(lib, capability))

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, size: int,
                               userspace_addr: int, flags: int = 0) -> None:
        """Wraps KVM_SET_USER_MEMORY_REGION (KVM_CAP_USER_MEMORY).

        Maps `size` bytes of our address space at `userspace_addr` into the
        guest at `guest_phys_addr`, as memory slot `slot`.
        """
        region = ffi.new("struct kvm_userspace_memory_region *", {
            "slot": slot, "flags": flags, "guest_phys_addr": guest_phys_addr,
            "memory_size": size, "userspace_addr": userspace_addr})
        self._ioctl("KVM_SET_USER_MEMORY_REGION", region)

    def set_tss_addr(self, address: int) -> None:
        """Wraps KVM_SET_TSS_ADDR (KVM_CAP_SET_TSS_ADDR): three pages Intel VMX uses for real mode."""
        self._ioctl_int("KVM_SET_TSS_ADDR", address)

    def set_identity_map_addr(self, address: int) -> None:
        """Wraps KVM_SET_IDENTITY_MAP_ADDR (KVM_CAP_SET_IDENTITY_MAP_ADDR): one page for VMX's EPT identity map."""
        value = ffi.new("__u64 *", address)
        self._ioctl("KVM_SET_IDENTITY_MAP_ADDR", value)

    def create_irqchip(self) -> None:
        """Wraps KVM_CREATE_IRQCHIP (KVM_CAP_IRQCHIP): in-kernel 8259 PICs, IOAPIC and per-vCPU LAPICs."""
        self._ioctl_int("KVM_CREATE_IRQCHIP")

    def create_pit2(self, flags: int = 0) -> None:
        """Wraps KVM_CREATE_PIT2 (KVM_CAP_PIT2): an in-kernel 8254 timer on ports 0x40-0x43, IRQ 0.

        With `flags` = PIT_SPEAKER_DUMMY the kernel also answers port 0x61, the
        PC's "system control port B": bit 0 gates PIT channel 2, bit 1 enables
        the speaker (a dummy: no sound), bit 5 reads channel 2's output.
        """
        config = ffi.new("struct kvm_pit_config *", {"flags": flags})
        self._ioctl("KVM_CREATE_PIT2", config)

    def irq_line(self, irq: int, level: int) -> None:
        """Wraps KVM_IRQ_LINE (KVM_CAP_IRQCHIP): drive interrupt line `irq` to `level`.

        On x86, irq 0-15 reach both the PICs and the IOAPIC, 16-23 the IOAPIC.
        Safe to call from any thread; it wakes a vCPU sitting in HLT.
        """
        line = ffi.new("struct kvm_irq_level *", {"irq": irq, "level": level})
        self._ioctl("KVM_IRQ_LINE", line)

    def ioeventfd(self, fd: int, address: int, length: int, datamatch: int | None = None,
                  deassign: bool = False) -> None:
        """Wraps KVM_IOEVENTFD (KVM_CAP_IOEVENTFD): a guest MMIO write signals eventfd `fd`.

        A write of `length` bytes to guest-physical `address` (and, with
        `datamatch`, only of that value) no longer exits to user space: KVM
        adds 1 to the eventfd's counter and resumes the guest at once.
        `deassign` removes a registration made with the same arguments.
        """
        flags = 0
        if datamatch is not None:
            flags |= lib.KVM_IOEVENTFD_FLAG_DATAMATCH
        if deassign:
            flags |= lib.KVM_IOEVENTFD_FLAG_DEASSIGN
        request = ffi.new("struct kvm_ioeventfd *", {
            "datamatch": datamatch or 0, "addr": address, "len": length, "fd": fd, "flags": flags})
        self._ioctl("KVM_IOEVENTFD", request)

    def irqfd(self, fd: int, gsi: int, deassign: bool = False) -> None:
        """Wraps KVM_IRQFD (KVM_CAP_IRQFD): writing eventfd `fd` raises interrupt `gsi`.

        Each write injects an edge on the in-kernel irqchip (needs
        KVM_CREATE_IRQCHIP first), from any thread, without KVM_IRQ_LINE.
        """
        flags = lib.KVM_IRQFD_FLAG_DEASSIGN if deassign else 0
        request = ffi.new("struct kvm_irqfd *", {"fd": fd, "gsi": gsi, "flags": flags})
        self._ioctl("KVM_IRQFD", request)

    def get_irqchip(self, chip_id: int) -> bytes:
        """Wraps KVM_GET_IRQCHIP (KVM_CAP_IRQCHIP): one in-kernel chip's state, `struct kvm_irqchip`.

        `chip_id` is IRQCHIP_PIC_MASTER, IRQCHIP_PIC_SLAVE or IRQCHIP_IOAPIC.
        """
        return self._ioctl_get("KVM_GET_IRQCHIP", "struct kvm_irqchip", {"chip_id": chip_id})

    def set_irqchip(self, data: bytes) -> None:
        """Wraps KVM_SET_IRQCHIP (KVM_CAP_IRQCHIP); the chip is named inside `data`."""
        self._ioctl_set("KVM_SET_IRQCHIP", "struct kvm_irqchip", data)

    def get_pit2(self) -> bytes:
        """Wraps KVM_GET_PIT2 (KVM_CAP_PIT_STATE2): the 8254's three channels, `struct kvm_pit_state2`."""
        return self._ioctl_get("KVM_GET_PIT2", "struct kvm_pit_state2")

    def set_pit2(self, data: bytes) -> None:
        """Wraps KVM_SET_PIT2 (KVM_CAP_PIT_STATE2)."""
        self._ioctl_set("KVM_SET_PIT2", "struct kvm_pit_state2", data)

    def get_clock(self) -> bytes:
        """Wraps KVM_GET_CLOCK (KVM_CAP_ADJUST_CLOCK): the kvmclock value guests read, in ns."""
        return self._ioctl_get("KVM_GET_CLOCK", "struct kvm_clock_data")

    def set_clock(self, nanoseconds: int) -> None:
        """Wraps KVM_SET_CLOCK (KVM_CAP_ADJUST_CLOCK): set the kvmclock to `nanoseconds`."""
        data = ffi.new("struct kvm_clock_data *", {"clock": nanoseconds})
        self._ioctl("KVM_SET_CLOCK", data)

    def create_vcpu(self, vcpu_id: int = 0):
        """Wraps KVM_CREATE_VCPU: a new vCPU with the given APIC id."""
        from pykvm.vm.kvm.vcpu import Vcpu

        vcpu = Vcpu(self._ioctl_int("KVM_CREATE_VCPU", vcpu_id), self, vcpu_id)
        self.vcpus.append(vcpu)
        return vcpu

    def close(self) -> None:
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus.clear()
        super().close()
