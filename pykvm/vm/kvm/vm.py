"""Vm: one virtual machine's file descriptor (api.rst section 4, "vm ioctl"s).

A Vm holds guest memory slots, the in-kernel interrupt controllers and timer,
and creates vCPUs.  It knows nothing about how a guest boots: that policy
lives in pykvm.vm.machine and pykvm.vm.boot.
"""
from __future__ import annotations

from pykvm.vm.kvm.bindings import ffi, lib
from pykvm.vm.kvm.fd import FdObject

__all__ = ["Vm"]


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
        """Wraps KVM_CREATE_PIT2 (KVM_CAP_PIT2): an in-kernel 8254 timer on ports 0x40-0x43, IRQ 0."""
        config = ffi.new("struct kvm_pit_config *", {"flags": flags})
        self._ioctl("KVM_CREATE_PIT2", config)

    def irq_line(self, irq: int, level: int) -> None:
        """Wraps KVM_IRQ_LINE (KVM_CAP_IRQCHIP): drive interrupt line `irq` to `level`.

        On x86, irq 0-15 reach both the PICs and the IOAPIC, 16-23 the IOAPIC.
        Safe to call from any thread; it wakes a vCPU sitting in HLT.
        """
        line = ffi.new("struct kvm_irq_level *", {"irq": irq, "level": level})
        self._ioctl("KVM_IRQ_LINE", line)

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
