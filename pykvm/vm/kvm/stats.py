"""KVM's own counters: the binary statistics file of a VM or vCPU.

api.rst 4.133 KVM_GET_STATS_FD (KVM_CAP_BINARY_STATS_FD): an ioctl on a VM or
vCPU fd returns a file holding

    struct kvm_stats_header   flags, name_size, num_desc, id_offset, desc_offset, data_offset
    id string                 e.g. "kvm-1234/vcpu-0"
    descriptors               num_desc x (struct kvm_stats_desc + name_size bytes of name)
    data                      u64 values, desc.size of them at data_offset + desc.offset

read with pread(2) at any time.  KVM counts every exit there (`exits`), also
those it handles itself without returning to pykvm: an ioeventfd write, a
halt, an interrupt window.  QEMU reads the same file (QMP query-stats), so the
numbers can be set side by side.
"""
from __future__ import annotations

import os
import struct

from pykvm.vm.kvm.bindings import ffi

__all__ = ["read_stats", "HEADER", "DESC"]

HEADER = struct.Struct("<IIIIII")      # struct kvm_stats_header
DESC = struct.Struct("<IhHII")         # struct kvm_stats_desc, without its name
U64 = struct.Struct("<Q")
assert HEADER.size == ffi.sizeof("struct kvm_stats_header")
assert DESC.size == ffi.sizeof("struct kvm_stats_desc")


def read_stats(fd: int) -> dict[str, int]:
    """Every single-valued counter in the statistics file `fd` (histograms are left out)."""
    _, name_size, count, _, desc_offset, data_offset = HEADER.unpack(os.pread(fd, HEADER.size, 0))
    entry = DESC.size + name_size
    table = os.pread(fd, entry * count, desc_offset)
    values = {}
    for i in range(count):
        _, _, size, offset, _ = DESC.unpack_from(table, i * entry)
        if size != 1:
            continue
        name = table[i * entry + DESC.size:(i + 1) * entry].split(b"\0", 1)[0].decode()
        values[name] = U64.unpack(os.pread(fd, U64.size, data_offset + offset))[0]
    return values
