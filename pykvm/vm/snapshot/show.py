"""`pykvm snapshot show DIR`: every part of a snapshot, in words.

Each describer reads a part's bytes as the KVM structure it is (the layouts
of <linux/kvm.h> and <asm/kvm.h>, through cffi where pykvm declares the
fields) and prints the few fields a student would look at first.
"""
from __future__ import annotations

import json
import struct
import time

from pykvm.sizes import format_size
from pykvm.vm.devices.virtio import mmio
from pykvm.vm.kvm.bindings import ffi, lib

__all__ = ["describe"]

MP_STATES = {lib.KVM_MP_STATE_RUNNABLE: "runnable", lib.KVM_MP_STATE_UNINITIALIZED: "uninitialized",
             lib.KVM_MP_STATE_INIT_RECEIVED: "INIT received", lib.KVM_MP_STATE_HALTED: "halted (in HLT)",
             lib.KVM_MP_STATE_SIPI_RECEIVED: "SIPI received"}
MSR_NAMES = {0x10: "TSC", 0x1B: "APIC_BASE", 0x174: "SYSENTER_CS", 0x175: "SYSENTER_ESP",
             0x176: "SYSENTER_EIP", 0x277: "PAT", 0x6E0: "TSC_DEADLINE", 0xC0000081: "STAR",
             0xC0000082: "LSTAR", 0xC0000083: "CSTAR", 0xC0000084: "SFMASK",
             0xC0000102: "KERNEL_GS_BASE",
             # KVM's paravirtual MSRs (Documentation/virt/kvm/x86/msr.rst): each holds the
             # guest-physical address of a structure KVM fills in, and an enable bit
             0x4B564D00: "KVM_WALL_CLOCK", 0x4B564D01: "KVM_SYSTEM_TIME", 0x4B564D02: "KVM_ASYNC_PF_EN",
             0x4B564D03: "KVM_STEAL_TIME", 0x4B564D04: "KVM_PV_EOI_EN", 0x4B564D05: "KVM_POLL_CONTROL",
             0x4B564D06: "KVM_ASYNC_PF_INT", 0x4B564D07: "KVM_ASYNC_PF_ACK"}
PIC = struct.Struct("<16B")         # struct kvm_pic_state, at offset 8 of struct kvm_irqchip
IOAPIC = struct.Struct("<QIII4x")   # struct kvm_ioapic_state: base_address, ioregsel, id, irr
IOAPIC_PINS = 24
EVENTS = struct.Struct("<4BI4B4BII")  # struct kvm_vcpu_events: exception, interrupt, nmi, sipi, flags
# struct kvm_lapic_state: the APIC's registers at their MMIO offsets (Intel SDM Vol. 3A, Table 11-1)
LAPIC_REGISTERS = {0x20: "ID", 0x80: "TPR", 0xF0: "SVR", 0x320: "LVT timer", 0x380: "timer initial count",
                   0x390: "timer current count", 0x3E0: "timer divide"}


# virtio 1.2, 2.1: the device status bits, in the order a driver sets them
VIRTIO_STATUS = {mmio.STATUS_ACKNOWLEDGE: "ACKNOWLEDGE", mmio.STATUS_DRIVER: "DRIVER",
                 mmio.STATUS_FEATURES_OK: "FEATURES_OK", mmio.STATUS_DRIVER_OK: "DRIVER_OK",
                 mmio.STATUS_DEVICE_NEEDS_RESET: "DEVICE_NEEDS_RESET", mmio.STATUS_FAILED: "FAILED"}


def describe(snapshot) -> list[str]:
    """The human-readable description of every part, header first."""
    header = snapshot.header
    guest, host, memory = header["guest"], header["host"], header["memory"]
    lines = [f"{snapshot.directory}: {header['format']} version {header['version']}, taken {header.get('created')}",
             f"  guest: {format_size(guest['memory'])} RAM, {_vcpus(guest.get('vcpus'))}, kernel {guest.get('kernel')}"
             f" {guest.get('cmdline', '')!r}",
             f"  host: {host.get('cpu_vendor')} CPU, KVM {host.get('kvm_backend')}; CPUID features "
             + " ".join(f"{k}={v}" for k, v in host.get("cpuid_features", {}).items()),
             *_virtio_lines(guest.get("virtio") or {}),
             f"  {memory.get('file')}: {format_size(memory['size'])} of guest RAM, "
             f"{memory.get('pages_written')} non-zero pages stored, the rest holes; regions "
             + ", ".join(f"{r['guest_address']:#x}+{format_size(r['size'])}" for r in memory.get("regions", []))]
    for name, entry in header["parts"].items():
        data = snapshot.part(name)
        what = DESCRIBERS.get(name.rpartition("/")[2], _describe_json if name.endswith(".json") else None)
        if name.startswith("virtio/"):
            what = _virtio
        detail = what(data) if what else ""
        lines.append(f"  {name:<24} {entry['size']:>6} B  {entry['source']:<24} {detail}")
    return lines


def _vcpus(count) -> str:
    return f"{count} vCPU{'s' if count != 1 else ''}"


def _virtio_lines(section: dict) -> list[str]:
    """The header's virtio devices: what `pykvm boot` was given, and each disk as it was."""
    devices = [f"disk {d.get('path')}{' (read-only)' if d.get('read_only') else ''}"
               for d in section.get("disks", [])]
    devices += ["console (hvc0)"] * bool(section.get("console")) + ["rng"] * bool(section.get("rng"))
    if not devices:
        return []
    lines = [f"  virtio: {', '.join(devices)}; kicks by {section.get('notify')}"]
    for d in section.get("disks", []):
        lines.append(f"  disk {d.get('path')}: {d.get('size')} bytes, modified {_utc(d.get('mtime_ns'))}: "
                     "must be unchanged to restore (it is not copied)")
    return lines


def _utc(ns) -> str:
    if not isinstance(ns, int):
        return repr(ns)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d} UTC"


def _virtio(data: bytes) -> str:
    """A virtio transport's part: its status, features, and each ready queue's indexes."""
    state = json.loads(data)
    status = state.get("status", 0)
    names = [name for bit, name in VIRTIO_STATUS.items() if status & bit]
    queues = [f"q{i} size {q.get('size')} next avail {q.get('last_avail')} used {q.get('used_idx')}"
              for i, q in enumerate(state.get("queues", [])) if q.get("ready")]
    device = f"; device {json.dumps(state['device'], separators=(',', ':'))}" if state.get("device") else ""
    return (f"status {status:#x} ({'|'.join(names) or 'reset'}), features {state.get('driver_features', 0):#x}; "
            f"{'; '.join(queues) or 'no queue ready'}{device}")


def _cast(ctype: str, data: bytes):
    return ffi.cast(ctype + " *", ffi.from_buffer(data))


def _regs(data: bytes) -> str:
    r = _cast("struct kvm_regs", data)
    return (f"rip={r.rip:#x} rsp={r.rsp:#x} rflags={r.rflags:#x} rax={r.rax:#x} rbx={r.rbx:#x} "
            f"rcx={r.rcx:#x} rdx={r.rdx:#x}")


def _sregs(data: bytes) -> str:
    s = _cast("struct kvm_sregs", data)
    ring = s.cs.selector & 3
    return (f"cs={s.cs.selector:#x} (ring {ring}, {'64-bit' if s.cs.l else 'not 64-bit'}) cr0={s.cr0:#x} "
            f"cr3={s.cr3:#x} cr4={s.cr4:#x} efer={s.efer:#x} apic_base={s.apic_base:#x}")


def _cpuid(data: bytes) -> str:
    from pykvm.vm.snapshot.cpu import entries_from_bytes

    return f"{len(entries_from_bytes(data))} CPUID entries"


def _xsave(data: bytes) -> str:
    fcw, mxcsr, xstate_bv = struct.unpack_from("<H", data, 0)[0], struct.unpack_from("<I", data, 24)[0], \
        struct.unpack_from("<Q", data, 512)[0]
    return f"x87 control {fcw:#x}, MXCSR {mxcsr:#x}, XSTATE_BV {xstate_bv:#x} (components saved)"


def _xcrs(data: bytes) -> str:
    x = _cast("struct kvm_xcrs", data)
    return " ".join(f"XCR{x.xcrs[i].xcr}={x.xcrs[i].value:#x}" for i in range(x.nr_xcrs))


def _fpu(data: bytes) -> str:
    f = _cast("struct kvm_fpu", data)
    return f"x87 control {f.fcw:#x}, MXCSR {f.mxcsr:#x}"


def _lapic(data: bytes) -> str:
    values = {name: struct.unpack_from("<I", data, offset)[0] for offset, name in LAPIC_REGISTERS.items()}
    values["ID"] >>= 24
    return ", ".join(f"{name} {value:#x}" for name, value in values.items())


def _debugregs(data: bytes) -> str:
    d = _cast("struct kvm_debugregs", data)
    return f"dr0-3 {[hex(d.db[i]) for i in range(4)]} dr6={d.dr6:#x} dr7={d.dr7:#x}"


def _events(data: bytes) -> str:
    (ex_injected, ex_nr, _, ex_pending, _, irq_injected, irq_nr, _, shadow,
     nmi_injected, nmi_pending, nmi_masked, _, _, flags) = EVENTS.unpack_from(data)
    parts = []
    if ex_injected or ex_pending:
        parts.append(f"exception {ex_nr} {'injected' if ex_injected else 'pending'}")
    if irq_injected:
        parts.append(f"interrupt vector {irq_nr:#x} being injected")
    if nmi_injected or nmi_pending:
        parts.append("NMI in flight")
    parts.append(f"interrupt shadow {shadow}, NMIs {'masked' if nmi_masked else 'unmasked'}, flags {flags:#x}")
    return "; ".join(parts)


def _pic(data: bytes) -> str:
    (_, irr, imr, isr, _, irq_base, *_rest) = PIC.unpack_from(data, 8)
    return f"8259: vectors from {irq_base:#x}, requests {irr:#04x}, mask {imr:#04x}, in service {isr:#04x}"


def _ioapic(data: bytes) -> str:
    base, _, apic_id, irr = IOAPIC.unpack_from(data, 8)
    table = struct.unpack_from(f"<{IOAPIC_PINS}Q", data, 8 + IOAPIC.size)
    routed = [f"pin {pin}->vector {entry & 0xFF:#x}" for pin, entry in enumerate(table) if not entry & (1 << 16)]
    return f"at {base:#x}, id {apic_id}, requests {irr:#x}; unmasked: {', '.join(routed) or 'none'}"


def _pit(data: bytes) -> str:
    p = _cast("struct kvm_pit_state2", data)
    return "; ".join(f"ch{i} count {p.channels[i].count} mode {p.channels[i].mode} gate {p.channels[i].gate}"
                     for i in range(3))


def _clock(data: bytes) -> str:
    c = _cast("struct kvm_clock_data", data)
    return f"kvmclock {c.clock / 1e9:.3f} s"


def _msrs(data: bytes) -> str:
    msrs = {int(k, 16): v for k, v in json.loads(data).items()}
    named = [f"{MSR_NAMES[i]}={v:#x}" for i, v in msrs.items() if i in MSR_NAMES and v]
    return f"{len(msrs)} MSRs; non-zero named: {' '.join(named)}"


def _mp_state(data: bytes) -> str:
    state = json.loads(data)["mp_state"]
    return MP_STATES.get(state, f"state {state}")


def _describe_json(data: bytes) -> str:
    text = json.dumps(json.loads(data), separators=(",", ":"), sort_keys=True)
    return text if len(text) <= 100 else text[:97] + "..."


DESCRIBERS = {"regs.bin": _regs, "sregs.bin": _sregs, "cpuid.bin": _cpuid, "xsave.bin": _xsave,
              "xcrs.bin": _xcrs, "fpu.bin": _fpu, "lapic.bin": _lapic, "debugregs.bin": _debugregs,
              "events.bin": _events, "pic-master.bin": _pic, "pic-slave.bin": _pic, "ioapic.bin": _ioapic,
              "pit.bin": _pit, "clock.bin": _clock, "msrs.json": _msrs, "mp-state.json": _mp_state}
