"""The thin KVM API layer: Kvm -> Vm -> Vcpu, each owning one file descriptor.

One method per ioctl, no boot policy.  The bindings are compiled against
<linux/kvm.h> (pykvm/vm/kvm/_build.py).  Import is lazy-friendly: nothing here
opens /dev/kvm until you create a Kvm.
"""
from pykvm.vm.kvm.exits import (FailEntry, Hlt, InternalError, Interrupted, IoIn, IoOut, MmioRead,
                             MmioWrite, Shutdown, SystemEvent, Unknown, VmExit)
from pykvm.vm.kvm.system import CpuidEntry, Kvm
from pykvm.vm.kvm.vcpu import Vcpu
from pykvm.vm.kvm.vm import Vm

__all__ = ["Kvm", "Vm", "Vcpu", "CpuidEntry", "VmExit", "IoIn", "IoOut", "MmioRead", "MmioWrite",
           "Hlt", "Shutdown", "InternalError", "FailEntry", "SystemEvent", "Interrupted", "Unknown"]
