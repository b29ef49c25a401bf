"""GdbStub: gdb's remote target for a running VM, over TCP.

How the pieces meet (GDB manual, "Remote Protocol"; KVM's api.rst,
KVM_SET_GUEST_DEBUG and KVM_EXIT_DEBUG):

  * an acceptor thread waits for gdb on the listening socket; one client at
    a time, as gdbserver.  A new client stops the guest (gdb expects a
    stopped target: it asks `?` first);
  * the connection's reader thread acks packets and queues them; an
    interrupt byte (Ctrl-C) asks the running vCPU to stop;
  * the vCPU threads stay in the machine's run loop.  A debug exit or a stop
    request makes the run loop call into the stub, and that vCPU's thread
    serves gdb's packets until gdb resumes, detaches or kills: all-stop mode,
    like QEMU's gdbstub.  Other vCPUs park while one serves.

One gdb thread per vCPU: thread id n is vCPU n-1.  gdb's breakpoints take
one of two paths, chosen once per VM:

  * int3 written over the code (swbreak.py), where the CPU runs the guest
    kernel itself (hardware KVM: VMX, SVM): as many as gdb likes;
  * the debug registers of every vCPU, on PVM-backed KVM, whose instruction
    emulator cannot execute int3 (debugregs.py): four at most.

Hardware breakpoints (hbreak, Z1) and watchpoints use the debug registers.
Write watchpoints take one of two paths, chosen once per VM too:

  * debug registers (R/W = 01), where the CPU checks data breakpoints for
    every instruction (hardware KVM: VMX, SVM);
  * single-stepping and comparing, on PVM-backed KVM: there the guest kernel
    runs in KVM's instruction emulator, which does not check data
    breakpoints.  The stub steps the vCPU with the trap flag and compares
    the watched bytes after every instruction (slow, but exact; gdb does
    the same itself for "software watchpoints").  Access watchpoints need
    the hardware and are refused on PVM.
"""
from __future__ import annotations

import errno
import logging
import queue
import socket
import threading
from dataclasses import dataclass

from pykvm.errors import ConfigError
from pykvm.vm.gdb import debugregs
from pykvm.vm.gdb.swbreak import BP_VECTOR, INT3, SoftwareBreakpoints, give_back_to_guest
from pykvm.vm.gdb.connection import DISCONNECTED, Connection
from pykvm.vm.gdb.handlers import (ANY_THREAD, E_INVALID, E_NO_SPACE, EMPTY, OK, STEP, WATCH_KINDS, Z_ACCESS,
                                Z_HARDWARE, Z_READ, Z_SOFTWARE, Z_WRITE, Detach, Handlers, Kill, Resume)
from pykvm.vm.gdb.paging import PagingState, UnmappedAddress, read_virtual, write_virtual
from pykvm.vm.gdb.tdesc import RegisterFile
from pykvm.vm.kvm.bindings import lib
from pykvm.vm.kvm.system import kvm_backend

__all__ = ["GdbStub", "listen", "parse_address", "DEFAULT_ADDRESS", "KILL_STATUS"]

log = logging.getLogger("pykvm.vm.gdb")

DEFAULT_HOST, DEFAULT_PORT = "localhost", 1234      # as QEMU's -s
DEFAULT_ADDRESS = f"{DEFAULT_HOST}:{DEFAULT_PORT}"
KILL_STATUS = 137           # pykvm's exit status after gdb's `kill`: 128 + SIGKILL, as a shell shows it
POLL_SECONDS = 0.2          # how often a waiting thread checks whether the VM is ending
SIGINT, SIGTRAP = 2, 5      # signal numbers in stop replies ("Stop Reply Packets")

# KVM_SET_GUEST_DEBUG control bits (api.rst, 4.59), from <linux/kvm.h> and <asm/kvm.h>.
GUESTDBG_ENABLE, GUESTDBG_SINGLESTEP = lib.KVM_GUESTDBG_ENABLE, lib.KVM_GUESTDBG_SINGLESTEP
GUESTDBG_USE_HW_BP, GUESTDBG_BLOCKIRQ = lib.KVM_GUESTDBG_USE_HW_BP, lib.KVM_GUESTDBG_BLOCKIRQ
GUESTDBG_USE_SW_BP = lib.KVM_GUESTDBG_USE_SW_BP


def parse_address(text: str) -> tuple[str, int]:
    """`[HOST:]PORT` -> (host, port); an empty host means localhost (never every interface).

    Port 0 asks the kernel for a free port (the stub says which when it starts).
    """
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"--gdb {text}: the port must be a number, as in localhost:1234") from None
    if not 0 <= number < 65536:
        raise ConfigError(f"--gdb {text}: port {number} is not between 0 and 65535")
    return host or DEFAULT_HOST, number


def listen(address: str) -> socket.socket:
    """The listening socket, or a ConfigError that says what to do (a port in use, ...)."""
    host, port = parse_address(address)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(1)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"--gdb {address}: port {port} is in use (another pykvm or QEMU -s?); "
                              "choose another with --gdb HOST:PORT") from None
        raise ConfigError(f"--gdb {address}: cannot listen: {e.strerror or e}") from None
    return sock


@dataclass
class Watch:
    """A write watchpoint kept by single-stepping: the bytes last seen there."""

    address: int
    length: int
    value: bytes | None


class GdbStub:
    """The gdb server of one VM; the machine's run loop calls the vcpu_* hooks."""

    def __init__(self, server: socket.socket, vcpus: list, memory, *, kick, stop, exit_requested,
                 wait: bool, watch_by_stepping: bool, block_irq: bool, int3_breakpoints: bool = False):
        self.server, self.vcpus, self.memory = server, vcpus, memory
        self._kick, self._stop_vm, self._exit_requested = kick, stop, exit_requested
        self.wait, self.watch_by_stepping, self.block_irq = wait, watch_by_stepping, block_irq
        self.connection: Connection | None = None
        self.handlers = Handlers(self)
        self.debugregs = debugregs.DebugRegisters()
        self.swbreaks = SoftwareBreakpoints(memory) if int3_breakpoints else None
        self.breakpoint_kind: dict[int, str] = {}      # address -> "swbreak"/"hwbreak" stop reason
        self.watches: list[Watch] = []                   # stepping watchpoints (PVM)
        self.current_thread = 1                          # Hg: registers and memory
        self.continue_thread = ANY_THREAD                # Hc: s and c
        self.last_stop = b"S%02x" % SIGTRAP
        self._stepping: set[int] = set()                 # vCPU indexes gdb asked to single-step
        self._awaiting_stop = False                      # gdb sent c/s and waits for a stop reply
        self._lock = threading.Lock()
        self._pause: bytes | None = None                 # a stop reason waiting for the vCPU thread
        self._serving = threading.Event()                # one vCPU serves, the others park
        self._resumed = threading.Condition(self._lock)
        self._connected = threading.Event()
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept_loop, name="gdb-acceptor", daemon=True)
        self._acceptor.start()

    @classmethod
    def for_vm(cls, address: str, kvm, vcpus: list, memory, *, wait: bool, kick, stop, exit_requested):
        """Listen on `address` and pick the paths this KVM supports.

        KVM_CAP_SET_GUEST_DEBUG2 lists the control bits KVM accepts: with
        BLOCKIRQ a single step stays in the code instead of entering the
        timer's handler.  PVM (kvm_backend) has no data breakpoints in the
        guest kernel and cannot run int3 there: watchpoints single-step and
        breakpoints use debug registers.  Elsewhere breakpoints are int3,
        if KVM takes USE_SW_BP (a KVM without SET_GUEST_DEBUG2 lists
        nothing, and every x86 KVM with guest debugging has it).
        """
        kvm.require("KVM_CAP_SET_GUEST_DEBUG", "--gdb")
        supported = kvm.check_extension("KVM_CAP_SET_GUEST_DEBUG2")
        pvm = kvm_backend().startswith("PVM")
        int3 = not pvm and (supported == 0 or bool(supported & GUESTDBG_USE_SW_BP))
        return cls(listen(address), vcpus, memory, kick=kick, stop=stop, exit_requested=exit_requested,
                   wait=wait, watch_by_stepping=pvm, block_irq=bool(supported & GUESTDBG_BLOCKIRQ),
                   int3_breakpoints=int3)

    @property
    def client_connected(self) -> bool:
        """A debugger is connected and the vCPUs were asked to stop for it."""
        return self._connected.is_set()

    @property
    def address(self) -> tuple[str, int]:
        return self.server.getsockname()[:2]

    # --- what handlers use -------------------------------------------------------
    def thread_ids(self) -> list[int]:
        return [n + 1 for n in range(len(self.vcpus))]

    def has_thread(self, thread: int) -> bool:
        return 1 <= thread <= len(self.vcpus)

    def select_thread(self, thread: int) -> None:
        if self.has_thread(thread):
            self.current_thread = thread

    def _vcpu(self):
        return self.vcpus[self.current_thread - 1]

    def registers(self) -> RegisterFile:
        return RegisterFile(self._vcpu())

    def read_memory(self, address: int, length: int) -> bytes:
        """Guest memory as gdb should see it: without the int3 bytes of its own breakpoints."""
        data = read_virtual(self.memory, PagingState.of(self._vcpu()), address, length)
        return self.swbreaks.shadow(address, data) if self.swbreaks else data

    def write_memory(self, address: int, data: bytes) -> None:
        write_virtual(self.memory, PagingState.of(self._vcpu()), address, data)
        if self.swbreaks:
            self.swbreaks.rewritten(address, data)      # keep our int3 over what gdb wrote

    def insert_point(self, ztype: int, address: int, kind: int) -> bytes:
        """Z packets: breakpoints and watchpoints, in debug registers or by stepping."""
        if ztype == Z_READ:
            return EMPTY                 # x86 debug registers watch writes or all accesses, not reads
        if ztype in (Z_WRITE, Z_ACCESS) and self.watch_by_stepping:
            if ztype == Z_ACCESS:
                return EMPTY             # a read cannot be seen by comparing bytes
            return self._insert_watch(address, kind)
        if ztype == Z_SOFTWARE and self.swbreaks is not None:
            try:
                self.swbreaks.insert(PagingState.of(self._vcpu()), address)
            except UnmappedAddress:
                return E_INVALID
            return OK
        if ztype not in (Z_SOFTWARE, Z_HARDWARE, Z_WRITE, Z_ACCESS):
            return EMPTY
        try:
            self.debugregs.insert(address, WATCH_KINDS.get(ztype, debugregs.EXEC), kind)
        except debugregs.NoFreeSlot:
            return E_NO_SPACE
        except debugregs.BadWatch:
            return E_INVALID
        if ztype in (Z_SOFTWARE, Z_HARDWARE):
            self.breakpoint_kind[address] = "swbreak" if ztype == Z_SOFTWARE else "hwbreak"
        return OK

    def remove_point(self, ztype: int, address: int, kind: int) -> bytes:
        if ztype == Z_WRITE and self.watch_by_stepping:
            self.watches = [w for w in self.watches if (w.address, w.length) != (address, kind)]
            return OK
        if ztype == Z_SOFTWARE and self.swbreaks is not None:
            self.swbreaks.remove(address)
            return OK
        if ztype not in (Z_SOFTWARE, Z_HARDWARE, Z_WRITE, Z_ACCESS):
            return EMPTY
        self.debugregs.remove(address, WATCH_KINDS.get(ztype, debugregs.EXEC), kind)
        return OK

    def _insert_watch(self, address: int, length: int) -> bytes:
        try:
            value = self.read_memory(address, length)
        except UnmappedAddress:
            return E_INVALID
        self.watches.append(Watch(address, length, value))
        return OK

    # --- connections (acceptor and reader threads) ----------------------------------
    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                sock, peer = self.server.accept()
            except OSError:
                return                                   # the listening socket was closed
            if self.connection is not None and not self.connection.closed:
                log.info("gdb: refusing %s: a debugger is already connected", peer)
                sock.close()
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            log.info("gdb: connection from %s", peer)
            self.connection = Connection(sock, on_interrupt=lambda: self._request_pause(b"T%02x" % SIGINT),
                                         on_disconnect=self._client_gone)
            self.connection.start()
            self._request_pause(b"T%02x" % SIGTRAP)     # a new client finds the guest stopped
            self._connected.set()

    def _request_pause(self, reason: bytes) -> None:
        """Ask the running vCPUs to stop; the first to see it serves gdb."""
        with self._lock:
            if self._pause is None:
                self._pause = reason
        self._kick()

    def _client_gone(self) -> None:
        """The client closed or lost the connection: as a detach, and listen for the next one."""
        self._connected.clear()
        with self._lock:
            self._pause = self._pause or b""             # b"": the vCPU thread only re-arms debugging
        self._kick()

    # --- hooks called by the machine's run loop, on vCPU threads ----------------------------
    def vcpu_started(self, vcpu) -> None:
        """Before the first KVM_RUN: with --gdb-wait, wait for gdb and serve it."""
        if not self.wait:
            log.warning("gdb: listening on %s:%d", *self.address)
            return
        log.warning("gdb: waiting for a debugger on %s:%d", *self.address)
        while not self._connected.wait(POLL_SECONDS):
            if self._exit_requested():
                return
        self.vcpu_interrupted(vcpu)

    def vcpu_interrupted(self, vcpu) -> None:
        """KVM_RUN returned EINTR: serve gdb if a stop was asked for, park if another vCPU serves."""
        vcpu.immediate_exit = False
        with self._lock:
            reason, self._pause = self._pause, None
        if reason is None:
            self._park_while_serving()
        elif reason == b"":
            self._drop_client()
        else:
            self._stop(vcpu, reason)

    def vcpu_debug_exit(self, vcpu, debug) -> None:
        """KVM_EXIT_DEBUG: a breakpoint, a watchpoint or a single step; stop, or step on."""
        if self.connection is None or self.connection.closed:
            self._drop_client()                          # the client left while the guest ran
            return
        if debug.exception == BP_VECTOR and self._not_ours(vcpu, debug.pc):
            return
        index = self.vcpus.index(vcpu)
        reply = self._stop_reply(index, debug)
        if reply is not None:
            with self._lock:
                self._pause = None
            self._stop(vcpu, reply)

    def guest_exited(self, status: int | None) -> None:
        """The VM ends: tell a waiting gdb ("W" stop reply), then close everything."""
        if self.connection is not None and self._awaiting_stop and status is not None:
            self.connection.send(b"W%02x" % (status & 0xFF))
        self.close()

    def _not_ours(self, vcpu, pc: int) -> bool:
        """An int3 exit that gdb did not ask for: handle it, and say so.

        The guest's own int3 goes back to the guest.  An int3 that is no
        longer in memory was one of gdb's, taken out while this vCPU was on
        its way here (another vCPU stopped first): rip still points at it,
        so resuming runs the instruction that is there again.
        """
        if self.swbreaks is None or pc in self.swbreaks:
            return False
        try:
            still_there = read_virtual(self.memory, PagingState.of(vcpu), pc, 1) == bytes([INT3])
        except UnmappedAddress:
            still_there = False
        if still_there:
            give_back_to_guest(vcpu)
        return True

    # --- stopping and serving --------------------------------------------------------------
    def _stop_reply(self, index: int, debug) -> bytes | None:
        thread = b"thread:%02x;" % (index + 1)
        if debug.exception == BP_VECTOR:
            return b"T%02xswbreak:;%s" % (SIGTRAP, thread)
        for n in debugregs.hit_slots(debug.dr6):
            slot = self.debugregs.slots[n]
            if slot is None:
                continue
            if slot.kind == debugregs.EXEC:
                return b"T%02x%s:;%s" % (SIGTRAP, self.breakpoint_kind.get(slot.address, "hwbreak").encode(),
                                         thread)
            name = b"watch" if slot.kind == debugregs.WRITE else b"awatch"
            return b"T%02x%s:%x;%s" % (SIGTRAP, name, slot.address, thread)
        changed = self._changed_watch()
        if changed is not None:
            return b"T%02xwatch:%x;%s" % (SIGTRAP, changed.address, thread)
        if self._pause:                                  # Ctrl-C while stepping for watchpoints
            return b"T%02x%s" % (SIGINT, thread)
        if index in self._stepping or not debug.dr6 & debugregs.DR6_SINGLE_STEP:
            return b"T%02x%s" % (SIGTRAP, thread)
        return None                                      # a step for the watchpoints: go on

    def _changed_watch(self) -> Watch | None:
        for watch in self.watches:
            value = self._peek(watch)
            if value != watch.value:
                watch.value = value
                return watch
        return None

    def _stop(self, vcpu, reply: bytes) -> None:
        """All-stop: this vCPU serves gdb until it resumes; the others park (vcpu_interrupted).

        One stop at a time: a vCPU that stops while another serves parks
        too, and its event is dropped (a breakpoint hits again on resume).
        """
        if self.connection is None or self.connection.closed:
            return
        with self._lock:
            serving_elsewhere = self._serving.is_set()
            if not serving_elsewhere:
                self._serving.set()
                self._pause = None                      # this stop answers any pending request
        if serving_elsewhere:
            self._park_while_serving()
            return
        if len(self.vcpus) > 1:
            self._kick()
        self.current_thread = self.vcpus.index(vcpu) + 1
        self.last_stop = reply if b"thread:" in reply else reply + b"thread:%02x;" % self.current_thread
        for watch in self.watches:                      # the guest may have changed them: start afresh
            watch.value = self._peek(watch)
        if self._awaiting_stop:
            self._awaiting_stop = False
            self.connection.send(self.last_stop)
        try:
            self._serve()
        finally:
            with self._lock:
                self._serving.clear()
                self._resumed.notify_all()

    def _peek(self, watch: Watch) -> bytes | None:
        try:
            return self.read_memory(watch.address, watch.length)
        except UnmappedAddress:
            return None

    def _serve(self) -> None:
        connection = self.connection
        while True:
            try:
                payload = connection.next_packet(timeout=POLL_SECONDS)
            except queue.Empty:
                if self._exit_requested():
                    return
                continue
            if payload is DISCONNECTED:
                self._drop_client()
                return
            result = self.handlers.handle(payload)
            match result:
                case bytes():
                    connection.send(result)
                case Resume():
                    self._resume(result)
                    return
                case Detach():
                    connection.send(OK)
                    self._drop_client()
                    return
                case Kill(reply=reply):
                    if reply is not None:
                        connection.send(reply)
                    log.warning("gdb: killed by the debugger; pykvm exits with status %d", KILL_STATUS)
                    self._stop_vm(KILL_STATUS)
                    self._drop_client()
                    return

    def _resume(self, resume: Resume) -> None:
        if resume.address is not None:
            regs = self._vcpu().get_regs()
            regs.rip = resume.address
            self._vcpu().set_regs(regs)
        self._stepping = {n for n in range(len(self.vcpus))
                          if resume.actions.get(n + 1, resume.default) == STEP}
        self._awaiting_stop = True
        with self._lock:
            self._pause = None                          # a Ctrl-C that raced with the stop is void
        for vcpu in self.vcpus:
            vcpu.immediate_exit = False
        self._arm()

    def _arm(self) -> None:
        """KVM_SET_GUEST_DEBUG on every vCPU, from the breakpoints and who steps."""
        attached = self.connection is not None and not self.connection.closed
        for n, vcpu in enumerate(self.vcpus):
            control = 0
            if attached and self.debugregs:
                control |= GUESTDBG_ENABLE | GUESTDBG_USE_HW_BP
            if attached and self.swbreaks:
                control |= GUESTDBG_ENABLE | GUESTDBG_USE_SW_BP
            if attached and n in self._stepping:
                control |= GUESTDBG_ENABLE | GUESTDBG_SINGLESTEP
                if self.block_irq:
                    control |= GUESTDBG_BLOCKIRQ        # stepi stays in the code, as QEMU's default
            elif attached and self.watches:
                control |= GUESTDBG_ENABLE | GUESTDBG_SINGLESTEP
            vcpu.set_guest_debug(control, self.debugregs.debugreg() if control else None)

    def _park_while_serving(self) -> None:
        with self._lock:
            while self._serving.is_set() and not self._exit_requested():
                self._resumed.wait(POLL_SECONDS)

    def _drop_client(self) -> None:
        """Detach: forget breakpoints and watchpoints, give the guest its own debug registers."""
        if self.connection is not None:
            self.connection.close()
        self.debugregs.clear()
        if self.swbreaks is not None:
            self.swbreaks.clear()
        self.breakpoint_kind.clear()
        self.watches.clear()
        self._stepping.clear()
        self._awaiting_stop = False
        self._arm()

    def close(self) -> None:
        """Stop listening and drop any client."""
        self._closed = True
        try:
            self.server.shutdown(socket.SHUT_RDWR)     # wakes the acceptor's accept()
        except OSError:
            pass
        try:
            self.server.close()
        except OSError:
            pass
        if self.connection is not None:
            self.connection.close()
