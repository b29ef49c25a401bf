"""What the watchdog says about a vCPU that runs without exits (pykvm/vm/watchdog.py describe_vcpu).

The registers are plain values here; tests/kvm/test_watchdog.py reads them from real vCPUs.
"""
from types import SimpleNamespace

import pytest

from pykvm.vm.memory import MIN_MEMORY, GuestMemory
from pykvm.vm.watchdog import SELF_JUMP_HINT, ZEROS_HINT, describe_vcpu


def vcpu(cr0=0, efer=0, cs_long=0, selector=0, base=0):
    cs = SimpleNamespace(selector=selector, base=base, l=cs_long)
    sregs = SimpleNamespace(cr0=cr0, efer=efer, cs=cs)
    return SimpleNamespace(id=0, get_sregs=lambda: sregs)


@pytest.fixture
def memory():
    with GuestMemory(MIN_MEMORY) as mem:
        mem.write(0x1000, bytes.fromhex("ebfe"))
        mem.write(0x2000, bytes.fromhex("f4"))
        yield mem


def test_self_jump_in_real_mode(memory):
    text = describe_vcpu(vcpu(), SimpleNamespace(rip=0x1000), memory)
    assert text == f"vCPU 0 runs in real mode at 0000:1000, code eb fe 00 00 00 00 00 00: {SELF_JUMP_HINT}"


def test_zeroed_memory_with_a_segment_base(memory):
    text = describe_vcpu(vcpu(selector=0x100, base=0x1000), SimpleNamespace(rip=0x800), memory)
    assert text.startswith("vCPU 0 runs in real mode at 0100:0800, code 00 00"), text
    assert text.endswith(ZEROS_HINT), text


def test_other_code_has_no_hint(memory):
    text = describe_vcpu(vcpu(cr0=1), SimpleNamespace(rip=0x2000), memory)
    assert text == "vCPU 0 runs in protected mode at rip 0x2000, code f4 00 00 00 00 00 00 00"


def test_paging_or_outside_ram_shows_no_code(memory):
    long_mode = vcpu(cr0=1 | 1 << 31, efer=1 << 10, cs_long=1)
    assert describe_vcpu(long_mode, SimpleNamespace(rip=0x1000), memory) == \
        "vCPU 0 runs in 64-bit mode at rip 0x1000"
    assert describe_vcpu(vcpu(cr0=1), SimpleNamespace(rip=0x7FFFFFF0), memory) == \
        "vCPU 0 runs in protected mode at rip 0x7ffffff0"
