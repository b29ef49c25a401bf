"""Several vCPUs: a thread each, APs started by INIT-SIPI-SIPI, and every way a VM stops.

The guests are PVH ELFs whose bootstrap processor copies a real-mode
trampoline to 0x10000 and sends INIT, then two start-up IPIs (vector 0x10)
to all other CPUs through its local APIC's ICR, as a PC's OS does
(Intel SDM Vol. 3A 8.4.4.1 "Typical BSP Initialization Sequence").  Each
application processor then runs {ap} in 16-bit real mode; the BSP runs {bsp}.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from clitools import on_a_terminal, one_error_line, pykvm, wait_for
from guestasm import pvh_elf
from pykvm.errors import GuestError
from pykvm.vm.kvm import Kvm
from pykvm.vm.machine import KICK_SIGNAL, MAX_CPUS, Machine, MachineConfig

pytestmark = pytest.mark.kvm

START_APS = """
    mov $trampoline, %esi
    mov $0x10000, %edi
    mov $(trampoline_end - trampoline), %ecx
    rep movsb                         # the trampoline, to the page SIPI vector 0x10 names
    movl $0x000C4500, 0xFEE00300      # ICR: INIT, level assert, to all but self
    mov $10000, %ecx
1:  loop 1b
    movl $0x000C4610, 0xFEE00300      # ICR: start-up IPI, vector 0x10: CS:IP = 1000:0000
    mov $10000, %ecx
2:  loop 2b
    movl $0x000C4610, 0xFEE00300      # the second SIPI, as the SDM's sequence has it
{bsp}
.code16
trampoline:
{ap}
trampoline_end:
.code32
"""
SPIN = "9: jmp 9b"
POWER_OFF = """
    mov $0x604, %dx                   # ACPI PM1a control: SLP_EN, S5
    mov $0x2000, %ax
    out %ax, %dx
"""
# The AP enters protected mode on the GDT pykvm gave the BSP (sgdt'ed to 0x10F00 by the BSP),
# loads an IDT of limit 0 and faults: #UD, #GP, #DF, triple fault.
TRIPLE_FAULT = """
    lgdtl %cs:0xF00
    mov %cr0, %eax
    or $1, %eax                       # CR0.PE
    mov %eax, %cr0
    ljmpl $0x10, $ap32                # pykvm's BOOT_CS: flat 32-bit code
.code32
ap32:
    mov $0x18, %ax                    # BOOT_DS
    mov %ax, %ds
    lidt idt
    ud2
idt: .word 0
     .long 0
.code16
"""
SAVE_GDT = "    sgdt 0x10F00\n"


def put(text: str) -> str:
    """Real- or protected-mode code writing `text` to COM1 (polling not needed: pykvm's THR never fills)."""
    lines = ["mov $0x3f8, %dx"]
    for ch in text:
        lines += [f"mov ${ord(ch)}, %al", "out %al, %dx"]
    return "\n".join(lines) + "\n"


# The AP prints its CPUID view: leaf 1 EBX[31:24] (its APIC id) and EBX[23:16] (CPUs in the package).
PRINT_CPUID = """
    mov $1, %eax
    cpuid
    mov $0x3f8, %dx
    mov %ebx, %eax
    shr $24, %eax
    add $'0', %al
    out %al, %dx                      # APIC id
    mov %ebx, %eax
    shr $16, %eax
    add $'0', %al
    out %al, %dx                      # logical CPU count
    mov $'\\n', %al
    out %al, %dx
"""


def smp_elf(tmp_path, bsp: str, ap: str, name: str = "smp.elf", save_gdt: bool = False):
    """A PVH ELF starting the APs; with `save_gdt` the BSP first stores its GDTR at 0x10F00."""
    source = START_APS.format(bsp=textwrap.dedent(bsp), ap=textwrap.dedent(ap))
    return pvh_elf((SAVE_GDT if save_gdt else "") + source, tmp_path / name)


def run_machine(kernel, cpus: int = 2, during=None):
    """Run `kernel` on `cpus` vCPUs; `during(machine, output)` runs on another thread. (status, output)."""
    output = bytearray()
    with Machine(MachineConfig(kernel=kernel, cpus=cpus, output=output.extend)) as machine:
        if during is not None:
            threading.Thread(target=during, args=(machine, output), daemon=True).start()
        status = machine.run()
    return status, bytes(output)


def test_an_ap_starts_in_real_mode_and_powers_the_vm_off(tmp_path):
    """INIT-SIPI-SIPI reaches the AP waiting for SIPI; its poweroff ends the BSP's spin too."""
    status, output = run_machine(smp_elf(tmp_path, SPIN, put("AP\n") + POWER_OFF + SPIN))
    assert (status, output) == (0, b"AP\n")


def test_each_cpu_sees_its_apic_id_and_the_cpu_count(tmp_path):
    status, output = run_machine(smp_elf(tmp_path, SPIN, PRINT_CPUID + POWER_OFF), cpus=2)
    assert (status, output) == (0, b"12\n")            # the AP: APIC id 1 of 2 CPUs
    status, output = run_machine(pvh_elf(PRINT_CPUID + POWER_OFF, tmp_path / "one.elf"), cpus=1)
    assert (status, output) == (0, b"01\n")            # alone: APIC id 0 of 1, whatever the host has


def test_a_triple_fault_on_an_ap_stops_every_vcpu_and_names_it(tmp_path):
    with pytest.raises(GuestError) as info:
        run_machine(smp_elf(tmp_path, SPIN, TRIPLE_FAULT, save_gdt=True))
    message = str(info.value)
    assert "vCPU 1: triple fault" in message, message
    assert "rip=" in message, message


def test_stop_from_another_thread_ends_every_spinning_vcpu(tmp_path):
    """What Ctrl-A x does: machine.stop(0) from the console thread, while both vCPUs spin without exits."""
    def stop_once_the_ap_runs(machine, output):
        wait_for(lambda: b"AP" in output, timeout=60)
        machine.stop(0)

    status, output = run_machine(smp_elf(tmp_path, SPIN, put("AP") + SPIN), during=stop_once_the_ap_runs)
    assert (status, output) == (0, b"AP")


def test_stop_ends_an_ap_still_waiting_for_sipi(tmp_path):
    """An AP nobody started sleeps inside KVM_RUN (wait-for-SIPI): the kick ends it too."""
    def stop_once_the_bsp_runs(machine, output):
        wait_for(lambda: b"BSP" in output, timeout=60)
        machine.stop(0)

    kernel = pvh_elf(put("BSP") + SPIN, tmp_path / "bsp-only.elf")
    status, output = run_machine(kernel, during=stop_once_the_bsp_runs)
    assert (status, output) == (0, b"BSP")


def test_ctrl_a_x_on_a_terminal_ends_both_vcpus(tmp_path):
    kernel = smp_elf(tmp_path, SPIN, put("AP\n") + SPIN)
    with on_a_terminal(kernel, "--cpus", "2") as (proc, master, restored):
        seen = b""
        while b"AP" not in seen:
            ready, _, _ = select.select([master], [], [], 30)
            assert ready, f"the AP printed nothing; saw {seen!r}"
            seen += os.read(master, 100)
        os.write(master, b"\x01x")
        assert proc.wait(timeout=30) == 0
        assert restored()


def test_a_closed_stdout_pipe_ends_both_vcpus(tmp_path):
    """The AP prints `y` lines forever; the BSP spins.  Closing the pipe ends the VM, status 0."""
    kernel = smp_elf(tmp_path, SPIN, "1:\n" + put("y\n") + "\njmp 1b")
    proc = subprocess.Popen([sys.executable, "-m", "pykvm", "boot", "--cpus", "2", "--kernel", str(kernel)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.read(20) == b"y\n" * 10
        proc.stdout.close()
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert b"Traceback" not in proc.stderr.read()


# --- the kick signal's handler is installed once and kept ---------------------------

KICK_DURING_TEARDOWN = f"""
import os, signal, sys, threading
sys.path[:0] = {[str(p) for p in sys.path if p]!r}
from pykvm.vm.machine import Machine, MachineConfig
from pykvm.vm.devices import debug_exit

kicks = 0
done = threading.Event()

def kick_forever():
    global kicks
    while not done.is_set():          # a Ctrl-A x or broken pipe, arriving at any moment
        os.kill(os.getpid(), signal.{KICK_SIGNAL.name})
        kicks += 1

with Machine(MachineConfig(kernel=sys.argv[1], cpus=int(sys.argv[2]), output=lambda b: None)) as m:
    threading.Thread(target=kick_forever, daemon=True).start()
    status = m.run()
after = kicks
while kicks < after + 100:            # the kicks go on after run() returned
    pass
done.set()
print("survived", status)
"""


@pytest.mark.parametrize("cpus", [1, 2])
def test_a_kick_at_teardown_does_not_kill_the_process(tmp_path, cpus):
    """The kick signal keeps its handler after run(): a late kick is harmless, not a kill."""
    kernel = pvh_elf(put("ok") + POWER_OFF, tmp_path / "off.elf")
    script = tmp_path / "kick.py"
    script.write_text(KICK_DURING_TEARDOWN)
    proc = subprocess.run([sys.executable, str(script), str(kernel), str(cpus)],
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr.decode()[-2000:])
    assert proc.stdout.strip() == b"survived 0"


def test_the_kick_handler_stays_installed_after_run(tmp_path):
    kernel = pvh_elf(POWER_OFF, tmp_path / "off.elf")
    for _ in range(2):
        assert run_machine(kernel, cpus=1) == (0, b"")
        assert signal.getsignal(KICK_SIGNAL) not in (signal.SIG_DFL, signal.SIG_IGN, None)


# --- --cpus on the command line ----------------------------------------------------

@pytest.mark.parametrize("value, words", [("0", "choose 1 to"), ("65", "choose 1 to"),
                                          ("999", "choose 1 to"), ("two", "not a valid integer")])
def test_bad_cpus_is_one_line(value, words):
    line = one_error_line(pykvm("boot", "hello", "--cpus", value))
    assert line.startswith("pykvm: error:") and words in line, line


def _kvm_vcpu_limits() -> tuple[int, int]:
    """(KVM_CAP_NR_VCPUS, KVM_CAP_MAX_VCPUS) of this host's KVM: recommended, allowed."""
    with Kvm() as kvm:
        return kvm.check_extension("KVM_CAP_NR_VCPUS"), kvm.check_extension("KVM_CAP_MAX_VCPUS")


def test_more_cpus_than_kvm_recommends_boot_with_one_warning():
    """Above KVM_CAP_NR_VCPUS, as QEMU: the VM runs, and one line says the vCPUs share CPUs."""
    recommended, allowed = _kvm_vcpu_limits()
    cpus = recommended + 1
    if cpus > min(allowed, MAX_CPUS):
        pytest.skip(f"this host's KVM allows no more than the {recommended} vCPUs it recommends")
    result = pykvm("boot", "hello", "--cpus", str(cpus))
    err = result.stderr.decode()
    assert result.returncode == 0 and b"Hello" in result.stdout, (result.returncode, err)
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "KVM_CAP_NR_VCPUS" in warnings[0], err


def test_more_cpus_than_kvm_allows_is_one_line():
    recommended, allowed = _kvm_vcpu_limits()
    if allowed >= MAX_CPUS:
        pytest.skip(f"this host's KVM allows {allowed} vCPUs, more than pykvm's limit of {MAX_CPUS}")
    line = one_error_line(pykvm("boot", "hello", "--cpus", str(allowed + 1)))
    assert "KVM_CAP_MAX_VCPUS" in line, line


def test_trace_summarizes_exits_per_vcpu(tmp_path):
    kernel = smp_elf(tmp_path, SPIN, put("AP\n") + POWER_OFF)
    result = pykvm("boot", "--cpus", "2", "--trace", "--kernel", str(kernel))
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert "pykvm: vcpu1 exit IO_OUT" in err, err[-2000:]
    assert "pykvm: vCPU 0:" in err and "pykvm: vCPU 1:" in err, err[-2000:]
