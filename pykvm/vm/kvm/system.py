"""Kvm: the /dev/kvm system file descriptor (Documentation/virt/kvm/api.rst, section 4).

    kvm = Kvm()                 # open /dev/kvm, check KVM_GET_API_VERSION == 12
    vm = kvm.create_vm()        # KVM_CREATE_VM
    vcpu = vm.create_vcpu(0)    # KVM_CREATE_VCPU
"""
from __future__ import annotations

import errno
import os
from typing import NamedTuple

from pykvm.errors import CapabilityMissing, KvmError, KvmUnavailable
from pykvm.vm.kvm.bindings import ffi, lib
from pykvm.vm.kvm.fd import FdObject
from pykvm.vm.kvm.vcpu import MAX_CPUID_ENTRIES

__all__ = ["Kvm", "CpuidEntry", "REQUIRED_CAPABILITIES", "DEFAULT_DEVICE", "kvm_backend"]

DEFAULT_DEVICE = "/dev/kvm"
DEVICE_ENV = "PYKVM_KVM_DEVICE"   # overrides the device path (other KVM nodes, and tests)

# What pykvm needs from KVM, and why: `pykvm check` lists these, and a Machine
# requires each of them before it creates a VM.
REQUIRED_CAPABILITIES = {
    "KVM_CAP_USER_MEMORY": "guest memory from our own mmap (KVM_SET_USER_MEMORY_REGION)",
    "KVM_CAP_IRQCHIP": "the in-kernel PIC, IOAPIC and LAPIC",
    "KVM_CAP_PIT2": "the in-kernel 8254 timer (KVM_CREATE_PIT2)",
    "KVM_CAP_MP_STATE": "seeing a halted vCPU (KVM_GET_MP_STATE: a guest stopped in `cli; hlt`) "
                        "and application processors waiting for a start-up IPI (--cpus)",
    "KVM_CAP_SET_TSS_ADDR": "KVM_SET_TSS_ADDR (Intel VMX needs a TSS page)",
    "KVM_CAP_EXT_CPUID": "KVM_GET_SUPPORTED_CPUID / KVM_SET_CPUID2",
    "KVM_CAP_IMMEDIATE_EXIT": "stopping a running vCPU cleanly (Ctrl-A x)",
}

# The kernel module behind /dev/kvm, and what it is (checked in this order).
KVM_BACKENDS = (("kvm_pvm", "PVM, software"), ("kvm_intel", "Intel VMX, hardware"),
                ("kvm_amd", "AMD SVM, hardware"))


def kvm_backend() -> str:
    """Which KVM module backs /dev/kvm: PVM is software virtualization, VMX and SVM are hardware."""
    from pathlib import Path

    for module, name in KVM_BACKENDS:
        if Path("/sys/module", module).exists():
            return name
    return "unknown"


class CpuidEntry(NamedTuple):
    """One struct kvm_cpuid_entry2: the answer to CPUID(function, index)."""

    function: int
    index: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int


class Kvm(FdObject):
    """The KVM subsystem: /dev/kvm opened read-write."""

    def __init__(self, path: str | None = None):
        path = path or os.environ.get(DEVICE_ENV) or DEFAULT_DEVICE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise KvmUnavailable(path, e.errno) from None
        super().__init__(fd)
        self.path = path
        version = self.api_version()
        if version != lib.KVM_API_VERSION:
            self.close()
            raise KvmError(f"{path}: KVM API version {version}, pykvm needs {lib.KVM_API_VERSION}")

    def api_version(self) -> int:
        """Wraps KVM_GET_API_VERSION (always 12 on any kernel since 2.6.22)."""
        return self._ioctl_int("KVM_GET_API_VERSION")

    def check_extension(self, capability: str) -> int:
        """Wraps KVM_CHECK_EXTENSION: 0 if `capability` (a KVM_CAP_* name) is missing, else >0."""
        return self._ioctl_int("KVM_CHECK_EXTENSION", getattr(lib, capability))

    def require(self, capability: str, why: str = "") -> int:
        """Like check_extension, but raises CapabilityMissing naming the capability."""
        value = self.check_extension(capability)
        if value <= 0:
            raise CapabilityMissing(capability, why or REQUIRED_CAPABILITIES.get(capability, ""))
        return value

    def vcpu_mmap_size(self) -> int:
        """Wraps KVM_GET_VCPU_MMAP_SIZE: bytes to mmap from a vCPU fd (struct kvm_run and more)."""
        return self._ioctl_int("KVM_GET_VCPU_MMAP_SIZE")

    def supported_cpuid(self) -> list[CpuidEntry]:
        """Wraps KVM_GET_SUPPORTED_CPUID (needs KVM_CAP_EXT_CPUID): the CPUID KVM can offer guests."""
        cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": MAX_CPUID_ENTRIES, "entries": MAX_CPUID_ENTRIES})
        self._ioctl("KVM_GET_SUPPORTED_CPUID", cpuid)
        return [CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
                for e in cpuid.entries[0:cpuid.nent]]

    def msr_index_list(self) -> list[int]:
        """Wraps KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves and restores for a vCPU."""
        probe = ffi.new("struct kvm_msr_list *", {"nmsrs": 0, "indices": 0})
        try:
            self._ioctl("KVM_GET_MSR_INDEX_LIST", probe)
        except KvmError as e:
            if getattr(e, "errno", None) != errno.E2BIG:
                raise
        count = probe.nmsrs
        msrs = ffi.new("struct kvm_msr_list *", {"nmsrs": count, "indices": count})
        self._ioctl("KVM_GET_MSR_INDEX_LIST", msrs)
        return list(msrs.indices[0:msrs.nmsrs])

    def create_vm(self):
        """Wraps KVM_CREATE_VM (machine type 0): a new, empty VM."""
        from pykvm.vm.kvm.vm import Vm

        return Vm(self._ioctl_int("KVM_CREATE_VM", 0), self)
