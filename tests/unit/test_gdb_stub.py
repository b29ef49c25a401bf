"""The gdb stub's packet handlers and page-table walk, without KVM: a gdb client over TCP
loopback talks to a real GdbStub whose vCPU is a stand-in holding KVM's register structs.

GDB manual, "Packets", "General Query Packets", "Stop Reply Packets"; Intel SDM
Vol. 3A, 4.5 (4-level paging); Vol. 3B, 17.2 (debug registers).
"""
import socket
import threading
import xml.etree.ElementTree as ET

import pytest

from clitools import one_error_line, pykvm, wait_for
from pykvm.vm.gdb import KILL_STATUS, GdbStub, listen
from pykvm.vm.gdb.packets import Framer, Packet, frame
from pykvm.vm.gdb.paging import (CR0_PG, CR4_PAE, EFER_LMA, PagingState, UnmappedAddress, read_virtual,
                              translate)
from pykvm.vm.gdb.stub import GUESTDBG_ENABLE, GUESTDBG_SINGLESTEP, GUESTDBG_USE_HW_BP, GUESTDBG_USE_SW_BP
from pykvm.vm.gdb.swbreak import BP_VECTOR, INT3
from pykvm.vm.gdb.tdesc import REGISTERS, TARGET_XML
from pykvm.vm.kvm import Debug
from pykvm.vm.kvm.bindings import ffi
from pykvm.vm.memory import GuestMemory

MIB = 1 << 20
PML4, PDPT, PD, PT = 0x10000, 0x11000, 0x12000, 0x13000     # the test's page tables
P, RW, PS = 1, 2, 0x80
CODE = 0x200000          # mapped by a 4 KiB page to physical PAGE_4K_PHYS
PAGE_4K_PHYS = 0x300000
LARGE = 0x400000         # a 2 MiB page mapped 1:1
GIANT = 1 << 30          # a 1 GiB page at 1 GiB, onto physical 0
HIGH = 0xFFFF_8000_0000_0000   # canonical, but PML4 entry 256 is not present


def build_page_tables(memory: GuestMemory) -> PagingState:
    def entry(table, index, value):
        memory.write(table + 8 * index, value.to_bytes(8, "little"))
    entry(PML4, 0, PDPT | P | RW)
    entry(PDPT, 0, PD | P | RW)
    entry(PDPT, 1, 0 | P | RW | PS)                     # 1 GiB page: 1 GiB -> 0
    entry(PD, CODE >> 21, PT | P | RW)
    entry(PD, LARGE >> 21, LARGE | P | PS)              # 2 MiB page, read-only
    entry(PT, 0, PAGE_4K_PHYS | P)                      # only the first 4 KiB of CODE's 2 MiB
    return PagingState(cr0=CR0_PG, cr3=PML4, cr4=CR4_PAE, efer=EFER_LMA)


class StandInVcpu:
    """Holds kvm_regs/kvm_sregs/kvm_fpu (the compiled structs) and records KVM_SET_GUEST_DEBUG."""

    def __init__(self, paging: PagingState):
        self.regs = ffi.new("struct kvm_regs *")
        self.sregs = ffi.new("struct kvm_sregs *")
        self.fpu = ffi.new("struct kvm_fpu *")
        self.regs.rip, self.regs.rax, self.regs.rflags = CODE, 0x1122334455667788, 0x202
        self.sregs.cs.selector, self.sregs.fs.base = 0x8, 0xABCD000
        self.sregs.cr0, self.sregs.cr3, self.sregs.cr4, self.sregs.efer = (
            paging.cr0, paging.cr3, paging.cr4, paging.efer)
        self.fpu.fcw = 0x37F
        self.guest_debug = []
        self.events = bytes(64)             # struct kvm_vcpu_events: nothing pending
        self.immediate_exit = False

    def get_regs(self):
        copy = ffi.new("struct kvm_regs *")
        copy[0] = self.regs[0]
        return copy

    def set_regs(self, regs):
        self.regs[0] = regs[0]

    def get_sregs(self):
        return self.sregs

    def get_fpu(self):
        return self.fpu

    def set_guest_debug(self, control, debugreg=None):
        self.guest_debug.append((control, list(debugreg or [])))

    def get_vcpu_events(self):
        return self.events

    def set_vcpu_events(self, data):
        self.events = data


class Client:
    """The gdb side: send a packet, read the + and the reply, ack it."""

    def __init__(self, address):
        self.sock = socket.create_connection(address, timeout=10)
        self.framer = Framer()
        self.events = []

    def send(self, payload: bytes) -> None:
        self.sock.sendall(frame(payload))

    def reply(self) -> bytes:
        while True:
            while self.events:
                event = self.events.pop(0)
                if isinstance(event, Packet):
                    self.sock.sendall(b"+")
                    return event.payload
            data = self.sock.recv(65536)
            assert data, "the stub closed the connection"
            self.events += self.framer.feed(data)

    def ask(self, payload: bytes) -> bytes:
        self.send(payload)
        return self.reply()


@pytest.fixture
def memory():
    with GuestMemory(8 * MIB) as memory:
        yield memory


@pytest.fixture
def int3():
    """Breakpoints in debug registers (PVM's path); the int3 tests parametrize this to True."""
    return False


@pytest.fixture
def session(memory, int3):
    """A stub stopped on its vCPU (served by a thread standing in for the vCPU thread), and a client."""
    paging = build_page_tables(memory)
    vcpu = StandInVcpu(paging)
    stopped = []
    stub = GdbStub(listen("127.0.0.1:0"), [vcpu], memory, kick=lambda: None, stop=stopped.append,
                   exit_requested=lambda: bool(stopped), wait=False, watch_by_stepping=False,
                   block_irq=True, int3_breakpoints=int3)
    client = Client(stub.address)
    wait_for(lambda: stub.client_connected, timeout=5)
    serving = threading.Thread(target=stub.vcpu_interrupted, args=(vcpu,), daemon=True)
    serving.start()
    yield stub, vcpu, client, serving, stopped
    client.sock.close()
    stub.close()
    serving.join(timeout=5)


def test_qsupported_names_packet_size_and_features(session):
    _, _, client, _, _ = session
    reply = client.ask(b"qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386")
    assert b"PacketSize=4000" in reply and b"qXfer:features:read+" in reply, reply


def test_target_description_arrives_in_chunks_and_numbers_the_registers(session):
    _, _, client, _, _ = session
    xml, offset = b"", 0
    while True:
        reply = client.ask(b"qXfer:features:read:target.xml:%x,%x" % (offset, 500))
        xml += reply[1:]
        offset += len(reply) - 1
        if reply[:1] == b"l":
            break
        assert reply[:1] == b"m", reply
    assert xml == TARGET_XML
    names = [reg.get("name") for reg in ET.fromstring(xml).iter("reg")]
    assert names[:17] == ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"] + [
        f"r{i}" for i in range(8, 16)] + ["rip"]
    assert "cr3" in names and "fs_base" in names and "st0" in names


def assert_replies(client: Client, exchanges: list[tuple[bytes, bytes]]) -> None:
    for request, expected in exchanges:
        reply = client.ask(request)
        assert reply == expected, f"{request!r} answered {reply!r}, expected {expected!r}"


def test_stop_reason_and_threads(session):
    _, _, client, _, _ = session
    assert_replies(client, [(b"?", b"T05thread:01;"), (b"qfThreadInfo", b"m01"), (b"qsThreadInfo", b"l"),
                            (b"qC", b"QC01"), (b"T01", b"OK"), (b"T02", b"E16"), (b"Hg1", b"OK")])
    assert bytes.fromhex(client.ask(b"qThreadExtraInfo,1").decode()) == b"vCPU 0"


def test_g_reads_every_register_in_description_order(session):
    _, vcpu, client, _, _ = session
    raw = bytes.fromhex(client.ask(b"g").decode())
    assert len(raw) == sum(r.bits for r in REGISTERS) // 8
    assert int.from_bytes(raw[:8], "little") == 0x1122334455667788            # rax
    assert int.from_bytes(raw[16 * 8:17 * 8], "little") == CODE                 # rip
    rip = int.from_bytes(bytes.fromhex(client.ask(b"p10").decode()), "little")
    assert rip == CODE
    assert client.ask(b"p%x" % len(REGISTERS)) == b"E16"                        # no such register


def test_p_and_g_write_general_registers_but_not_control_registers(session):
    _, vcpu, client, _, _ = session
    assert client.ask(b"P10=" + (0x100123).to_bytes(8, "little").hex().encode()) == b"OK"
    assert vcpu.regs.rip == 0x100123
    cr3 = [i for i, r in enumerate(REGISTERS) if r.name == "cr3"][0]
    assert client.ask(b"P%x=%s" % (cr3, b"00" * 8)) == b"E16"
    raw = bytearray(bytes.fromhex(client.ask(b"g").decode()))
    raw[8:16] = (0xB0B).to_bytes(8, "little")                                   # rbx
    assert client.ask(b"G" + raw.hex().encode()) == b"OK"
    assert vcpu.regs.rbx == 0xB0B
    assert client.ask(b"G0011") == b"E16"                                        # too short


def test_memory_reads_go_through_the_page_tables(session, memory):
    _, _, client, _, _ = session
    memory.write(PAGE_4K_PHYS, b"\x90\xc3")
    assert client.ask(b"m%x,2" % CODE) == b"90c3"
    assert client.ask(b"m%x,4" % (CODE + 0x1000)) == b"E0e"                     # PT entry 1 not present
    assert client.ask(b"m%x,8" % HIGH) == b"E0e"
    short = client.ask(b"m%x,10" % (CODE + 0xFF8))                              # crosses into nothing
    assert short == b"00" * 8, short


def test_a_huge_m_request_gets_a_packet_sized_reply(session):
    _, _, client, _, _ = session
    reply = client.ask(b"m%x,ffffffff" % LARGE)
    assert len(reply) == 0x4000, len(reply)                                      # PacketSize hex digits


def test_memory_writes_through_hex_and_binary(session, memory):
    _, _, client, _, _ = session
    assert client.ask(b"M%x,2:cafe" % CODE) == b"OK"
    assert memory.read(PAGE_4K_PHYS, 2) == b"\xca\xfe"
    assert client.ask(b"X%x,3:}\x03}\x04a" % (CODE + 4)) == b"OK"                # escaped # and $
    assert memory.read(PAGE_4K_PHYS + 4, 3) == b"#$a"
    assert client.ask(b"M%x,2:cafe" % (CODE + 0x1000)) == b"E0e"
    assert client.ask(b"M%x,3:cafe" % CODE) == b"E16"                            # length mismatch


def test_garbage_gets_an_error_or_the_empty_reply(session):
    _, _, client, _, _ = session
    assert_replies(client, [(b"mzz,4", b"E01"), (b"Z0,zz", b"E01"), (b"y", b""),
                            (b"qXfer:features:read:other.xml:0,10", b"E16")])
    client.sock.sendall(b"junk$g#00")                                            # noise, bad checksum
    assert client.sock.recv(1) == b"-"
    assert client.ask(b"?") == b"T05thread:01;"


def test_breakpoints_fill_four_debug_registers(session):
    stub, _, client, _, _ = session
    for n in range(4):
        assert client.ask(b"Z0,%x,1" % (CODE + n)) == b"OK"
    assert client.ask(b"Z1,%x,1" % (CODE + 9)) == b"E1c"                        # ENOSPC
    assert client.ask(b"z0,%x,1" % CODE) == b"OK"
    assert client.ask(b"Z2,%x,8" % 0x5004) == b"E16"                            # unaligned
    assert client.ask(b"Z2,%x,8" % 0x5000) == b"OK"
    assert client.ask(b"Z3,%x,8" % 0x5000) == b""                               # x86: no read-only watch
    dr = stub.debugregs.debugreg()
    assert dr[0] == 0x5000 and dr[7] & 0b11 == 1                                # DR0, L0
    assert (dr[7] >> 16) & 0b1111 == 0b1001                                     # RW0=01 write, LEN0=10 8 bytes


def test_continue_arms_the_debug_registers_and_step_the_trap_flag(session):
    stub, vcpu, client, serving, _ = session
    assert client.ask(b"Z0,%x,1" % CODE) == b"OK"
    client.send(b"vCont;s:1;c")
    serving.join(timeout=5)
    assert not serving.is_alive(), "vCont did not resume"
    control, debugreg = vcpu.guest_debug[-1]
    assert control & (GUESTDBG_ENABLE | GUESTDBG_USE_HW_BP | GUESTDBG_SINGLESTEP) == (
        GUESTDBG_ENABLE | GUESTDBG_USE_HW_BP | GUESTDBG_SINGLESTEP)
    assert debugreg[0] == CODE and debugreg[7] & 1


def test_vcont_query_lists_the_actions(session):
    _, _, client, _, _ = session
    assert client.ask(b"vCont?") == b"vCont;c;C;s;S"
    assert client.ask(b"vMustReplyEmpty") == b""


def test_detach_replies_ok_and_gives_the_guest_its_debug_registers_back(session):
    stub, vcpu, client, serving, stopped = session
    assert client.ask(b"Z0,%x,1" % CODE) == b"OK"
    assert client.ask(b"D") == b"OK"
    serving.join(timeout=5)
    assert vcpu.guest_debug[-1][0] == 0
    assert not stopped, "detach must not stop the VM"
    assert client.sock.recv(1) == b""                                            # closed by the stub


def test_kill_stops_the_vm_with_the_stated_status(session):
    _, _, client, serving, stopped = session
    client.send(b"k")
    serving.join(timeout=5)
    assert stopped == [KILL_STATUS]


def test_a_client_vanishing_mid_session_lets_the_guest_run_on(session):
    stub, vcpu, client, serving, stopped = session
    assert client.ask(b"Z1,%x,1" % CODE) == b"OK"
    client.send(b"m%x,4" % CODE)                                                 # and leave
    client.sock.close()
    serving.join(timeout=5)
    assert not serving.is_alive() and not stopped
    assert vcpu.guest_debug[-1][0] == 0


@pytest.mark.parametrize("z, dr6, expected", [
    (b"Z0,%x,1" % CODE, 0b1, b"T05swbreak:;thread:01;"),            # B0: the breakpoint in DR0
    (b"Z1,%x,1" % CODE, 0b1, b"T05hwbreak:;thread:01;"),
    (b"Z2,5000,8", 0b1, b"T05watch:5000;thread:01;"),                # a data write in DR0
    (b"Z4,5000,4", 0b1, b"T05awatch:5000;thread:01;"),
])
def test_a_debug_exit_becomes_the_stop_reply_gdb_waits_for(session, z, dr6, expected):
    stub, vcpu, client, serving, _ = session
    assert client.ask(z) == b"OK"
    client.send(b"vCont;c")
    serving.join(timeout=5)
    exit = Debug(exception=1, pc=CODE, dr6=0xFFFF0FF0 | dr6, dr7=0)
    again = threading.Thread(target=stub.vcpu_debug_exit, args=(vcpu, exit), daemon=True)
    again.start()                                           # the vCPU thread, back from KVM_RUN
    assert client.reply() == expected
    assert client.ask(b"?") == expected
    client.send(b"c")
    again.join(timeout=5)


SOFTWARE = pytest.mark.parametrize("int3", [True], ids=["int3"])


@SOFTWARE
def test_an_int3_breakpoint_is_in_memory_but_not_in_what_gdb_reads(session, memory):
    stub, vcpu, client, _, _ = session
    memory.write(PAGE_4K_PHYS, bytes.fromhex("554889e5"))            # push rbp; mov rbp, rsp
    assert client.ask(b"Z0,%x,1" % (CODE + 1)) == b"OK"
    assert memory.read(PAGE_4K_PHYS, 4) == bytes([0x55, INT3, 0x89, 0xE5])
    assert client.ask(b"m%x,4" % CODE) == b"554889e5"                  # the saved byte, shown
    assert client.ask(b"M%x,2:9090" % CODE) == b"OK"                  # gdb writes over it
    assert memory.read(PAGE_4K_PHYS, 2) == bytes([0x90, INT3]), "the int3 must stay in"
    assert client.ask(b"z0,%x,1" % (CODE + 1)) == b"OK"
    assert memory.read(PAGE_4K_PHYS, 4) == bytes.fromhex("909089e5")  # what gdb wrote, back
    assert not stub.debugregs, "an int3 breakpoint takes no debug register"


@SOFTWARE
def test_int3_breakpoints_have_no_limit_of_four_and_unmapped_is_an_error(session, memory):
    _, _, client, _, _ = session
    for n in range(8):
        assert client.ask(b"Z0,%x,1" % (CODE + n)) == b"OK"
    assert memory.read(PAGE_4K_PHYS, 8) == bytes([INT3]) * 8
    assert client.ask(b"Z0,%x,1" % HIGH) == b"E16"                     # not mapped: nothing written


@SOFTWARE
def test_continue_arms_use_sw_bp_and_detach_takes_every_int3_out(session, memory):
    stub, vcpu, client, serving, _ = session
    memory.write(PAGE_4K_PHYS, b"\x55")
    assert client.ask(b"Z0,%x,1" % CODE) == b"OK"
    client.send(b"c")
    serving.join(timeout=5)
    control, _ = vcpu.guest_debug[-1]
    assert control & (GUESTDBG_ENABLE | GUESTDBG_USE_SW_BP) == GUESTDBG_ENABLE | GUESTDBG_USE_SW_BP
    assert not control & GUESTDBG_USE_HW_BP
    exit = Debug(exception=BP_VECTOR, pc=CODE, dr6=0xFFFF0FF0, dr7=0)
    again = threading.Thread(target=stub.vcpu_debug_exit, args=(vcpu, exit), daemon=True)
    again.start()
    assert client.reply() == b"T05swbreak:;thread:01;"
    client.send(b"D")
    again.join(timeout=5)
    assert memory.read(PAGE_4K_PHYS, 1) == b"\x55" and vcpu.guest_debug[-1][0] == 0


@SOFTWARE
def test_the_guests_own_int3_goes_back_to_the_guest(session, memory):
    stub, vcpu, client, serving, _ = session
    memory.write(PAGE_4K_PHYS + 0x10, bytes([INT3]))                   # the guest's own, not gdb's
    assert client.ask(b"Z0,%x,1" % CODE) == b"OK"
    client.send(b"c")
    serving.join(timeout=5)
    stub.vcpu_debug_exit(vcpu, Debug(exception=BP_VECTOR, pc=CODE + 0x10, dr6=0xFFFF0FF0, dr7=0))
    assert vcpu.events[:4] == bytes([1, BP_VECTOR, 0, 0]), "#BP injected for the guest's handler"
    vcpu.events = bytes(64)
    stub.vcpu_debug_exit(vcpu, Debug(exception=BP_VECTOR, pc=CODE + 0x20, dr6=0xFFFF0FF0, dr7=0))
    assert vcpu.events == bytes(64), "no int3 there any more (gdb took it out): just run on"


def test_a_client_vanishing_while_the_guest_runs_disarms_debugging(session):
    stub, vcpu, client, serving, stopped = session
    assert client.ask(b"Z0,%x,1" % CODE) == b"OK"
    client.send(b"c")
    serving.join(timeout=5)
    assert vcpu.guest_debug[-1][0] & GUESTDBG_USE_HW_BP, "continue must arm DR0"
    client.sock.close()                                     # gdb killed while the guest runs
    wait_for(lambda: not stub.client_connected, timeout=5)
    stub.vcpu_interrupted(vcpu)                            # the vCPU thread, kicked out of KVM_RUN
    assert vcpu.guest_debug[-1][0] == 0 and not stopped


def test_walk_finds_4k_2m_and_1g_pages(memory):
    paging = build_page_tables(memory)
    assert translate(memory, paging, CODE + 0x123).physical == PAGE_4K_PHYS + 0x123
    large = translate(memory, paging, LARGE + 0x1234)
    assert large.physical == LARGE + 0x1234 and not large.writable
    assert translate(memory, paging, GIANT + 0x5678).physical == 0x5678
    with pytest.raises(UnmappedAddress, match="not canonical"):
        translate(memory, paging, 0x0000_8000_0000_0000)
    with pytest.raises(UnmappedAddress, match="PML4 entry 256 not present"):
        translate(memory, paging, HIGH)


def test_without_paging_virtual_is_physical(memory):
    assert translate(memory, PagingState(0, 0, 0, 0), 0x1234).physical == 0x1234
    with pytest.raises(UnmappedAddress):
        read_virtual(memory, PagingState(0, 0, 0, 0), 64 * MIB, 4)                # beyond RAM


def test_page_tables_outside_memory_are_an_error_not_a_crash(memory):
    broken = PagingState(cr0=CR0_PG, cr3=1 << 40, cr4=CR4_PAE, efer=EFER_LMA)
    with pytest.raises(UnmappedAddress, match="outside guest memory"):
        translate(memory, broken, CODE)


@pytest.mark.parametrize("address", ["localhost:http", "localhost:70000", "nonsense"])
def test_a_bad_gdb_address_is_one_error_line_before_any_vm(address):
    result = pykvm("boot", "--gdb", address, timeout=60)
    assert "--gdb" in one_error_line(result)
    assert result.returncode == 2


def test_each_vcpu_is_a_thread_and_hg_picks_whose_registers(memory):
    paging = build_page_tables(memory)
    vcpus = [StandInVcpu(paging), StandInVcpu(paging)]
    vcpus[1].regs.rip = CODE + 0x40
    stub = GdbStub(listen("127.0.0.1:0"), vcpus, memory, kick=lambda: None, stop=lambda status: None,
                   exit_requested=lambda: False, wait=False, watch_by_stepping=False, block_irq=True)
    client = Client(stub.address)
    wait_for(lambda: stub.client_connected, timeout=5)
    serving = threading.Thread(target=stub.vcpu_interrupted, args=(vcpus[0],), daemon=True)
    serving.start()
    try:
        assert_replies(client, [(b"qfThreadInfo", b"m01,02"), (b"T02", b"OK"), (b"Hg2", b"OK")])
        rip = int.from_bytes(bytes.fromhex(client.ask(b"p10").decode()), "little")
        assert rip == CODE + 0x40, "Hg2 must select vCPU 1's registers"
        client.send(b"vCont;s:2;c")
        serving.join(timeout=5)
        controls = [vcpu.guest_debug[-1][0] for vcpu in vcpus]
        assert controls[1] & GUESTDBG_SINGLESTEP and not controls[0] & GUESTDBG_SINGLESTEP, controls
    finally:
        client.sock.close()
        stub.close()
