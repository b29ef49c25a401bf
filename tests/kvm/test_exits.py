"""VM exits, one kind per test, from a few instructions of guest code."""
import pytest

from pykvm.vm.kvm import Hlt, IoIn, IoOut, MmioRead, MmioWrite, Shutdown
from vmkit import bare_vm

pytestmark = pytest.mark.kvm


def test_out_then_hlt():
    with bare_vm("""
        mov $'A', %al
        out %al, $0x10
        hlt
    """) as (vm, vcpu, mem):
        first = vcpu.run()
        assert isinstance(first, IoOut), first
        assert (first.port, first.size, first.data) == (0x10, 1, b"A"), first
        assert isinstance(vcpu.run(), Hlt)


def test_an_exit_kept_by_the_caller_does_not_change_under_it():
    with bare_vm("""
        mov $'A', %al
        out %al, $0x10
        mov $'B', %al
        out %al, $0x11
        hlt
    """) as (vm, vcpu, mem):
        first = vcpu.run()
        second = vcpu.run()
        assert first is not second
        assert (first.port, first.data) == (0x10, b"A"), first
        assert (second.port, second.data) == (0x11, b"B"), second


def test_in_gets_the_value_we_reply():
    with bare_vm("""
        in $0x20, %al
        add $1, %al
        out %al, $0x21
        hlt
    """) as (vm, vcpu, mem):
        read = vcpu.run()
        assert isinstance(read, IoIn) and (read.port, read.size) == (0x20, 1), read
        read.reply(0x41)
        written = vcpu.run()
        assert isinstance(written, IoOut) and written.data == b"\x42", written


def test_16_bit_port_write():
    with bare_vm("""
        mov $0x1234, %ax
        mov $0x604, %dx
        out %ax, %dx
        hlt
    """) as (vm, vcpu, mem):
        exit = vcpu.run()
        assert isinstance(exit, IoOut) and exit.size == 2 and exit.values() == [0x1234], exit


def test_rep_outsb_delivers_every_byte():
    with bare_vm("""
        mov $msg, %si
        mov $5, %cx
        mov $0x3f8, %dx
        rep outsb
        hlt
    msg: .ascii "hello"
    """) as (vm, vcpu, mem):
        out = b""
        while isinstance(exit := vcpu.run(), IoOut):
            out += exit.data
        assert out == b"hello"
        assert isinstance(exit, Hlt), exit


def test_mmio_write_and_read_outside_ram():
    # 32-bit flat mode, so the guest can address past its 2 MiB of RAM: no memory
    # slot covers 0x300000, so KVM hands those accesses to us as MMIO exits.
    with bare_vm("""
        movl $0xdeadbeef, 0x300000
        movw 0x300010, %ax
        out %ax, $0x10
        hlt
    """, bits=32) as (vm, vcpu, mem):
        assert not mem.contains(0x300000)
        write = vcpu.run()
        assert isinstance(write, MmioWrite), write
        assert (write.address, write.size, write.data) == (0x300000, 4, 0xDEADBEEF), write
        read = vcpu.run()
        assert isinstance(read, MmioRead) and (read.address, read.size) == (0x300010, 2), read
        read.reply(0xBEEF)
        out = vcpu.run()
        assert isinstance(out, IoOut) and out.values() == [0xBEEF], out


def test_ram_writes_do_not_exit():
    with bare_vm("""
        movl $0x12345678, 0x100000
        hlt
    """, bits=32) as (vm, vcpu, mem):
        assert isinstance(vcpu.run(), Hlt)
        assert mem.read(0x100000, 4) == (0x12345678).to_bytes(4, "little")


def test_triple_fault_is_a_shutdown_exit():
    # An IDT with limit 0 cannot deliver #UD: #UD -> #DF -> triple fault.
    # (Protected mode: PVM's real-mode emulation loops on this instead of shutting down.)
    with bare_vm("""
        lidt idt
        ud2
    idt: .word 0
         .long 0
    """, bits=32) as (vm, vcpu, mem):
        exit = vcpu.run()
        assert isinstance(exit, Shutdown), exit


def test_registers_answered_in_c_never_reach_python():
    # answer_in_c: a load at 0x300000 reads the word, a store at 0x300004 clears the bits it
    # writes; both re-enter the guest at once.  Other MMIO still exits, as before.
    from pykvm.vm.kvm.bindings import ffi, lib

    with bare_vm("""
        movl 0x300000, %eax         # answered: the word, 0b0111
        movl %eax, 0x300100         # reported to us
        movl $0b0101, 0x300004      # answered: clears bits 0 and 2
        movl 0x300000, %eax         # answered: 0b0010
        movl %eax, 0x300100
        movw 0x300000, %ax          # two bytes wide: not answered, comes to us
        movl 0x300004, %eax         # a load where only stores are answered: comes to us
        hlt
    """, bits=32) as (vm, vcpu, mem):
        word = ffi.new("uint32_t *", 0b0111)
        vcpu.answer_in_c([(0x300000, lib.ANSWER_READ, word),
                          (0x300004, lib.ANSWER_WRITE_CLEARS, word)])
        first = vcpu.run()
        assert isinstance(first, MmioWrite) and (first.address, first.data) == (0x300100, 0b0111), first
        second = vcpu.run()
        assert isinstance(second, MmioWrite) and second.data == 0b0010, second
        assert word[0] == 0b0010
        narrow = vcpu.run()
        assert isinstance(narrow, MmioRead) and (narrow.address, narrow.size) == (0x300000, 2), narrow
        narrow.reply(0)
        wrong_way = vcpu.run()
        assert isinstance(wrong_way, MmioRead) and wrong_way.address == 0x300004, wrong_way
        wrong_way.reply(0)
        assert isinstance(vcpu.run(), Hlt)
        assert (vcpu.answered_counts.reads, vcpu.answered_counts.writes) == (2, 1)


def test_answer_in_c_with_no_registers_is_plain_kvm_run():
    from pykvm.vm.kvm.bindings import ffi, lib

    with bare_vm("""
        movl 0x300000, %eax
        hlt
    """, bits=32) as (vm, vcpu, mem):
        word = ffi.new("uint32_t *", 1)
        vcpu.answer_in_c([(0x300000, lib.ANSWER_READ, word)])
        vcpu.answer_in_c([])
        read = vcpu.run()
        assert isinstance(read, MmioRead) and read.address == 0x300000, read
        read.reply(0)
        assert isinstance(vcpu.run(), Hlt)
        assert vcpu.answered_counts.reads == 0
