"""FdObject: the common base of Kvm, Vm and Vcpu.

Each KVM object owns exactly one file descriptor (rust-vmm's kvm-ioctls does
the same), closes it in close(), and can be used with `with`.  `_ioctl` is the
one place an ioctl is issued: it looks the request number up by name in the
compiled bindings and turns a failure into KvmIoctlError(name, errno).
"""
from __future__ import annotations

import os

from pykvm.errors import KvmIoctlError
from pykvm.vm.kvm.bindings import ffi, lib

__all__ = ["FdObject"]


class FdObject:
    """Owns one fd; closeable and usable as a context manager."""

    fd = -1  # until __init__ has an fd: close() and __del__ are safe on a half-built object

    def __init__(self, fd: int):
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except OSError:
            pass

    def _ioctl(self, name: str, arg=ffi.NULL) -> int:
        """Issue ioctl `name` (a KVM_* request) with a pointer argument."""
        ret = lib.ioctl_ptr(self.fd, getattr(lib, name), arg)
        if ret < 0:
            raise KvmIoctlError(name, ffi.errno)
        return ret

    def _ioctl_get(self, name: str, ctype: str, init=None) -> bytes:
        """Issue ioctl `name` that fills a `ctype` (e.g. "struct kvm_regs"); return its bytes."""
        value = ffi.new(ctype + " *", init)
        self._ioctl(name, value)
        return bytes(ffi.buffer(value))

    def _ioctl_set(self, name: str, ctype: str, data: bytes) -> None:
        """Issue ioctl `name` with a `ctype` whose bytes are `data` (as _ioctl_get returned them)."""
        value = ffi.new(ctype + " *")
        assert len(data) == ffi.sizeof(value[0]), f"{ctype} is {ffi.sizeof(value[0])} bytes, not {len(data)}"
        ffi.buffer(value)[:] = data
        self._ioctl(name, value)

    def _ioctl_int(self, name: str, arg: int = 0) -> int:
        """Issue ioctl `name` with an integer argument."""
        ret = lib.ioctl_int(self.fd, getattr(lib, name), arg)
        if ret < 0:
            raise KvmIoctlError(name, ffi.errno)
        return ret
