"""Hostile guests the guest fuzzer (tests/fuzz/guest_fuzz.py) taught us to pin down.

Each is a few instructions on pykvm's whole Machine (the fuzzer's FuzzMachine:
pykvm's boot state, plus exception stubs that write 0x40 + vector to
debug-exit).  A guest may do anything to itself; pykvm must end it with a
documented status, promptly, and never touch memory that is not the guest's.
"""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guestasm import assemble

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "fuzz"))

from guest_fuzz import DEADLINE_STATUS, FuzzMachine, fuzz_virtio  # noqa: E402
from guestgen import FuzzGuest, generate  # noqa: E402
from pykvm.vm.devices.debug_exit import exit_status  # noqa: E402
from pykvm.vm.machine import MachineConfig  # noqa: E402

pytestmark = pytest.mark.kvm

RAM = 2 << 20
DEADLINE = 30            # seconds: far past what each guest needs, so only a hang reaches it
POWER_OFF = """
    mov $0x604, %dx
    mov $0x2000, %ax
    out %ax, %dx
"""


def run(source: str, mode: str = "protected", deadline: float = DEADLINE, virtio=False) -> tuple[int, bytes]:
    """Run `source` (32-bit unless real mode) at FLAT_LOAD; (status, serial output)."""
    import threading

    code = assemble(source, bits=16 if mode == "real" else 32)
    guest = FuzzGuest("test", mode, 0, 0, RAM, True, code, ["test"])
    output = bytearray()
    config = MachineConfig(kernel=Path("test"), memory=RAM, kernel_format="raw", output=output.extend,
                           **({"virtio": fuzz_virtio()} if virtio else {}))
    with FuzzMachine(config, guest) as machine:
        timer = threading.Timer(deadline, machine.stop, (DEADLINE_STATUS,))
        timer.start()
        try:
            status = machine.run()
        finally:
            timer.cancel()
    return status, bytes(output)


def test_rep_outsb_across_the_end_of_ram_sends_the_ram_part():
    """2 KiB of RAM, then 2 KiB past its end: the RAM bytes reach the UART, then the guest goes on."""
    status, out = run("""
        movl $0x41414141, %eax
        mov $0x1ff800, %edi
        mov $0x200, %ecx
        rep stosl                    # the last 2 KiB of RAM: 'A's
        mov $0x3f8, %dx
        mov $0x1ff800, %esi
        mov $0x1000, %ecx
        rep outsb
    """ + POWER_OFF)
    assert status == 0, status
    assert out[:0x800] == b"A" * 0x800, out[:64]


def test_rep_insb_past_the_end_of_ram_completes():
    """A string input whose buffer runs off the end of RAM: ecx still counts down to 0."""
    status, _ = run("""
        mov $0x3f8, %dx
        mov $0x1ffff0, %edi
        mov $0x100, %ecx
        rep insb
        mov %ecx, %eax
        out %eax, $0xf4              # debug-exit: the count left
    """)
    assert status == exit_status(0), status


def test_a_four_billion_rep_insl_is_ended_by_the_host():
    """rep insl of 2**32 - 1 CMOS reads: an exit each; the host's stop ends it mid-instruction."""
    started = time.monotonic()
    status, _ = run("""
        mov $0x71, %dx
        mov $0x10000, %edi
        mov $0xffffffff, %ecx
        rep insl
    """ + POWER_OFF, deadline=1.0)
    assert status == DEADLINE_STATUS, status
    assert time.monotonic() - started < DEADLINE, "the stop took as long as the test's own bound"


def test_string_mmio_from_the_gap_reads_all_ones():
    """rep movsl out of the MMIO gap (nothing mapped): each dword is all-ones, as on an empty bus."""
    status, _ = run("""
        mov $0xc0000000, %esi
        mov $0x2000, %edi
        mov $0x10, %ecx
        rep movsl
        mov 0x203c, %eax             # the last dword copied
        out %eax, $0xf4
    """)
    assert status == exit_status(0xFFFFFFFF), hex(status)


def test_the_fuzz_machine_has_its_virtio_devices_where_guestgen_aims():
    """Slots 0, 1, 2 of the virtio-mmio windows: block (2), console (3), entropy (4)."""
    base = 0xD0000000
    status, _ = run(f"""
        mov {base + 0x008:#x}, %eax
        mov {base + 0x1008:#x}, %ebx
        shl $8, %ebx
        or %ebx, %eax
        mov {base + 0x2008:#x}, %ebx
        shl $16, %ebx
        or %ebx, %eax
        out %eax, $0xf4
    """, virtio=True)
    assert status == exit_status(0x040302), hex(status)


@pytest.mark.parametrize("queue_at", [0x1FFFF8, 0xFFFFF000, 0x10000])
def test_a_kick_of_a_queue_past_ram_or_of_random_descriptors_stops_only_the_guest(queue_at):
    """The disk's queue 0 with its rings at the end of RAM, past it, or on random bytes: a kick
    ends in a documented status (the guest powers off, or its VM stops with an error)."""
    disk = 0xD0000000
    status, _ = run(f"""
        mov $0x10000, %edi
        mov $0x100, %ecx
        mov $0x9e3779b9, %eax
    1:  imul $0x01000193, %eax, %eax
        stosl
        loop 1b                      # 1 KiB of pseudo-random descriptors at 0x10000
        movl $0, {disk + 0x070:#x}
        movl $3, {disk + 0x070:#x}   # ACKNOWLEDGE | DRIVER
        movl $1, {disk + 0x024:#x}
        movl $1, {disk + 0x020:#x}   # VIRTIO_F_VERSION_1 (feature bit 32)
        movl $11, {disk + 0x070:#x}  # + FEATURES_OK
        movl $0, {disk + 0x030:#x}
        movl $256, {disk + 0x038:#x}
        movl ${queue_at:#x}, {disk + 0x080:#x}
        movl ${queue_at:#x}, {disk + 0x090:#x}
        movl ${queue_at:#x}, {disk + 0x0a0:#x}
        movl $1, {disk + 0x044:#x}
        movl $15, {disk + 0x070:#x}  # DRIVER_OK
        movl $0, {disk + 0x050:#x}   # the kick
        movl $0, {disk + 0x050:#x}
    """ + POWER_OFF, virtio=True)
    assert status in (0, 1), status


def test_ctrl_c_during_a_port_storm_is_one_line(tmp_path):
    """The CLI (`--format raw`) under a guest that never stops writing to an unmapped port."""
    kernel = tmp_path / "storm.bin"
    kernel.write_bytes(assemble("""
        mov $0x3f8, %dx
        mov $'R', %al
        out %al, %dx                 # ready: the test waits for this byte
        mov $0x80, %dx
    1:  mov $0xffff, %cx
        rep outsw
        jmp 1b
    """))
    proc = subprocess.Popen([sys.executable, "-m", "pykvm", "boot", "--kernel", str(kernel), "--format", "raw",
                             "--mem", "2M"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    with proc, selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(DEADLINE * 4), "the guest never printed its ready byte"
        assert os.read(proc.stdout.fileno(), 1) == b"R"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=DEADLINE * 4)
    err = err.decode(errors="replace")
    assert "Traceback" not in err, err
    assert proc.returncode == 130, (proc.returncode, err)
    assert [line for line in err.splitlines() if line.startswith("pykvm:") and "unmapped" not in line] == \
        ["pykvm: aborted"], err


def test_debug_exit_of_all_ones_through_the_cli_is_status_255(tmp_path):
    """A 32-bit debug-exit write of 0xffffffff: VM status (V << 1) | 1, 33 bits; the process ends
    with its low byte, 0xff, as QEMU does (found by the guest fuzzer: an OverflowError)."""
    kernel = tmp_path / "exit.bin"
    kernel.write_bytes(assemble("""
        mov $0xffffffff, %eax
        out %eax, $0xf4
    """))
    done = subprocess.run([sys.executable, "-m", "pykvm", "boot", "--kernel", str(kernel), "--format", "raw",
                           "--mem", "2M"], stdin=subprocess.DEVNULL, capture_output=True, cwd=ROOT,
                          timeout=DEADLINE * 4)
    assert (done.returncode, done.stderr) == (0xFF, b""), done


def test_every_generated_real_mode_guest_is_a_file_pykvm_boots():
    """The CLI path writes the guest to a file, and pykvm refuses an empty one (status 2):
    a real-mode guest whose actions were all skipped and which runs on must still have code.
    The seed is one a 10,000-guest run found empty."""
    assert generate("virtio-10k:1700", mode="real").code
    assert all(generate(f"empty:{i}", mode="real").code for i in range(2000))
