"""pykvm's gdb stub: GDB's remote serial protocol over TCP, driving vCPUs through KVM's debug API.

    packets.py     framing: $payload#checksum, acks, escapes, Ctrl-C
    connection.py  one client's socket, its reader thread, retransmission
    handlers.py    one handler per packet letter (GDB manual, "Packets")
    tdesc.py       the x86-64 target description and register file
    paging.py      guest-virtual memory through a 4-level page-table walk
    debugregs.py   breakpoints and watchpoints in DR0-DR7
    stub.py        GdbStub: the server, all-stop serving, KVM_SET_GUEST_DEBUG

docs/07-stopping-a-running-kernel.md walks through them.
"""
from pykvm.vm.gdb.stub import DEFAULT_ADDRESS, KILL_STATUS, GdbStub, listen, parse_address

__all__ = ["GdbStub", "listen", "parse_address", "DEFAULT_ADDRESS", "KILL_STATUS"]
