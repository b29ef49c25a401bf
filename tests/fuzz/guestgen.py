"""Random hostile guests: x86 machine code for real, protected and long mode, ring 0 or 3.

A guest is a prologue-free program loaded at FLAT_LOAD plus the state it starts
in (`FuzzGuest`): CPU mode, ring, IOPL, RAM size, and whether exceptions go to
handler stubs.  The code is built from *actions*, each a few instructions
encoded here directly (Intel SDM Vol. 2, the opcode tables), so ten thousand
guests cost no assembler runs:

    port I/O of 1, 2 and 4 bytes    to every emulated device register and to random ports
    rep ins/outs                    huge counts, buffers across pages and past the end of RAM
    MMIO of 1, 2, 4 and 8 bytes     in the MMIO gap and past RAM (protected and long mode)
    rep movs through MMIO           string MMIO, emulated one element at a time
    virtio-mmio storms              every size on the virtio disk, console and rng register windows
    hostile virtqueues              random descriptor tables in RAM, rings past RAM, any size, kicks
    privileged and odd instructions wrmsr, mov to CR0/CR3/CR4, cpuid, int n, ud2, hlt, ...
    random bytes                    whatever they decode to

and an ending: ACPI power-off, a debug-exit write, an i8042 reset, `cli; hlt`,
`sti; hlt`, `jmp .`, or nothing (the CPU runs on into whatever follows).

Everything is drawn from one `random.Random`, so a guest is reproduced from its
seed alone (`generate(seed)`).
"""
from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from pykvm.vm import layout
from pykvm.vm.machine import PORTS

__all__ = ["FuzzGuest", "generate", "MODES", "HANDLER_STATUS_BASE"]

MODES = ("real", "protected", "long")
BITS = {"real": 16, "protected": 32, "long": 64}
MEMORY_SIZES = (2 << 20, 4 << 20, 16 << 20, 64 << 20)
HANDLER_STATUS_BASE = 0x40      # exception stub for vector v writes 0x40 + v to debug-exit
MAX_ACTIONS = 24

# Addresses a hostile guest likes: page edges, the end of RAM, the MMIO gap, 4 GiB, wrap-around.
EDGE_OFFSETS = (-8, -4, -2, -1, 0, 1, 2, 3)
REP_COUNTS = (0, 1, 2, 3, 4095, 4096, 4097, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF)
IO_SIZES = (1, 2, 4)
MMIO_SIZES = (1, 2, 4, 8)
ACPI_POWER_OFF = 0x2000          # PM1a_CNT: SLP_EN, sleep type 0 (S5)
I8042_RESET = 0xFE               # i8042 command: pulse the CPU reset line
WARM_RESET = 0x1234              # BDA reset flag for a warm boot (what a panicking Linux leaves)
INTERESTING_MSRS = (0x10, 0x1B, 0x3A, 0x174, 0x175, 0x176, 0x277, 0x2FF, 0xC0000080,
                    0xC0000081, 0xC0000082, 0xC0000100, 0xC0000101, 0xC0000102, 0x4B564D00,
                    0x4B564D01, 0x4B564D02, 0x4B564D03, 0x4B564D04, 0x40000000, 0x6E0)


@dataclass
class FuzzGuest:
    """One generated guest: its code and the state its vCPU starts in."""

    seed: str
    mode: str                 # "real", "protected" or "long"
    ring: int                 # 0 or 3 (real mode: always 0)
    iopl: int                 # RFLAGS.IOPL at entry: 3 lets ring 3 use port I/O
    memory: int               # guest RAM in bytes
    handlers: bool            # exceptions go to stubs that write to debug-exit
    code: bytes
    actions: list[str]        # what the code does, in order (for reports)

    @property
    def bits(self) -> int:
        return BITS[self.mode]

    def describe(self) -> str:
        return (f"{self.mode} ring {self.ring} iopl {self.iopl} mem {self.memory >> 20}M "
                f"handlers={'yes' if self.handlers else 'no'}: {' '.join(self.actions)}")


class Encoder:
    """Instruction encodings for one operand/address size (16, 32 or 64 bits)."""

    def __init__(self, bits: int):
        self.bits = bits

    def _osize(self, size: int) -> bytes:
        """Operand-size prefix for a 2- or 4-byte accumulator access."""
        if size == 2 and self.bits != 16 or size == 4 and self.bits == 16:
            return b"\x66"
        return b""

    def mov_acc(self, value: int, size: int) -> bytes:
        """mov al/ax/eax, imm."""
        if size == 1:
            return b"\xb0" + bytes([value & 0xFF])
        fmt = "<H" if size == 2 else "<I"
        return self._osize(size) + b"\xb8" + struct.pack(fmt, value & ((1 << (8 * size)) - 1))

    def mov_reg(self, reg: int, value: int) -> bytes:
        """mov to a general register (1 = cx, 2 = dx, 6 = si, 7 = di): 32 bits, or 64 in long mode."""
        if self.bits == 64:
            return b"\x48" + bytes([0xB8 + reg]) + struct.pack("<Q", value & (2**64 - 1))
        prefix = b"\x66" if self.bits == 16 else b""
        return prefix + bytes([0xB8 + reg]) + struct.pack("<I", value & 0xFFFFFFFF)

    def mov_dx(self, port: int) -> bytes:
        return self.mov_reg(2, port & 0xFFFF)

    def out_dx(self, size: int) -> bytes:
        return b"\xee" if size == 1 else self._osize(size) + b"\xef"

    def in_dx(self, size: int) -> bytes:
        return b"\xec" if size == 1 else self._osize(size) + b"\xed"

    def string_op(self, opcode: int, size: int, rep: bool, addr32: bool) -> bytes:
        """ins (0x6c), outs (0x6e) or movs (0xa4); `addr32` in real mode uses ecx/esi/edi."""
        prefix = b"\xf3" if rep else b""
        if addr32 and self.bits in (16, 64):
            prefix += b"\x67"
        if size == 8:
            return prefix + b"\x48" + bytes([opcode + 1])
        return prefix + self._osize(size) + bytes([opcode + (0 if size == 1 else 1)])

    def mmio(self, address: int, size: int, write: bool) -> bytes:
        """mov between the accumulator and an absolute address (moffs: A0-A3)."""
        opcode = (0xA2 if write else 0xA0) + (0 if size == 1 else 1)
        rex = b"\x48" if size == 8 else b""
        moffs = struct.pack("<Q", address) if self.bits == 64 else struct.pack("<I", address & 0xFFFFFFFF)
        return self._osize(size) + rex + bytes([opcode]) + moffs


NOP = b"\x90"                      # the same byte in every mode


def generate(seed: str, mode: str | None = None) -> FuzzGuest:
    """The guest for `seed` (any string): deterministic, so a finding is replayed from its seed."""
    rng = random.Random(seed)
    mode = mode or rng.choice(MODES)
    ring = 0 if mode == "real" else rng.choice((0, 3))
    guest = FuzzGuest(seed=seed, mode=mode, ring=ring, iopl=3 if rng.random() < 0.75 else 0,
                      memory=rng.choice(MEMORY_SIZES), handlers=rng.random() < 0.7,
                      code=b"", actions=[])
    enc = Encoder(guest.bits)
    code = bytearray()
    for _ in range(rng.randint(1, MAX_ACTIONS)):
        name, action = rng.choices(ACTIONS, weights=[w for _, _, w in ACTION_TABLE])[0]
        if name in ("mmio", "rep-movs-mmio", "virtio-mmio", "virtqueue") and mode == "real":
            continue                      # real mode reaches only the low MiB, which is RAM
        code += action(rng, enc, guest)
        guest.actions.append(name)
    name, ending = rng.choices(ENDINGS, weights=[w for _, _, w in ENDING_TABLE])[0]
    code += ending(rng, enc, guest)
    guest.actions.append(name)
    # A real-mode guest whose actions were all skipped and which runs on has no code at all;
    # pykvm refuses an empty kernel file (one line, status 2), so give it one nop to run on from.
    guest.code = bytes(code) or NOP
    return guest


# --- addresses and ports -------------------------------------------------------------

def hostile_address(rng: random.Random, guest: FuzzGuest) -> int:
    """A buffer address at an edge: a page boundary, the end of RAM, the MMIO gap, 4 GiB."""
    bases = [0x1000 * rng.randint(1, 0x9F), guest.memory, layout.MMIO_GAP_START,
             layout.MMIO_GAP_END, 0x100000, 0, layout.KVM_TSS_ADDRESS, 0xFFFFF000]
    if guest.mode == "long":
        bases += [1 << 32 | guest.memory, 1 << 47, 2**64 - 0x1000]
    return (rng.choice(bases) + rng.choice(EDGE_OFFSETS)) % (2**64 if guest.mode == "long" else 2**32)


def device_port(rng: random.Random) -> tuple[int, int]:
    """A port inside one of the emulated devices (or just outside), and an access size."""
    base, length = rng.choice(list(PORTS.values()))
    return base + rng.randint(-1, length), rng.choice(IO_SIZES)


def random_value(rng: random.Random, size: int) -> int:
    return rng.choice((0, (1 << (8 * size)) - 1, 1 << (8 * size - 1), rng.getrandbits(8 * size)))


# --- actions ----------------------------------------------------------------------------

def act_device_write(rng, enc: Encoder, guest) -> bytes:
    port, size = device_port(rng)
    return enc.mov_dx(port) + enc.mov_acc(random_value(rng, size), size) + enc.out_dx(size)


def act_device_read(rng, enc: Encoder, guest) -> bytes:
    port, size = device_port(rng)
    return enc.mov_dx(port) + enc.in_dx(size)


def act_port_storm(rng, enc: Encoder, guest) -> bytes:
    """Many accesses in a row: random ports, every size, in and out."""
    code = b""
    for _ in range(rng.randint(2, 16)):
        port = rng.getrandbits(16) if rng.random() < 0.5 else device_port(rng)[0]
        size = rng.choice(IO_SIZES)
        code += enc.mov_dx(port)
        code += (enc.mov_acc(random_value(rng, size), size) + enc.out_dx(size)
                 if rng.random() < 0.5 else enc.in_dx(size))
    return code


def act_pci_config(rng, enc: Encoder, guest) -> bytes:
    """CONFIG_ADDRESS (enabled or not, any bus/device/function/register), then CONFIG_DATA."""
    address = rng.getrandbits(32) | (rng.choice((0, 1)) << 31)
    size = rng.choice(IO_SIZES)
    port = 0xCFC + rng.randint(0, 3)
    code = enc.mov_dx(0xCF8) + enc.mov_acc(address, 4) + enc.out_dx(4) + enc.mov_dx(port)
    if rng.random() < 0.5:
        return code + enc.mov_acc(random_value(rng, size), size) + enc.out_dx(size)
    return code + enc.in_dx(size)


def act_cmos(rng, enc: Encoder, guest) -> bytes:
    """Select any CMOS index (NMI bit too), then read or write the data port."""
    code = enc.mov_dx(0x70) + enc.mov_acc(rng.getrandbits(8), 1) + enc.out_dx(1) + enc.mov_dx(0x71)
    if rng.random() < 0.5:
        return code + enc.mov_acc(rng.getrandbits(8), 1) + enc.out_dx(1)
    return code + enc.in_dx(1)


def act_rep_io(rng, enc: Encoder, guest) -> bytes:
    """rep ins/outs with a huge count, the buffer at an edge, either direction."""
    port = device_port(rng)[0] if rng.random() < 0.7 else rng.getrandbits(16)
    size = rng.choice(IO_SIZES)
    addr32 = guest.mode != "real" or rng.random() < 0.5
    address = hostile_address(rng, guest) if guest.mode != "real" else rng.getrandbits(16)
    direction = b"\xfd" if rng.random() < 0.3 else b"\xfc"            # std / cld
    opcode = 0x6C if rng.random() < 0.5 else 0x6E                      # ins / outs
    return (direction + enc.mov_dx(port) + enc.mov_reg(1, rng.choice(REP_COUNTS)) +
            enc.mov_reg(6, address) + enc.mov_reg(7, address) +
            enc.string_op(opcode, size, rep=True, addr32=addr32) + b"\xfc")


def mmio_storm(rng, enc: Encoder, guest, address_of, most: int, writes: float) -> bytes:
    """Up to `most` MMIO reads and writes (a `writes` share) of every size at `address_of()`."""
    code = b""
    for _ in range(rng.randint(1, most)):
        size = rng.choice(MMIO_SIZES if guest.mode == "long" else MMIO_SIZES[:3])
        write = rng.random() < writes
        if write:
            code += enc.mov_acc(random_value(rng, min(size, 4)), min(size, 4))
        code += enc.mmio(address_of(), size, write)
    return code


def act_mmio(rng, enc: Encoder, guest) -> bytes:
    return mmio_storm(rng, enc, guest, lambda: hostile_address(rng, guest), most=8, writes=0.5)


def act_rep_movs_mmio(rng, enc: Encoder, guest) -> bytes:
    """rep movs between RAM and MMIO (or past RAM): string MMIO, one exit per element."""
    size = rng.choice(MMIO_SIZES if guest.mode == "long" else MMIO_SIZES[:3])
    source, target = hostile_address(rng, guest), hostile_address(rng, guest)
    return (enc.mov_reg(1, rng.choice(REP_COUNTS[:8])) + enc.mov_reg(6, source) +
            enc.mov_reg(7, target) + enc.string_op(0xA4, size, rep=True, addr32=False))


# The virtio devices the fuzzer's machine has (guest_fuzz.py): a disk, the console, rng.
VIRTIO_DEVICES = 3
VIRTIO_REGISTERS = (0x000, 0x004, 0x008, 0x00C, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034, 0x038, 0x044,
                    0x050, 0x060, 0x064, 0x070, 0x080, 0x084, 0x090, 0x094, 0x0A0, 0x0A4, 0x0AC, 0x0B0,
                    0x0FC, 0x100, 0x104, 0x108, 0x10C)
VIRTIO_STATUS_TO_DRIVER_OK = (0, 1, 3, 11, 15)     # reset, ACKNOWLEDGE, +DRIVER, +FEATURES_OK, +DRIVER_OK
QUEUE_SIZES = (0, 1, 2, 3, 8, 256, 1024, 0x8000, 0xFFFF, 0xFFFFFFFF)
DESCRIPTOR_TABLE = 0x20000      # RAM the guest fills with random descriptors (below every code load)


def virtio_register(rng: random.Random) -> int:
    """An address in one of the virtio-mmio windows: a named register, or anywhere in the page."""
    base, _ = layout.virtio_mmio_slot(rng.randrange(VIRTIO_DEVICES + 1))   # + an empty slot
    offset = rng.choice(VIRTIO_REGISTERS) if rng.random() < 0.8 else rng.randrange(0x1000)
    return base + offset


def act_virtio_mmio(rng, enc: Encoder, guest) -> bytes:
    """A storm of reads and writes of every size on the virtio devices' register windows."""
    return mmio_storm(rng, enc, guest, lambda: virtio_register(rng), most=12, writes=0.6)


def act_virtqueue(rng, enc: Encoder, guest) -> bytes:
    """A hostile virtqueue: random descriptors in RAM (or rings past RAM, in the MMIO gap, at
    4 GiB), any queue size, then DRIVER_OK and a kick, as a driver would (virtio 1.2, 4.2.3.2)."""
    base, _ = layout.virtio_mmio_slot(rng.randrange(VIRTIO_DEVICES))

    def write(register: int, value: int) -> bytes:
        return store(base + register, value)

    def store(address: int, value: int) -> bytes:
        return enc.mov_acc(value & 0xFFFFFFFF, 4) + enc.mmio(address, 4, True)

    code = b""
    table = DESCRIPTOR_TABLE + 0x1000 * rng.randrange(8)
    count = rng.randint(1, 8)
    for i in range(count):                 # descriptors (2.7.5): addr, len, flags | next << 16
        address = rng.randrange(guest.memory) if rng.random() < 0.6 else hostile_address(rng, guest)
        length = rng.choice((0, 1, 16, 512, 4096, 0x10000, rng.getrandbits(32)))
        flags = rng.getrandbits(3) if rng.random() < 0.9 else rng.getrandbits(16)   # NEXT, WRITE, INDIRECT
        code += store(table + 16 * i, address) + store(table + 16 * i + 4, 0 if rng.random() < 0.9 else rng.getrandbits(32))
        code += store(table + 16 * i + 8, length) + store(table + 16 * i + 12, flags | rng.randrange(count + 1) << 16)
    avail = table + 0x800                  # the available ring: flags, idx, then the heads
    code += store(avail, rng.randint(1, 4) << 16 if rng.random() < 0.8 else rng.getrandbits(32))
    code += store(avail + 4, rng.randrange(count + 1) | rng.randrange(count + 1) << 16)
    code += store(avail + 8, rng.getrandbits(32))
    addresses = [table, avail, table + 0xC00, hostile_address(rng, guest), guest.memory - 8, layout.VIRTIO_MMIO_BASE]
    code += write(0x070, 0) + write(0x070, 3)                 # ACKNOWLEDGE | DRIVER
    if rng.random() < 0.9:                                     # VIRTIO_F_VERSION_1 (bit 32), or not
        code += write(0x024, 1) + write(0x020, 1 if rng.random() < 0.8 else rng.getrandbits(32))
        code += write(0x024, 0) + write(0x020, rng.getrandbits(32))
    code += write(0x070, rng.choice(VIRTIO_STATUS_TO_DRIVER_OK[2:4]))
    queue = rng.choice((0, 0, 1, 2, rng.getrandbits(16)))
    code += write(0x030, queue) + write(0x038, rng.choice(QUEUE_SIZES))
    for low, usual in ((0x080, table), (0x090, avail), (0x0A0, table + 0xC00)):   # descriptor, driver, device areas
        address = usual if rng.random() < 0.6 else rng.choice(addresses)
        code += write(low, address) + write(low + 4, address >> 32 if rng.random() < 0.8 else rng.getrandbits(32))
    code += write(0x044, rng.choice((1, 1, 0, 2)))
    code += write(0x070, rng.choice(VIRTIO_STATUS_TO_DRIVER_OK))
    for _ in range(rng.randint(1, 3)):
        code += write(0x050, queue if rng.random() < 0.8 else rng.getrandbits(32))
    return code + write(0x064, rng.getrandbits(4))


def act_privileged(rng, enc: Encoder, guest) -> bytes:
    """One of the instructions a VMM must survive a guest using."""
    kind = rng.choice(("wrmsr", "rdmsr", "cr0", "cr3", "cr4", "cpuid", "int", "int3", "ud2",
                       "cli", "sti", "xsetbv", "syscall", "sysenter", "invd", "wbinvd", "rdtsc",
                       "rdpmc", "lidt0", "popf"))
    msr = rng.choice(INTERESTING_MSRS) if rng.random() < 0.8 else rng.getrandbits(32)
    if kind in ("wrmsr", "rdmsr"):
        return (enc.mov_reg(1, msr) + enc.mov_acc(rng.getrandbits(32), 4) +
                enc.mov_reg(2, rng.getrandbits(32)) + (b"\x0f\x30" if kind == "wrmsr" else b"\x0f\x32"))
    if kind in ("cr0", "cr3", "cr4"):
        modrm = {"cr0": 0xC0, "cr3": 0xD8, "cr4": 0xE0}[kind]
        return enc.mov_acc(rng.getrandbits(32), 4) + bytes([0x0F, 0x22, modrm])
    fixed = {"cpuid": b"\x0f\xa2", "int3": b"\xcc", "ud2": b"\x0f\x0b", "cli": b"\xfa",
             "sti": b"\xfb", "xsetbv": b"\x0f\x01\xd1", "syscall": b"\x0f\x05",
             "sysenter": b"\x0f\x34", "invd": b"\x0f\x08", "wbinvd": b"\x0f\x09",
             "rdtsc": b"\x0f\x31", "rdpmc": b"\x0f\x33"}
    if kind == "cpuid":
        return enc.mov_acc(rng.choice((0, 1, 7, 0xB, 0xD, 0x40000000, 0x80000001, rng.getrandbits(32))), 4) + fixed[kind]
    if kind == "int":
        return bytes([0xCD, rng.getrandbits(8)])
    if kind == "lidt0":                   # an IDT of limit 0: the next exception triple-faults
        return b"\x6a\x00" * 4 + (b"\x0f\x01\x1c\x24" if enc.bits != 16 else b"")
    if kind == "popf":                    # any flags: TF (single-step), AC, IOPL, NT, ...
        value = rng.getrandbits(32)
        return enc.mov_acc(value, 4) + (b"\x66\x50\x66\x9d" if enc.bits == 16 else b"\x50\x9d")
    return fixed[kind]


def act_warm_reset_flag(rng, enc: Encoder, guest) -> bytes:
    """The BIOS warm-reset word (BDA 0x472 = 0x1234): with an i8042 reset, a 'panic' to pykvm."""
    if enc.bits == 16:
        return b"\xc7\x06" + struct.pack("<HH", layout.BDA_RESET_FLAG, WARM_RESET)      # mov word [0x472]
    absolute = b"\x04\x25" if enc.bits == 64 else b"\x05"                               # [disp32]
    return b"\xc7" + absolute + struct.pack("<II", layout.BDA_RESET_FLAG, WARM_RESET)  # mov dword [0x472]


def act_random_bytes(rng, enc: Encoder, guest) -> bytes:
    return rng.randbytes(rng.randint(1, 48))


ACTION_TABLE = [
    ("device-write", act_device_write, 10),
    ("device-read", act_device_read, 4),
    ("port-storm", act_port_storm, 6),
    ("pci-config", act_pci_config, 4),
    ("cmos", act_cmos, 3),
    ("rep-io", act_rep_io, 6),
    ("mmio", act_mmio, 6),
    ("rep-movs-mmio", act_rep_movs_mmio, 3),
    ("virtio-mmio", act_virtio_mmio, 4),
    ("virtqueue", act_virtqueue, 4),
    ("privileged", act_privileged, 4),
    ("random-bytes", act_random_bytes, 2),
    ("warm-reset-flag", act_warm_reset_flag, 1),
]
ACTIONS = [(name, fn) for name, fn, _ in ACTION_TABLE]


# --- endings --------------------------------------------------------------------------------

def end_power_off(rng, enc: Encoder, guest) -> bytes:
    return enc.mov_dx(0x604) + enc.mov_acc(ACPI_POWER_OFF, 2) + enc.out_dx(2)


def end_debug_exit(rng, enc: Encoder, guest) -> bytes:
    size = rng.choice(IO_SIZES)
    return enc.mov_dx(0xF4 + rng.randint(0, 3)) + enc.mov_acc(random_value(rng, size), size) + enc.out_dx(size)


def end_i8042_reset(rng, enc: Encoder, guest) -> bytes:
    return enc.mov_dx(0x64) + enc.mov_acc(I8042_RESET, 1) + enc.out_dx(1)


ENDING_TABLE = [
    ("power-off", end_power_off, 10),
    ("debug-exit", end_debug_exit, 10),
    ("i8042-reset", end_i8042_reset, 4),
    ("cli-hlt", lambda rng, enc, guest: b"\xfa\xf4", 2),
    ("sti-hlt", lambda rng, enc, guest: b"\xfb\xf4", 1),
    ("jmp-self", lambda rng, enc, guest: b"\xeb\xfe", 1),
    ("run-on", lambda rng, enc, guest: b"", 1),
]
ENDINGS = [(name, fn) for name, fn, _ in ENDING_TABLE]
