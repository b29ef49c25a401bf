"""virtio-blk: a raw disk image file as a block device.

Spec: virtio 1.2, section 5.2 "Block Device" (5.2.4 config layout, 5.2.6
device operation, 5.2.6.2 device requirements).

One request is one descriptor chain, seen as two byte streams:

    device-readable:  struct virtio_blk_req { le32 type; le32 reserved; le64 sector; }
                      [data to write, for VIRTIO_BLK_T_OUT]
    device-writable:  [data read, for T_IN; the ID string, for T_GET_ID]
                      u8 status                      (the last writable byte)

Sectors are 512 bytes whatever the image's block size.  Every request is
checked before the image is touched: its shape (the header is all there, a
status byte exists, the data is whole sectors and sits on the right side),
the sectors against the image's end, writes against read-only.  A bad one is
answered VIRTIO_BLK_S_IOERR or VIRTIO_BLK_S_UNSUPP; only a chain with no
room for the status byte cannot be answered, and makes the device need a
reset.  Data moves with preadv/pwritev straight between the image and the
guest's pages (GuestMemory.rw_vectored); VIRTIO_BLK_T_FLUSH is fdatasync(2), so once the guest saw
its flush complete, the data survives pykvm being killed.
"""
from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

from pykvm.vm.devices.virtio.device import VirtioDevice, VirtioDeviceError
from pykvm.vm.devices.virtio.queue import DescriptorChain, write_buffers
from pykvm.errors import ConfigError, PyKvmError

__all__ = ["Block", "SECTOR_SIZE", "VIRTIO_BLK_T_IN", "VIRTIO_BLK_T_OUT", "VIRTIO_BLK_T_FLUSH",
           "VIRTIO_BLK_T_GET_ID", "VIRTIO_BLK_S_OK", "VIRTIO_BLK_S_IOERR", "VIRTIO_BLK_S_UNSUPP",
           "VIRTIO_BLK_F_RO", "VIRTIO_BLK_F_FLUSH", "VIRTIO_BLK_ID_BYTES", "REQUEST_HEADER"]

VIRTIO_ID_BLOCK = 2                    # 5: device ID
QUEUE_SIZE = 256                       # one request queue (5.2.2), this many entries at most

# 5.2.3 Feature bits
VIRTIO_BLK_F_SEG_MAX = 1 << 2          # config seg_max: most data segments in one request
VIRTIO_BLK_F_RO = 1 << 5               # the device is read-only
VIRTIO_BLK_F_BLK_SIZE = 1 << 6         # config blk_size: the optimal block size
VIRTIO_BLK_F_FLUSH = 1 << 9            # VIRTIO_BLK_T_FLUSH is supported

# 5.2.6 Request types
VIRTIO_BLK_T_IN = 0                    # read sectors
VIRTIO_BLK_T_OUT = 1                   # write sectors
VIRTIO_BLK_T_FLUSH = 4                 # make earlier writes durable
VIRTIO_BLK_T_GET_ID = 8                # the device's ID string, 20 bytes
# Status byte values
VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2

SECTOR_SIZE = 512                      # 5.2.6: sectors are always 512 bytes
VIRTIO_BLK_ID_BYTES = 20               # 5.2.6: the ID string's buffer
REQUEST_HEADER = struct.Struct("<IIQ") # type, reserved, sector
STATUS_BYTES = 1
# 5.2.4 config: capacity (le64), size_max (le32), seg_max (le32), geometry (4 bytes), blk_size (le32)
CONFIG = struct.Struct("<QII4xI")
SEG_MAX = QUEUE_SIZE - 2               # a request's header and status take two descriptors


class RequestError(PyKvmError):
    """A request answered with a status other than OK; `status` is the VIRTIO_BLK_S_* value."""

    def __init__(self, status: int, why: str):
        super().__init__(why)
        self.status = status


class Block(VirtioDevice):
    """virtio-blk on the image file at `path`; `read_only` refuses writes as the spec says."""

    device_id = VIRTIO_ID_BLOCK
    name = "virtio-blk"
    queue_sizes = (QUEUE_SIZE,)

    def __init__(self, path: str | Path, read_only: bool = False):
        super().__init__()
        self.path, self.read_only = Path(path), read_only
        self.fd = open_image(self.path, read_only)
        self.image_size = os.lseek(self.fd, 0, os.SEEK_END)   # st_size is 0 for a block device
        self.capacity = self.image_size // SECTOR_SIZE     # a partial last sector is not used
        self.features = VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_BLK_SIZE
        if read_only:
            self.features |= VIRTIO_BLK_F_RO
        self.serial = f"pykvm-{self.path.name}".encode()[:VIRTIO_BLK_ID_BYTES]
        self.requests = 0

    def config_bytes(self) -> bytes:
        return CONFIG.pack(self.capacity, 0, SEG_MAX, SECTOR_SIZE)

    # --- requests
    def process(self, index: int) -> None:
        self.serve(index, self.handle)

    def handle(self, chain: DescriptorChain) -> int:
        """Carry out one request; return the bytes written into the chain (status included)."""
        self.requests += 1
        writable = chain.writable_length
        if writable < STATUS_BYTES:
            raise VirtioDeviceError(f"request {chain.head} has no device-writable status byte")
        try:
            written = self._execute(chain, writable - STATUS_BYTES)
            status = VIRTIO_BLK_S_OK
        except RequestError as e:
            written, status = 0, e.status
        # The status is the stream's last byte (5.2.6): found from the end, not by walking
        # a 1 MiB read's 256 pages from the start.
        self._memory.write(chain.last_writable_byte(), bytes([status]))
        return written + STATUS_BYTES

    @property
    def _memory(self):
        return self.queues[0].memory

    def _execute(self, chain: DescriptorChain, data_in: int) -> int:
        """The request's work; the bytes of data written into the chain.  RequestError if refused."""
        if chain.readable_length < REQUEST_HEADER.size:
            raise RequestError(VIRTIO_BLK_S_IOERR, "request header shorter than 16 bytes")
        kind, _, sector = REQUEST_HEADER.unpack(chain.read_readable(self._memory, REQUEST_HEADER.size))
        data_out = chain.readable_length - REQUEST_HEADER.size
        if kind == VIRTIO_BLK_T_IN:
            return self._read(chain, sector, data_out, data_in)
        if kind == VIRTIO_BLK_T_OUT:
            return self._write(chain, sector, data_out, data_in)
        if kind == VIRTIO_BLK_T_FLUSH:
            return self._flush()
        if kind == VIRTIO_BLK_T_GET_ID:
            return self._get_id(chain, data_in)
        raise RequestError(VIRTIO_BLK_S_UNSUPP, f"request type {kind} is not supported")

    def _check_range(self, sector: int, length: int) -> int:
        """The byte offset of `sector`, after checking [sector, +length) is whole sectors in the image."""
        if length % SECTOR_SIZE:
            raise RequestError(VIRTIO_BLK_S_IOERR, f"{length} bytes is not a whole number of sectors")
        offset = sector * SECTOR_SIZE                      # Python integers: no overflow
        if offset + length > self.capacity * SECTOR_SIZE:
            raise RequestError(VIRTIO_BLK_S_IOERR, f"sectors {sector}+{length // SECTOR_SIZE} are "
                                                   f"past the end ({self.capacity} sectors)")
        return offset

    def _read(self, chain: DescriptorChain, sector: int, data_out: int, data_in: int) -> int:
        if data_out:
            raise RequestError(VIRTIO_BLK_S_IOERR, "a read with device-readable data buffers")
        offset = self._check_range(sector, data_in)
        self._transfer(chain.packed_buffers(writable=True), 0, data_in, offset, write=False)
        return data_in

    def _write(self, chain: DescriptorChain, sector: int, data_out: int, data_in: int) -> int:
        if data_in:
            raise RequestError(VIRTIO_BLK_S_IOERR, "a write with device-writable data buffers")
        if self.read_only:
            raise RequestError(VIRTIO_BLK_S_IOERR, "write to a read-only disk")
        offset = self._check_range(sector, data_out)
        self._transfer(chain.packed_buffers(writable=False), REQUEST_HEADER.size, data_out, offset,
                       write=True)
        return 0

    def _transfer(self, pieces: bytes, skip: int, length: int, offset: int, write: bool) -> None:
        """preadv/pwritev of `length` bytes between the image at `offset` and the chain's
        buffers `pieces` (one kind, packed) from byte `skip` of them on: zero-copy, in one
        C call, with no Python per buffer (a 1 MiB read has up to 254)."""
        try:
            done = self._memory.rw_vectored(self.fd, pieces, offset, skip, length, write) if length else 0
        except OSError as e:
            raise RequestError(VIRTIO_BLK_S_IOERR, f"{self.path}: {e.strerror}") from None
        if done != length:
            raise RequestError(VIRTIO_BLK_S_IOERR, f"{self.path}: short transfer ({done} of {length})")

    def _flush(self) -> int:
        if not self.read_only:
            try:
                os.fdatasync(self.fd)
            except OSError as e:
                raise RequestError(VIRTIO_BLK_S_IOERR, f"{self.path}: fdatasync: {e.strerror}") from None
        return 0

    def _get_id(self, chain: DescriptorChain, data_in: int) -> int:
        """5.2.6: up to 20 bytes, NUL-padded when shorter."""
        answer = self.serial.ljust(VIRTIO_BLK_ID_BYTES, b"\0")[:data_in]
        write_buffers(self._memory, chain.writable, 0, answer)
        return len(answer)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_image(path: Path, read_only: bool) -> int:
    """Open a disk image, or ConfigError in one line: missing, a directory, not writable."""
    try:
        fd = os.open(path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"--disk {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"--disk {path}: is a directory") from None
    except PermissionError:
        how = "readable" if read_only else "writable (add ,ro for a read-only disk)"
        raise ConfigError(f"--disk {path}: not {how}") from None
    except OSError as e:
        raise ConfigError(f"--disk {path}: {e.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        os.close(fd)
        raise ConfigError(f"--disk {path}: not a regular file or block device")
    return fd
