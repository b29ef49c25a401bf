"""The compiled KVM bindings against <linux/kvm.h>'s own ioctl numbers.

Every _IOR/_IOW ioctl number encodes the size of its argument (bits 16-29,
asm-generic/ioctl.h).  If our struct sizes ever disagreed with the kernel's,
these tests would say which.
"""
import pytest

from pykvm.vm.kvm.bindings import ffi, lib

IOC_SIZESHIFT, IOC_SIZEMASK = 16, (1 << 14) - 1  # asm-generic/ioctl.h


def ioctl_size(request: int) -> int:
    return (request >> IOC_SIZESHIFT) & IOC_SIZEMASK


@pytest.mark.parametrize("ioctl, ctype", [
    ("KVM_SET_USER_MEMORY_REGION", "struct kvm_userspace_memory_region"),
    ("KVM_GET_REGS", "struct kvm_regs"),
    ("KVM_SET_REGS", "struct kvm_regs"),
    ("KVM_GET_SREGS", "struct kvm_sregs"),
    ("KVM_SET_SREGS", "struct kvm_sregs"),
    ("KVM_GET_FPU", "struct kvm_fpu"),
    ("KVM_SET_MP_STATE", "struct kvm_mp_state"),
    ("KVM_SET_CPUID2", "struct kvm_cpuid2"),
    ("KVM_GET_SUPPORTED_CPUID", "struct kvm_cpuid2"),
    ("KVM_SET_MSRS", "struct kvm_msrs"),
    ("KVM_CREATE_PIT2", "struct kvm_pit_config"),
    ("KVM_IRQ_LINE", "struct kvm_irq_level"),
    ("KVM_GET_LAPIC", "struct kvm_lapic_state"),
    ("KVM_GET_MP_STATE", "struct kvm_mp_state"),
    ("KVM_ENABLE_CAP", "struct kvm_enable_cap"),
    ("KVM_IOEVENTFD", "struct kvm_ioeventfd"),
    ("KVM_IRQFD", "struct kvm_irqfd"),
    ("KVM_SET_MP_STATE", "struct kvm_mp_state"),
    ("KVM_GET_CPUID2", "struct kvm_cpuid2"),
    ("KVM_GET_XSAVE", "struct kvm_xsave"),
    ("KVM_SET_XSAVE", "struct kvm_xsave"),
    ("KVM_GET_XCRS", "struct kvm_xcrs"),
    ("KVM_SET_XCRS", "struct kvm_xcrs"),
    ("KVM_GET_VCPU_EVENTS", "struct kvm_vcpu_events"),
    ("KVM_SET_VCPU_EVENTS", "struct kvm_vcpu_events"),
    ("KVM_GET_DEBUGREGS", "struct kvm_debugregs"),
    ("KVM_SET_DEBUGREGS", "struct kvm_debugregs"),
    ("KVM_GET_IRQCHIP", "struct kvm_irqchip"),
    ("KVM_SET_IRQCHIP", "struct kvm_irqchip"),
    ("KVM_GET_PIT2", "struct kvm_pit_state2"),
    ("KVM_SET_PIT2", "struct kvm_pit_state2"),
    ("KVM_GET_CLOCK", "struct kvm_clock_data"),
    ("KVM_SET_CLOCK", "struct kvm_clock_data"),
])
def test_struct_size_matches_ioctl_number(ioctl, ctype):
    encoded = ioctl_size(getattr(lib, ioctl))
    assert ffi.sizeof(ctype) == encoded, f"{ctype}: sizeof {ffi.sizeof(ctype)}, {ioctl} encodes {encoded}"


def test_kvm_run_union_members_share_one_offset():
    offsets = {f: ffi.offsetof("struct kvm_run", f) for f in ("io", "mmio", "internal", "system_event")}
    assert len(set(offsets.values())) == 1, offsets


def test_api_version_constant():
    assert lib.KVM_API_VERSION == 12
