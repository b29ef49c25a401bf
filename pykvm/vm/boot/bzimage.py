"""The Linux/x86 boot protocol: loading a bzImage the way a boot loader does.

Spec: Documentation/arch/x86/boot.rst ("The Linux/x86 Boot Protocol") and
Documentation/arch/x86/zero-page.rst in the kernel tree.  We implement the
32-bit and 64-bit boot protocols of version 2.10 and later: no real-mode
setup code runs, the boot loader (this module) fills `struct boot_params`
itself and jumps straight into the protected-mode kernel.

A bzImage file is two programs glued together:

    file offset 0                 +----------------------------+
                                  | boot sector (legacy)       |
    0x1f1 .. 0x202 + [0x201]      |   setup header  <- we read |
                                  +----------------------------+
    512                           | real-mode setup code       |  setup_sects sectors
                                  | (we never run it)          |
    (setup_sects + 1) * 512       +----------------------------+
                                  | protected-mode kernel      |  loaded at 1 MiB;
                                  |  +0x000 startup_32         |  32-bit entry
                                  |  +0x200 startup_64         |  64-bit entry (XLF_KERNEL_64)
                                  |  compressed vmlinux ...    |
                                  +----------------------------+

The recipe (each step one function below):
  1. read_setup_header: parse the header at 0x1f1, refuse what we cannot boot.
  2. protected_mode_kernel: the bytes after the setup sectors, loaded at 1 MiB.
  3. kernel_end: how far the kernel reaches once it decompresses itself.
  4. place_initrd (pykvm.vm.boot.plan): the initrd as high as allowed (below
     initrd_addr_max).
  5. pack_e820_table: the guest's RAM map (the firmware's e820) as zero-page rows.
  6. pack_boot_params: the "zero page" as bytes: zeros, the header copied
     from the image, our loader fields, the command line pointer, the e820 table.
  7. plan_bzimage: all of the above, returning a LoadPlan (what to write
     where, and the Entry where the vCPU starts; pykvm.vm.boot.plan).  Pure: bytes in, bytes and
     addresses out, no KVM needed, so every rule is unit-tested.
  8. load_bzimage: the plan carried out on a real VM: the writes, with the
     ACPI RSDP and e820 map the firmware step left (pykvm.vm.boot.firmware).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from pykvm.vm.arch.x86.boot_state import CpuMode, Entry
from pykvm.vm import layout
from pykvm.vm.boot.cmdline import encode_cmdline, join_cmdline
from pykvm.vm.boot.plan import LoadPlan, place_initrd, write_plan
from pykvm.errors import LoaderError
from pykvm.vm.kvm.bindings import ffi, lib

__all__ = [
    "SetupHeader",
    "read_setup_header",
    "protected_mode_kernel",
    "compressed_payload",
    "kernel_end",
    "pack_e820_table",
    "pack_boot_params",
    "plan_bzimage",
    "load_bzimage",
    "DEFAULT_CMDLINE",
    "MIN_PROTOCOL",
]

# Where things go in guest memory: pykvm.vm.layout (ZERO_PAGE, CMDLINE_START,
# HIMEM_START), the same spots Firecracker's layout.rs uses.  The 64-bit
# protocol lets boot_params and the command line sit anywhere in RAM the
# kernel is told about; the protected-mode kernel goes to 1 MiB; the initrd
# goes to the top of low RAM, below initrd_addr_max.

# --- struct boot_params and struct setup_header, from <asm/bootparam.h> ---------
# The compiler gives every offset (pykvm/vm/kvm/_build.py declares the structs with
# `...;`); boot.rst's and zero-page.rst's tables say what each field means.
BOOT_PARAMS = "struct boot_params"
SETUP_HEADER = "struct setup_header"
BOOT_PARAMS_SIZE = ffi.sizeof(BOOT_PARAMS)                   # 4096: "the zero page"
SETUP_HEADER_OFFSET = ffi.offsetof(BOOT_PARAMS, "hdr")        # 0x1f1, in the image and in boot_params
SETUP_HEADER_SIZE = ffi.sizeof(SETUP_HEADER)                 # as far as this header file knows
HEADER_FIELDS = tuple(name for name, _ in ffi.typeof(SETUP_HEADER).fields)   # in the header's order
HDRS_OFFSET = SETUP_HEADER_OFFSET + ffi.offsetof(SETUP_HEADER, "header")       # 0x202
SETUP_HEADER_END_BYTE = SETUP_HEADER_OFFSET + ffi.offsetof(SETUP_HEADER, "jump") + 1  # 0x201
HDRS_MAGIC = b"HdrS"             # at 0x202: "this image speaks the boot protocol"
SECTOR_SIZE = 512
DEFAULT_SETUP_SECTS = 4          # "If this field is 0, the real value is 4."
MIN_PROTOCOL = 0x020A            # 2.10: kernel_alignment, pref_address, init_size, 64-bit entry rules
E820_MAX_ENTRIES_ZEROPAGE = lib.E820_MAX_ENTRIES_ZEROPAGE   # 128 rows of struct boot_e820_entry

# loadflags and xloadflags bits (boot.rst), values from the header
LOADED_HIGH = lib.LOADED_HIGH    # protected-mode code loaded at 0x100000 (a bzImage)
QUIET_FLAG = lib.QUIET_FLAG      # suppress early messages
KEEP_SEGMENTS = lib.KEEP_SEGMENTS  # obsolete
CAN_USE_HEAP = lib.CAN_USE_HEAP  # heap_end_ptr is valid
XLF_KERNEL_64 = lib.XLF_KERNEL_64  # has the legacy 64-bit entry point at +0x200

# The command line when the user gives none: one UART, a fast boot (Firecracker's
# and kvmtool's defaults are the models; docs/05-booting-linux.md explains each).
DEFAULT_CMDLINE = ("console=ttyS0 earlyprintk=serial reboot=k,panic_warm panic=-1 pci=off "
                   "8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd")

TYPE_OF_LOADER_UNDEFINED = 0xFF  # "boot loader not assigned an ID": what QEMU and Firecracker also write
STARTUP_64_OFFSET = 0x200        # 64-bit entry is startup_32 + 0x200 (boot.rst "64-bit BOOT PROTOCOL")
HEAP_END_PTR = 0xFE00            # end of the setup heap, relative to the real-mode code (0x10000 - 0x200)


@dataclass(frozen=True)
class SetupHeader:
    """The setup header of a bzImage: struct setup_header's fields, in its order.

    `raw` keeps the header's exact bytes (0x1f1 up to its end) for copying into
    boot_params; fields past the end a kernel declares read as 0.
    """

    setup_sects: int                  # size of the setup in 512-byte sectors
    root_flags: int                   # if set, the root is mounted readonly (obsolete)
    syssize: int                      # size of the 32-bit code in 16-byte paras
    ram_size: int                     # obsolete
    vid_mode: int                     # video mode control
    root_dev: int                     # default root device number
    boot_flag: int                    # 0xAA55 magic number
    jump: int                         # jump instruction; its second byte gives the header's end
    header: bytes                     # magic signature "HdrS" (kept as 4 bytes)
    version: int                      # boot protocol version supported, 0x020f = 2.15
    realmode_swtch: int               # boot loader hook
    start_sys_seg: int                # obsolete
    kernel_version: int               # pointer to kernel version string (real-mode offset - 0x200)
    type_of_loader: int               # boot loader identifier (written by us)
    loadflags: int                    # boot protocol option flags
    setup_move_size: int              # move to high memory size (used with hooks)
    code32_start: int                 # boot loader hook; the 32-bit entry address
    ramdisk_image: int                # initrd load address (written by us)
    ramdisk_size: int                 # initrd size (written by us)
    bootsect_kludge: int              # obsolete
    heap_end_ptr: int                 # free memory after setup end (written by us)
    ext_loader_ver: int               # extended boot loader version
    ext_loader_type: int              # extended boot loader ID
    cmd_line_ptr: int                 # 32-bit pointer to the kernel command line (written by us)
    initrd_addr_max: int              # highest legal initrd address (last byte)
    kernel_alignment: int             # physical address alignment required for the kernel
    relocatable_kernel: int           # whether the kernel is relocatable or not
    min_alignment: int                # minimum alignment, as a power of two
    xloadflags: int                   # boot protocol option flags (XLF_*)
    cmdline_size: int                 # maximum size of the kernel command line, without the NUL
    hardware_subarch: int             # hardware subarchitecture (0 = normal PC)
    hardware_subarch_data: int        # subarchitecture-specific data
    payload_offset: int               # offset of the compressed kernel payload (from the PM kernel)
    payload_length: int               # length of that payload
    setup_data: int                   # 64-bit pointer to a linked list of struct setup_data
    pref_address: int                 # preferred loading address
    init_size: int                    # linear memory required during initialization
    handover_offset: int              # offset of the EFI handover entry point
    kernel_info_offset: int           # offset of the kernel_info (2.15+)
    raw: bytes

    @property
    def version_string(self) -> str:
        """The protocol version as boot.rst writes it, e.g. "2.15"."""
        return f"{self.version >> 8}.{self.version & 0xFF:02d}"

    @property
    def setup_size(self) -> int:
        """Bytes before the protected-mode kernel: boot sector plus setup sectors."""
        return (self.setup_sects or DEFAULT_SETUP_SECTS) * SECTOR_SIZE + SECTOR_SIZE

    @property
    def has_64bit_entry(self) -> bool:
        """XLF_KERNEL_64: startup_64 sits at +0x200 from the load address."""
        return bool(self.xloadflags & XLF_KERNEL_64)


def _header_end(image: bytes) -> int:
    """One past the header's last byte: 0x202 + the byte at 0x201 (boot.rst, 64-bit protocol)."""
    return SETUP_HEADER_END_BYTE + 1 + image[SETUP_HEADER_END_BYTE]


def read_setup_header(image: bytes) -> SetupHeader:
    """Parse and check the setup header of a bzImage held in `image`.

    Raises LoaderError for anything that is not a bzImage we can boot:
    a short file, no "HdrS" magic, protocol older than 2.10, or no
    LOADED_HIGH (a zImage).
    """
    if len(image) < SECTOR_SIZE * 2:
        raise LoaderError(f"kernel image is only {len(image)} bytes: not a bzImage")
    if image[HDRS_OFFSET:HDRS_OFFSET + len(HDRS_MAGIC)] != HDRS_MAGIC:
        raise LoaderError('kernel image has no "HdrS" signature at 0x202: not a Linux bzImage '
                          "(for an ELF vmlinux, boot it through its PVH entry)")
    end = min(_header_end(image), BOOT_PARAMS_SIZE)
    raw = bytes(image[SETUP_HEADER_OFFSET:end])
    hdr = SetupHeader(**_header_fields(raw), raw=raw)
    _check_header(hdr, len(image))
    return hdr


def _header_fields(raw: bytes) -> dict:
    """struct setup_header's fields read from `raw`, zero past its end (the compiler's layout)."""
    c_header = ffi.from_buffer(f"{SETUP_HEADER} *", raw[:SETUP_HEADER_SIZE].ljust(SETUP_HEADER_SIZE, b"\0"))
    values = {name: getattr(c_header, name) for name in HEADER_FIELDS}
    values["header"] = values["header"].to_bytes(len(HDRS_MAGIC), "little")
    return values


def _check_header(hdr: SetupHeader, image_size: int) -> None:
    """Refuse headers this loader cannot honour, each with a one-line reason."""
    if hdr.version < MIN_PROTOCOL:
        raise LoaderError(f"kernel speaks boot protocol {hdr.version_string}; pykvm needs 2.10 or "
                          "later (Linux 2.6.31+)")
    if not hdr.loadflags & LOADED_HIGH:
        raise LoaderError("kernel is a zImage (LOADED_HIGH clear): only bzImages are supported")
    if hdr.setup_size >= image_size:
        raise LoaderError(f"kernel image is truncated: {image_size} bytes, but its setup alone "
                          f"claims {hdr.setup_size}")


def protected_mode_kernel(image: bytes, hdr: SetupHeader) -> bytes:
    """The part of the image loaded at 1 MiB: everything after the setup sectors."""
    return bytes(image[hdr.setup_size:])


def compressed_payload(image: bytes, hdr: SetupHeader) -> bytes:
    """The compressed vmlinux inside the protected-mode kernel (payload_offset/_length, 2.08+).

    The decompressor (startup_32/64) unpacks exactly these bytes; a host tool
    can do the same to get an ELF vmlinux (see guests/linux/extract-vmlinux.py).
    """
    start = hdr.setup_size + hdr.payload_offset
    end = start + hdr.payload_length
    if not hdr.payload_length or end > len(image):
        raise LoaderError(f"kernel image has no payload inside its {len(image)} bytes "
                          f"(payload_offset {hdr.payload_offset:#x}, payload_length {hdr.payload_length:#x})")
    return bytes(image[start:end])


def kernel_end(hdr: SetupHeader, load_addr: int, pm_size: int) -> int:
    """One past the highest byte the kernel uses while it decompresses and starts.

    boot.rst (init_size): the kernel needs init_size bytes from its runtime
    start address, which is the load address rounded up to kernel_alignment,
    but never below pref_address (LOAD_PHYSICAL_ADDR, head_64.S) and, for a
    kernel that is not relocatable, exactly pref_address.
    """
    align = hdr.kernel_alignment or 1
    runtime = -(-load_addr // align) * align
    if not hdr.relocatable_kernel or runtime < hdr.pref_address:
        runtime = max(runtime, hdr.pref_address)
    return max(load_addr + pm_size, runtime + hdr.init_size)


def pack_e820_table(entries: list[tuple[int, int, int]]) -> bytes:
    """(address, size, type) rows as zero-page bytes: struct boot_e820_entry[], 20 packed bytes each."""
    if len(entries) > E820_MAX_ENTRIES_ZEROPAGE:
        raise LoaderError(f"{len(entries)} e820 entries; the zero page holds {E820_MAX_ENTRIES_ZEROPAGE}")
    table = ffi.new("struct boot_e820_entry[]", max(len(entries), 1))
    for row, (addr, size, kind) in zip(table, entries):
        row.addr, row.size, row.type = addr, size, kind
    return bytes(ffi.buffer(table))[:len(entries) * ffi.sizeof("struct boot_e820_entry")]


def pack_boot_params(hdr: SetupHeader, cmdline_addr: int, initrd_addr: int, initrd_size: int,
                     e820: list[tuple[int, int, int]], acpi_rsdp: int = 0) -> bytes:
    """The zero page a 32/64-bit boot loader hands the kernel, as 4096 bytes.

    boot.rst (64-bit BOOT PROTOCOL): allocate boot_params zeroed, copy in the
    setup header only (0x1f1 .. 0x202 + [0x201]), then fill the loader's
    fields.  Copying the whole first sector instead would copy its 0xFF
    padding (kernels >= 6.1.88) and the sentinel at 0x1ef, and the kernel
    would take us for a broken loader and wipe fields we set.
    """
    bp = ffi.new(f"{BOOT_PARAMS} *")
    ffi.buffer(bp)[SETUP_HEADER_OFFSET:SETUP_HEADER_OFFSET + len(hdr.raw)] = hdr.raw
    assert bp.sentinel == 0
    bp.hdr.type_of_loader = TYPE_OF_LOADER_UNDEFINED
    bp.hdr.loadflags = (hdr.loadflags | CAN_USE_HEAP) & ~(QUIET_FLAG | KEEP_SEGMENTS)
    bp.hdr.heap_end_ptr = HEAP_END_PTR
    bp.hdr.cmd_line_ptr, bp.ext_cmd_line_ptr = _split64(cmdline_addr)
    bp.hdr.ramdisk_image, bp.ext_ramdisk_image = _split64(initrd_addr)
    bp.hdr.ramdisk_size, bp.ext_ramdisk_size = _split64(initrd_size)
    bp.acpi_rsdp_addr = acpi_rsdp
    table = pack_e820_table(e820)
    bp.e820_entries = len(e820)
    ffi.memmove(bp.e820_table, table, len(table))
    return bytes(ffi.buffer(bp))


def _split64(value: int) -> tuple[int, int]:
    """A 64-bit value as (low 32 bits, high 32 bits): a setup header field and its ext_ twin."""
    return value & 0xFFFFFFFF, value >> 32


def plan_bzimage(image: bytes, ram: list[tuple[int, int]], cmdline: str | bytes = b"",
                 initrd: bytes | None = None, acpi_rsdp: int = 0, e820=None) -> LoadPlan:
    """Everything a boot loader decides for a bzImage, without touching a VM.

    `ram` is the guest's RAM as (base, size) ranges, the first one starting
    at 0 (GuestMemory.ram_ranges()).  The plan writes the protected-mode
    kernel at 1 MiB, the command line, the initrd and boot_params, and
    starts the vCPU at startup_64 (64-bit, when the kernel has one) or
    startup_32, with %rsi (%esi) pointing at boot_params.  `e820` is the
    firmware's memory map, by default layout.memory_map(ram).
    """
    hdr = read_setup_header(image)
    cmd = encode_cmdline(cmdline, kernel_max=hdr.cmdline_size)
    kernel = protected_mode_kernel(image, hdr)
    low_end = ram[0][0] + ram[0][1]
    end = kernel_end(hdr, layout.HIMEM_START, len(kernel))
    if end > low_end:
        raise LoaderError(f"kernel needs {_mib(end)} of guest memory to decompress and start "
                          f"(init_size {hdr.init_size:#x} from {hdr.pref_address:#x}); "
                          f"the guest has {_mib(low_end)} below 3 GiB: raise --mem")
    writes = [(layout.HIMEM_START, kernel), (layout.CMDLINE_START, cmd)]
    initrd_addr = 0
    if initrd:
        initrd_addr = place_initrd(len(initrd), low_end, end, limit=hdr.initrd_addr_max + 1)
        writes.append((initrd_addr, bytes(initrd)))
    params = pack_boot_params(hdr, layout.CMDLINE_START, initrd_addr, len(initrd or b""),
                              list(layout.memory_map(ram) if e820 is None else e820), acpi_rsdp)
    writes.append((layout.ZERO_PAGE, params))
    protocol = f"Linux boot protocol {hdr.version_string}"
    if hdr.has_64bit_entry:
        entry = Entry(CpuMode.LONG, layout.HIMEM_START + STARTUP_64_OFFSET,
                      {"rsi": layout.ZERO_PAGE}, protocol=protocol + ", 64-bit entry")
    else:
        entry = Entry(CpuMode.PROTECTED, layout.HIMEM_START,
                      {"rsi": layout.ZERO_PAGE, "rbp": 0, "rdi": 0, "rbx": 0},
                      protocol=protocol + ", 32-bit entry")
    return LoadPlan(entry, tuple(writes))


def load_bzimage(memory, image: bytes, cmdline: str = "", initrd: bytes | None = None,
                 name: str = "kernel", acpi_rsdp: int = 0, e820=None, cmdline_extra: str = "") -> Entry:
    """Boot a bzImage on a real VM: pykvm.vm.boot.loader calls this for "HdrS" images.

    The plan's writes go into guest memory; boot_params.acpi_rsdp_addr points at
    the firmware's ACPI tables (`acpi_rsdp`, so that `poweroff` can reach
    PM1a_CNT) and its e820 table is the firmware's map (`e820`).  An empty
    command line means DEFAULT_CMDLINE; `cmdline_extra` (the virtio-mmio
    devices) is appended to it.
    """
    cmdline = join_cmdline(cmdline or DEFAULT_CMDLINE, cmdline_extra)
    try:
        plan = plan_bzimage(image, memory.ram_ranges(), cmdline, initrd, acpi_rsdp=acpi_rsdp, e820=e820)
    except LoaderError as e:
        raise LoaderError(f"{name}: {e}") from None
    return write_plan(memory, plan)


def _mib(n: int) -> str:
    return f"{-(-n // (1 << 20))} MiB"


assert [f.name for f in fields(SetupHeader)] == [*HEADER_FIELDS, "raw"], "SetupHeader != <asm/bootparam.h>"
