#!/usr/bin/env python3
"""Unpack the ELF vmlinux from a bzImage, like the kernel's scripts/extract-vmlinux.

The setup header says where the compressed kernel is (payload_offset and
payload_length); its first bytes say how it was compressed.  gzip, xz, lzma
and bzip2 are in Python's standard library; lz4 (Debian's choice), zstd and
lzo go through their command-line tools.  The result boots through its PVH
entry note: `pykvm boot --kernel .cache/linux/vmlinux`.
"""
from __future__ import annotations

import argparse
import bz2
import gzip
import lzma
import shutil
import subprocess
import sys

from pykvm.vm.boot.bzimage import compressed_payload, read_setup_header

# (magic at the start of the payload, name, how to decompress)
FORMATS = (
    (b"\x1f\x8b", "gzip", gzip.decompress),
    (b"\xfd7zXZ\x00", "xz", lzma.decompress),
    (b"\x5d\x00\x00", "lzma", lzma.decompress),
    (b"BZh", "bzip2", bz2.decompress),
    (b"\x02\x21\x4c\x18", "lz4", ["lz4", "-d", "-c"]),      # lz4 "legacy" frame, what the kernel makes
    (b"\x28\xb5\x2f\xfd", "zstd", ["zstd", "-d", "-c"]),
    (b"\x89LZO", "lzo", ["lzop", "-d", "-c"]),
)
ELF_MAGIC = b"\x7fELF"


def decompress(payload: bytes) -> bytes:
    for magic, name, how in FORMATS:
        if payload.startswith(magic):
            if callable(how):
                return how(payload)
            if shutil.which(how[0]) is None:
                sys.exit(f"extract-vmlinux: kernel is {name}-compressed; install the {how[0]} tool")
            # The kernel's lz4 payload carries a trailing size word the tool warns about; the
            # output is complete regardless, so judge by the ELF magic below.
            return subprocess.run(how, input=payload, capture_output=True).stdout
    sys.exit(f"extract-vmlinux: unknown compression (payload starts {payload[:6].hex()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bzimage")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    image = open(args.bzimage, "rb").read()
    vmlinux = decompress(compressed_payload(image, read_setup_header(image)))
    if not vmlinux.startswith(ELF_MAGIC):
        sys.exit("extract-vmlinux: the payload did not decompress to an ELF file")
    with open(args.output, "wb") as f:
        f.write(vmlinux)


if __name__ == "__main__":
    main()
