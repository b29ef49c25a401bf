"""pykvm's exception tree: one root, a few branches, data kept as attributes.

The CLI turns any PyKvmError into one line on stderr and a non-zero exit
status; a traceback means a bug in pykvm, never bad input.  Messages say what
went wrong and, where there is one, what to do about it.

    PyKvmError
     +-- KvmError             /dev/kvm or an ioctl failed (KvmIoctlError, KvmUnavailable, CapabilityMissing)
     +-- GuestMemoryError     a guest-physical access outside guest memory
     +-- LoaderError          a kernel/ELF/bzImage/initrd that cannot be loaded
     +-- ConfigError          bad user input: sizes, names, options
     +-- GuestError           the guest misbehaved and the VM was stopped
     +-- SnapshotError        a snapshot that cannot be written or restored (pykvm.vm.snapshot)
     +-- ContainerError       namespaces, mounts, cgroups, images, registries
          +-- SyscallError    a container system call (mount, unshare, ...) failed
"""
from __future__ import annotations

import errno as _errno
import os

__all__ = [
    "PyKvmError",
    "KvmError",
    "KvmUnavailable",
    "KvmIoctlError",
    "CapabilityMissing",
    "GuestMemoryError",
    "LoaderError",
    "ConfigError",
    "GuestError",
    "SnapshotError",
    "ContainerError",
    "SyscallError",
]


class PyKvmError(Exception):
    """Root of every error pykvm reports to a user.  `exit_code` is the CLI's exit status."""

    exit_code = 1


class KvmError(PyKvmError):
    """Something about KVM itself failed."""


class KvmUnavailable(KvmError):
    """/dev/kvm cannot be opened; the message says how to fix it."""

    def __init__(self, path: str, err: int):
        self.path = path
        self.errno = err
        if err == _errno.ENOENT:
            fix = ("the kvm module is not loaded or virtualization is off: "
                   "`modprobe kvm_intel` or `modprobe kvm_amd`, and enable VT-x/AMD-V in the firmware")
        elif err in (_errno.EACCES, _errno.EPERM):
            fix = ("permission denied: add yourself to the kvm group "
                   "(`sudo usermod -aG kvm $USER`, then log in again) or fix the ACL on " + path)
        else:
            fix = os.strerror(err)
        super().__init__(f"cannot open {path}: {fix}")


class KvmIoctlError(KvmError):
    """An ioctl failed.  Keeps the ioctl's name and errno (compare with the `errno` module)."""

    def __init__(self, ioctl: str, err: int, detail: str = ""):
        self.ioctl = ioctl
        self.errno = err
        name = _errno.errorcode.get(err, str(err))
        extra = f" ({detail})" if detail else ""
        super().__init__(f"{ioctl} failed: {name}: {os.strerror(err)}{extra}")


class CapabilityMissing(KvmError):
    """KVM_CHECK_EXTENSION said no to a capability pykvm needs."""

    def __init__(self, capability: str, why: str = ""):
        self.capability = capability
        tail = f" (needed for {why})" if why else ""
        super().__init__(f"this KVM lacks {capability}{tail}; a newer kernel may have it")


class GuestMemoryError(PyKvmError):
    """A guest-physical range that is not (wholly) inside guest memory."""

    def __init__(self, address: int, length: int, what: str = "access"):
        self.address = address
        self.length = length
        super().__init__(f"{what} at guest address {address:#x} (+{length:#x} bytes) is outside guest memory")


class LoaderError(PyKvmError):
    """A kernel image, ELF or initrd that cannot be loaded: bad input, exit status 2."""

    exit_code = 2


class ConfigError(PyKvmError):
    """Bad user input: a size, a name, an option.  Exit status 2, like click's usage errors."""

    exit_code = 2


class GuestError(PyKvmError):
    """The guest did something that stops the VM (triple fault, emulation failure, ...)."""


class SnapshotError(PyKvmError):
    """A snapshot directory that is missing, damaged, from the future or from another CPU.

    Exit status 2, like other bad input: nothing was started.
    """

    exit_code = 2


class ContainerError(PyKvmError):
    """A container, image or registry operation failed."""


class SyscallError(ContainerError):
    """A system call of the container launcher failed.  Keeps its name and errno."""

    def __init__(self, syscall: str, err: int, detail: str = ""):
        self.syscall = syscall
        self.errno = err
        name = _errno.errorcode.get(err, str(err))
        extra = f" ({detail})" if detail else ""
        super().__init__(f"{syscall} failed: {name}: {os.strerror(err)}{extra}")
