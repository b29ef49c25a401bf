"""What a VM is: the state KVM and pykvm's devices hold, read out and written back.

save() reads, with the VM paused (every vCPU out of KVM_RUN):

    VM      vm/pic-master.bin, vm/pic-slave.bin, vm/ioapic.bin   KVM_GET_IRQCHIP (8259 x2, IOAPIC)
            vm/pit.bin                                           KVM_GET_PIT2 (8254 channels)
            vm/clock.bin                                         KVM_GET_CLOCK (kvmclock, ns)
    vCPU N  vcpuN/cpuid.bin        KVM_GET_CPUID2       the CPUID table the guest was given
            vcpuN/sregs.bin        KVM_GET_SREGS        segments, CR0-CR4, EFER, APIC base, GDT/IDT
            vcpuN/regs.bin         KVM_GET_REGS         RAX..R15, RIP, RFLAGS
            vcpuN/xcrs.bin         KVM_GET_XCRS         XCR0: which state components XSAVE holds
            vcpuN/xsave.bin        KVM_GET_XSAVE        x87, SSE, AVX... (KVM_GET_FPU without XSAVE)
            vcpuN/lapic.bin        KVM_GET_LAPIC        the local APIC's register page
            vcpuN/msrs.json        KVM_GET_MSRS         every MSR of KVM_GET_MSR_INDEX_LIST
            vcpuN/debugregs.bin    KVM_GET_DEBUGREGS    DR0-DR3, DR6, DR7
            vcpuN/events.bin       KVM_GET_VCPU_EVENTS  an exception, interrupt or NMI in flight
            vcpuN/mp-state.json    KVM_GET_MP_STATE     running, or halted in HLT
    devices devices/NAME.json      get_state()          each device's registers and buffers
    virtio  virtio/N-NAME.json     VirtioMmio.get_state the transport's registers, each queue's
                                                        addresses and indexes, the device's state

restore() writes it back into a fresh VM, in this order:

    1. the VM's interrupt controllers, timer and clocks: the pins and timers
       every vCPU will see, in place before any vCPU state refers to them.
       The TSC too, one value for every vCPU (vCPU 0's), written back to
       back: a guest's CPUs share one TSC (KVM gives vCPUs whose TSCs are
       written within a second of each other one offset, kvm_synchronize_tsc),
       and the values read at save time differ only by the time between the
       reads.  Before the LAPIC and TSC_DEADLINE, which count in TSC ticks.
    2. CPUID first: KVM checks MSRs and XSAVE images against the CPUID a vCPU
       was given, and refuses what it does not announce.
    3. special registers before registers: the mode (CR0, EFER, CS) first,
       then RIP and RFLAGS, which only mean something in a mode.  SREGS also
       carries the APIC base, which the LAPIC's state is read against.
    4. XCR0, then XSAVE: the state components, then the state.
    5. LAPIC before MSRs: KVM_SET_LAPIC rewrites the APIC's timer, and the
       TSC-deadline MSR (0x6e0) set before it would be lost.
    6. MSRs, debug registers.
    7. vCPU events after registers and LAPIC: KVM_SET_REGS drops a pending
       exception, and KVM_SET_LAPIC recomputes what interrupt is pending;
       the events are what was in flight, so they go last ...
    8. ... but for the MP state: KVM_SET_SREGS may mark a vCPU at the reset
       vector runnable; a halted vCPU must end halted.
    9. the devices, which may raise their interrupt line again.
   10. the virtio transports, whose queues are set up again on guest memory
       (restored already), then kicked once: a request the driver made
       available as the snapshot was taken is served now.
"""
from __future__ import annotations

from pykvm.errors import KvmIoctlError, SnapshotError
from pykvm.vm.arch.x86.msrs import IA32_TSC
from pykvm.vm.kvm.bindings import ffi
from pykvm.vm.kvm.vm import IRQCHIP_IOAPIC, IRQCHIP_PIC_MASTER, IRQCHIP_PIC_SLAVE
from pykvm.vm.snapshot.virtio import part_name as virtio_part

__all__ = ["save", "restore", "read_msrs", "IRQCHIPS", "STRUCTS", "vcpu_parts"]

TSC_KEY = f"{IA32_TSC:#x}"       # msrs.json's key for the TSC
IRQCHIPS = {"vm/pic-master.bin": IRQCHIP_PIC_MASTER, "vm/pic-slave.bin": IRQCHIP_PIC_SLAVE,
            "vm/ioapic.bin": IRQCHIP_IOAPIC}


def vcpu_parts(vcpu) -> list[tuple[str, str, object, object]]:
    """(file, KVM call, read, write) for each binary part of a vCPU, in restore order (2-7).

    XSAVE where KVM has it, else KVM_GET_FPU (x87 and SSE only)."""
    has_xsave = vcpu.vm.kvm.check_extension("KVM_CAP_XSAVE") > 0
    parts = [
        ("cpuid.bin", "KVM_GET_CPUID2", vcpu.get_cpuid, vcpu.set_cpuid_bytes),
        ("sregs.bin", "KVM_GET_SREGS", lambda: _bytes(vcpu.get_sregs()),
         lambda data: vcpu.set_sregs(_cdata("struct kvm_sregs", data))),
        ("regs.bin", "KVM_GET_REGS", lambda: _bytes(vcpu.get_regs()),
         lambda data: vcpu.set_regs(_cdata("struct kvm_regs", data))),
    ]
    if vcpu.vm.kvm.check_extension("KVM_CAP_XCRS") > 0:
        parts.append(("xcrs.bin", "KVM_GET_XCRS", vcpu.get_xcrs, vcpu.set_xcrs))
    parts.append(("xsave.bin", "KVM_GET_XSAVE", vcpu.get_xsave, vcpu.set_xsave) if has_xsave else
                 ("fpu.bin", "KVM_GET_FPU", vcpu.get_fpu_bytes, vcpu.set_fpu_bytes))
    parts.append(("lapic.bin", "KVM_GET_LAPIC", lambda: bytes(vcpu.get_lapic()), vcpu.set_lapic))
    return parts


def _late_vcpu_parts(vcpu) -> list[tuple[str, str, object, object]]:
    """The binary parts that follow the MSRs (6-7)."""
    return [("debugregs.bin", "KVM_GET_DEBUGREGS", vcpu.get_debugregs, vcpu.set_debugregs),
            ("events.bin", "KVM_GET_VCPU_EVENTS", vcpu.get_vcpu_events, vcpu.set_vcpu_events)]


def _bytes(cdata) -> bytes:
    return bytes(ffi.buffer(cdata))


def _cdata(ctype: str, data: bytes):
    value = ffi.new(ctype + " *")
    ffi.buffer(value)[:] = data
    return value


# --- saving -----------------------------------------------------------------

def save(writer, vm, vcpus, devices: dict, virtio) -> None:
    """Every part of a paused VM into `writer` (a SnapshotWriter); `virtio` is paused too."""
    for name, chip in IRQCHIPS.items():
        writer.add(name, vm.get_irqchip(chip), f"KVM_GET_IRQCHIP (chip {chip})")
    writer.add("vm/pit.bin", vm.get_pit2(), "KVM_GET_PIT2")
    writer.add("vm/clock.bin", vm.get_clock(), "KVM_GET_CLOCK")
    for vcpu in vcpus:
        _save_vcpu(writer, vcpu)
    for name, device in devices.items():
        writer.add_json(f"devices/{name}.json", device.get_state(), f"{type(device).__name__}.get_state")
    for slot, (transport, table) in enumerate(zip(virtio.transports, virtio.get_state())):
        writer.add_json(virtio_part(slot, transport), table, "VirtioMmio.get_state")


def _save_vcpu(writer, vcpu) -> None:
    prefix = f"vcpu{vcpu.id}/"
    for name, ioctl, read, _ in vcpu_parts(vcpu):
        writer.add(prefix + name, read(), ioctl)
    msrs = read_msrs(vcpu, vcpu.vm.kvm.msr_index_list())
    writer.add_json(prefix + "msrs.json", {f"{index:#x}": value for index, value in msrs.items()},
                    "KVM_GET_MSRS")
    for name, ioctl, read, _ in _late_vcpu_parts(vcpu):
        writer.add(prefix + name, read(), ioctl)
    writer.add_json(prefix + "mp-state.json", {"mp_state": vcpu.get_mp_state()}, "KVM_GET_MP_STATE")


def read_msrs(vcpu, indices: list[int]) -> dict[int, int]:
    """Every MSR of `indices` this vCPU lets us read.  KVM_GET_MSRS stops at the first MSR it
    cannot read (one the CPUID does not announce): skip that one and ask for the rest."""
    values: dict[int, int] = {}
    while indices:
        got = vcpu.get_msrs(indices)
        values.update(got)
        indices = indices[len(got) + 1:]
    return values


# --- restoring -------------------------------------------------------------

def restore(snapshot, vm, vcpus, devices: dict, virtio) -> None:
    """Write a verified snapshot into a fresh VM, in the order of the module docstring."""
    for name in IRQCHIPS:                                                    # 1
        _apply(name, vm.set_irqchip, snapshot.part(name))
    _apply("vm/pit.bin", vm.set_pit2, snapshot.part("vm/pit.bin"))
    clock = snapshot.part("vm/clock.bin")
    _apply("vm/clock.bin", vm.set_clock, ffi.cast("struct kvm_clock_data *",
                                                  ffi.from_buffer(clock)).clock)
    _restore_tsc(snapshot, vcpus)
    for vcpu in vcpus:
        _restore_vcpu(snapshot, vcpu)                                        # 2-8
    for name, device in devices.items():                                     # 9
        part = f"devices/{name}.json"
        _apply(part, device.set_state, snapshot.json_part(part))
    tables = [snapshot.json_part(virtio_part(slot, t)) for slot, t in enumerate(virtio.transports)]
    _apply("virtio/", virtio.set_state, tables)                              # 10


def _restore_tsc(snapshot, vcpus) -> None:
    """Step 1's TSC: vCPU 0's saved value into every vCPU, one write after the other."""
    tsc = snapshot.json_part("vcpu0/msrs.json").get(TSC_KEY)
    if tsc is None:
        return                                       # a KVM that does not save the TSC
    for vcpu in vcpus:
        _apply(f"vcpu{vcpu.id}/msrs.json ({TSC_KEY})", lambda value: vcpu.set_msrs({IA32_TSC: value}), tsc)


def _restore_vcpu(snapshot, vcpu) -> None:
    prefix = f"vcpu{vcpu.id}/"
    for name, _, _, write in vcpu_parts(vcpu):                               # 2-5
        _apply(prefix + name, write, snapshot.part(prefix + name))
    msrs = snapshot.json_part(prefix + "msrs.json")                          # 6
    _apply(prefix + "msrs.json", lambda table: vcpu.set_msrs({int(i, 16): v for i, v in table.items()
                                                              if i != TSC_KEY}), msrs)
    for name, _, _, write in _late_vcpu_parts(vcpu):                         # 6-7
        _apply(prefix + name, write, snapshot.part(prefix + name))
    mp_state = snapshot.json_part(prefix + "mp-state.json")                  # 8
    _apply(prefix + "mp-state.json", lambda table: vcpu.set_mp_state(table["mp_state"]), mp_state)


def _apply(name: str, write, value) -> None:
    """One step of the recipe; KVM's refusal, or a table without the fields it needs (a part
    edited by hand), becomes a one-line error naming the part."""
    size = _struct_size(name)
    if size is not None and isinstance(value, bytes) and len(value) != size:
        raise SnapshotError(f"{name}: {len(value)} bytes where this KVM's structure has {size}: "
                            "a snapshot from another kernel's KVM")
    try:
        write(value)
    except KvmIoctlError as e:
        raise SnapshotError(f"restoring {name}: {e}") from None
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        raise SnapshotError(f"restoring {name}: not the table it should be ({type(e).__name__}: {e})") from None


STRUCTS = {"regs.bin": "struct kvm_regs", "sregs.bin": "struct kvm_sregs", "xsave.bin": "struct kvm_xsave",
           "xcrs.bin": "struct kvm_xcrs", "fpu.bin": "struct kvm_fpu", "lapic.bin": "struct kvm_lapic_state",
           "debugregs.bin": "struct kvm_debugregs", "events.bin": "struct kvm_vcpu_events",
           "pic-master.bin": "struct kvm_irqchip", "pic-slave.bin": "struct kvm_irqchip",
           "ioapic.bin": "struct kvm_irqchip", "pit.bin": "struct kvm_pit_state2",
           "clock.bin": "struct kvm_clock_data"}


def _struct_size(name: str) -> int | None:
    ctype = STRUCTS.get(name.rpartition("/")[2])
    return ffi.sizeof(ctype) if ctype else None
