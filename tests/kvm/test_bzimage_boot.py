"""The Linux boot protocol on real KVM, with a few instructions standing in for Linux.

The fake kernel prints the command line it finds through boot_params
(%rsi -> cmd_line_ptr at 0x228) and the number of e820 entries (0x1e8), then
leaves through isa-debug-exit, so both the 64-bit entry (startup_64 at
+0x200, long mode, identity-mapped) and the 32-bit entry are checked end to end.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from fake_bzimage import make_bzimage
from guestasm import assemble
from pykvm.vm import layout
from pykvm.errors import LoaderError

pytestmark = pytest.mark.kvm

PRINT_CMDLINE = """
    mov 0x228({si}), %ebx          /* boot_params.hdr.cmd_line_ptr */
    mov $0x3f8, %dx
1:  movb ({bx}), %al
    test %al, %al
    jz 2f
    out %al, %dx
    inc {bx}
    jmp 1b
2:  movb 0x1e8({si}), %al          /* boot_params.e820_entries */
    add $'0', %al
    out %al, %dx
    mov $0xf4, %dx                 /* isa-debug-exit: status (0x21 << 1) | 1 = 67 */
    mov $0x21, %al
    out %al, %dx
    hlt
"""


def boot(tmp_path, image: bytes, cmdline: str) -> subprocess.CompletedProcess:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(image)
    return subprocess.run([sys.executable, "-m", "pykvm", "boot", "--kernel", str(kernel),
                           "--mem", "64M", "--cmdline", cmdline],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=60)


def test_64bit_entry_gets_boot_params_in_rsi(tmp_path):
    code = assemble(PRINT_CMDLINE.format(si="%rsi", bx="%rbx"), bits=64,
                    origin=layout.HIMEM_START + 0x200)
    image = make_bzimage(xloadflags=0x1, kernel=b"\xf4" * 0x200 + code)   # startup_32 would just hlt
    proc = boot(tmp_path, image, "hello from the zero page")
    assert proc.stdout == b"hello from the zero page3", (proc.stdout, proc.stderr)
    assert proc.returncode == 67, proc.stderr


def test_32bit_entry_when_no_64bit_one(tmp_path):
    code = assemble(PRINT_CMDLINE.format(si="%esi", bx="%ebx"), bits=32, origin=layout.HIMEM_START)
    image = make_bzimage(xloadflags=0x0, kernel=code)
    proc = boot(tmp_path, image, "protected mode")
    assert proc.stdout == b"protected mode3", (proc.stdout, proc.stderr)
    assert proc.returncode == 67, proc.stderr


def test_bad_bzimage_is_one_line(tmp_path):
    proc = boot(tmp_path, make_bzimage(version=0x0205), "x")
    assert proc.returncode == LoaderError.exit_code == 2, proc.returncode  # bad input
    assert proc.stderr.decode().startswith("pykvm: error: ") and b"2.10" in proc.stderr, proc.stderr
    assert b"Traceback" not in proc.stderr


def test_default_cmdline_when_none_given(tmp_path):
    code = assemble(PRINT_CMDLINE.format(si="%rsi", bx="%rbx"), bits=64,
                    origin=layout.HIMEM_START + 0x200)
    image = make_bzimage(xloadflags=0x1, cmdline_size=2047, kernel=b"\xf4" * 0x200 + code)
    proc = boot(tmp_path, image, "")
    assert proc.stdout.startswith(b"console=ttyS0 earlyprintk=serial reboot=k,panic_warm"), proc.stdout
