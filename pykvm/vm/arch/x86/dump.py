"""A register dump for when a VM stops unexpectedly: what a student needs to find out why."""
from __future__ import annotations

__all__ = ["register_dump"]

INSTRUCTION_PEEK = 16  # bytes shown at RIP


def register_dump(vcpu, memory) -> str:
    """General, control and segment registers, and the bytes at RIP when they can be found."""
    try:
        regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
    except Exception as e:  # the vCPU may be unusable after a failed entry
        return f"  (registers unavailable: {e})"
    gp = [("rax", regs.rax), ("rbx", regs.rbx), ("rcx", regs.rcx), ("rdx", regs.rdx),
          ("rsi", regs.rsi), ("rdi", regs.rdi), ("rsp", regs.rsp), ("rbp", regs.rbp),
          ("r8", regs.r8), ("r9", regs.r9), ("r10", regs.r10), ("r11", regs.r11),
          ("r12", regs.r12), ("r13", regs.r13), ("r14", regs.r14), ("r15", regs.r15),
          ("rip", regs.rip), ("rflags", regs.rflags)]
    control = [("cr0", sregs.cr0), ("cr2", sregs.cr2), ("cr3", sregs.cr3), ("cr4", sregs.cr4),
               ("efer", sregs.efer)]
    lines = []
    for row in range(0, len(gp), 4):
        lines.append("  " + "  ".join(f"{n:>6}={v:016x}" for n, v in gp[row:row + 4]))
    lines.append("  " + "  ".join(f"{n:>6}={v:016x}" for n, v in control))
    lines.append("  " + "  ".join(
        f"{name}={seg.selector:04x}" for name, seg in
        (("cs", sregs.cs), ("ds", sregs.ds), ("ss", sregs.ss), ("tr", sregs.tr))) +
        f"  cs.base={sregs.cs.base:#x} cs.l={sregs.cs.l} cs.db={sregs.cs.db} cpl={sregs.cs.dpl}")
    lines.append(f"  code at rip: {_code_at_rip(regs, sregs, memory)}")
    return "\n".join(lines)


def _code_at_rip(regs, sregs, memory) -> str:
    """Bytes at CS.base + RIP, read as a physical address (exact when paging is off or identity)."""
    address = (sregs.cs.base + regs.rip) & 0xFFFFFFFFFFFFFFFF
    paging = bool(sregs.cr0 & (1 << 31))
    if memory is None or not memory.contains(address, INSTRUCTION_PEEK):
        return "(not in guest RAM)"
    note = " (assumes an identity mapping)" if paging else ""
    return memory.read(address, INSTRUCTION_PEEK).hex(" ") + note
