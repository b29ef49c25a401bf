"""Booting the Debian kernel with pykvm's Linux boot protocol.

Two tiers:
  * `kvm` + `slow`, here on PVM: stock Linux cannot finish booting on PVM
    (its kernel mode runs in KVM's instruction emulator), so these check the
    first steps: the bzImage decompressor reads our boot_params and prints on
    the UART; the PVH-booted vmlinux prints its "Linux version" banner.
  * `linux`, in the hardware-KVM lane (`make test-hw`): the whole way to a
    shell, `uname -r`, interactive use through a pty, poweroff and panic.
"""
from __future__ import annotations

import pytest

from linux_guest import SerialSession, guest_file, pykvm_argv

MARKER = "pykvm-guest: userspace up"
PROMPT = "guest# "
FAST_CMDLINE = "console=ttyS0 earlyprintk=serial reboot=k,panic_warm panic=-1 pci=off"


@pytest.fixture(scope="module")
def bzimage():
    return str(guest_file("vmlinuz", "kernel"))


@pytest.fixture(scope="module")
def vmlinux():
    """The uncompressed kernel, if it can boot through PVH (Debian's has CONFIG_PVH=y)."""
    from pykvm.vm.boot.elf import parse_elf
    from pykvm.vm.boot.pvh import pvh_entry_point
    from pykvm.errors import LoaderError

    path = guest_file("vmlinux", "kernel")
    try:
        pvh_entry_point(parse_elf(path.read_bytes()))
    except LoaderError as e:
        pytest.skip(f"this distribution's kernel cannot boot through PVH: {e}")
    return str(path)


@pytest.fixture(scope="module")
def initramfs():
    return str(guest_file("initramfs.cpio", "initramfs"))


# --- on this machine (PVM): the first lines -----------------------------------------------
@pytest.mark.kvm
@pytest.mark.slow
def test_bzimage_kernel_reads_our_boot_params(bzimage):
    """64-bit entry, decompressor, then start_kernel: its log repeats what boot_params said.

    On PVM the kernel's own code runs in KVM's instruction emulator: the
    decompression alone takes about a minute and the boot stops later at the
    first cmpxchg16b (SLUB), so this checks the early log only.
    """
    release = guest_file("release", "kernel").read_text().strip()
    with SerialSession(pykvm_argv("boot", "--kernel", bzimage, "--mem", "256M",
                                  "--cmdline", FAST_CMDLINE)) as vm:
        end = vm.expect("Linux version " + release, timeout=400)
        vm.expect("Command line: " + FAST_CMDLINE, timeout=30, start=end)
        # the e820 table we packed into the zero page, as the kernel prints it
        vm.expect("BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable", timeout=30, start=end)
        vm.expect("BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable", timeout=30, start=end)
        # the ACPI tables, found through boot_params.acpi_rsdp_addr
        vm.expect("ACPI: RSDP 0x00000000000E0000", timeout=60, start=end)
        vm.expect("ACPI: FACP 0x00000000000E00C0", timeout=30, start=end)


@pytest.mark.kvm
@pytest.mark.slow
def test_pvh_vmlinux_prints_linux_banner(vmlinux):
    """The same kernel uncompressed (extract-vmlinux.py), through its PVH note: no decompressor."""
    release = guest_file("release", "kernel").read_text().strip()
    with SerialSession(pykvm_argv("boot", "--kernel", vmlinux, "--mem", "256M",
                                  "--cmdline", FAST_CMDLINE)) as vm:
        end = vm.expect("Linux version " + release, timeout=300)
        # the ACPI tables pykvm.vm.boot.firmware wrote, found through start_info.rsdp_paddr
        vm.expect("ACPI: RSDP 0x00000000000E0000", timeout=120, start=end)


# --- in the hardware-KVM lane: all the way --------------------------------------------------
@pytest.mark.linux
@pytest.mark.slow
def test_boot_to_shell_uname_and_poweroff(bzimage, initramfs):
    """The shell that answers is the guest's: its kernel and command line are the ones we booted.

    (In the L1 lane the host runs the same Debian kernel, so `uname -r` alone
    cannot tell guest from host; the command line can.)
    """
    from pykvm.vm.boot.bzimage import DEFAULT_CMDLINE

    release = guest_file("release", "kernel").read_text().strip()
    host_cmdline = open("/proc/cmdline").read().strip()
    assert host_cmdline != DEFAULT_CMDLINE
    with SerialSession(pykvm_argv("boot", "--kernel", bzimage, "--initrd", initramfs,
                                  "--mem", "256M")) as vm:
        vm.expect(MARKER, timeout=120)
        at = vm.expect(PROMPT, timeout=30)
        vm.send("echo release=$(uname -r); echo cmdline=$(cat /proc/cmdline)")
        at = vm.expect(f"release={release}", timeout=30, start=at)
        vm.expect(f"cmdline={DEFAULT_CMDLINE}", timeout=30, start=at)
        vm.send("poweroff -f")
        assert vm.wait(timeout=60) == 0, vm.output[-2000:].decode(errors="replace")


@pytest.mark.linux
@pytest.mark.slow
def test_pvh_vmlinux_boots_to_shell_and_powers_off(vmlinux, initramfs):
    """PVH to userspace: the initrd comes as a start_info module, and `poweroff`
    reaches pykvm's ACPI PM1a port through the tables that start_info points to."""
    with SerialSession(pykvm_argv("boot", "--kernel", vmlinux, "--initrd", initramfs,
                                  "--mem", "256M", "--cmdline", FAST_CMDLINE)) as vm:
        at = vm.expect(MARKER, timeout=120)
        at = vm.expect(PROMPT, timeout=30, start=at)
        vm.send("echo sum=$((40 + 2))")
        vm.expect("sum=42", timeout=30, start=at)
        vm.send("poweroff -f")
        assert vm.wait(timeout=60) == 0, vm.output[-2000:].decode(errors="replace")
    assert b"ACPI: RSDP 0x00000000000E0000" in vm.output


@pytest.mark.linux
@pytest.mark.slow
def test_pykvm_boot_linux_interactive_session():
    """`pykvm boot linux`: the recipe's guest, typed at through a pty like a user would."""
    guest_file("vmlinuz", "kernel")
    guest_file("initramfs.cpio", "initramfs")
    with SerialSession(pykvm_argv("boot", "linux")) as vm:
        at = vm.expect(PROMPT, timeout=120)
        vm.send("echo $((6 * 7)) > /tmp/x; cat /tmp/x; ls /proc/self/fd")
        at = vm.expect("42", timeout=30, start=at)
        vm.send("cat /proc/cmdline")
        vm.expect("console=ttyS0", timeout=30, start=at)
        vm.send("reboot -f")
        assert vm.wait(timeout=60) == 0


@pytest.mark.linux
@pytest.mark.slow
def test_kernel_panic_ends_pykvm_non_zero(bzimage, initramfs):
    with SerialSession(pykvm_argv("boot", "--kernel", bzimage, "--initrd", initramfs, "--mem", "256M",
                                  "--cmdline", "console=ttyS0 reboot=k,panic_warm panic=-1 pci=off "
                                  "rdinit=/does-not-exist init=/does-not-exist")) as vm:
        vm.expect("Kernel panic", timeout=120)
        status = vm.wait(timeout=60)
        assert status != 0, vm.output[-2000:].decode(errors="replace")
        assert b"panic" in vm.output


# Two shell loops in the background, then each CPU's user time over 3 s (/proc/stat, USER_HZ
# ticks).  The quotes in "cpu""-ticks" keep the terminal's echo of the command from matching.
BUSY_ON_BOTH = ("spin() { while :; do :; done; }; spin & p=$!; spin & q=$!; sleep 1; "
                "u() { set -- $(grep \"^cpu$1 \" /proc/stat); echo $2; }; "
                "a=$(u 0); b=$(u 1); sleep 3; "
                "echo \"cpu\"\"-ticks:\" $(( $(u 0) - a )) $(( $(u 1) - b )) .; kill $p $q")


@pytest.mark.linux
@pytest.mark.slow
def test_linux_finds_two_vcpus_and_computes_on_both(bzimage, initramfs):
    """`--cpus 2`: Linux counts 2 CPUs (from the MADT) and two busy loops run at once, one on each."""
    import os
    import re

    if (os.cpu_count() or 1) < 2:
        pytest.skip("this host has one CPU: KVM_CAP_NR_VCPUS recommends a single vCPU")
    with SerialSession(pykvm_argv("boot", "--cpus", "2", "--kernel", bzimage, "--initrd", initramfs,
                                  "--mem", "256M")) as vm:
        at = vm.expect(MARKER, timeout=180)
        at = vm.expect(PROMPT, timeout=30, start=at)
        vm.send("echo cpus=$(nproc)")
        at = vm.expect("cpus=2", timeout=30, start=at)
        vm.send(BUSY_ON_BOTH)
        at = vm.expect("cpu-ticks: ", timeout=120, start=at)
        vm.expect(" .", timeout=30, start=at)
        ticks = re.search(rb"cpu-ticks: (\d+) (\d+) \.", vm.output[at - len("cpu-ticks: "):])
        assert ticks, vm.output[-1000:].decode(errors="replace")
        cpu0, cpu1 = map(int, ticks.groups())
        # Both loops ran at once, one per CPU: each CPU spent a good share of the 3 s in user
        # mode (with one CPU the second would show ~0).  Not all of it: in the lane both
        # vCPUs are threads of a TCG guest on a host that may be busy (93 of 300 ticks seen).
        assert cpu0 >= 50 and cpu1 >= 50, (cpu0, cpu1)       # >= 0.5 s of the 3 s on each CPU
        vm.send("poweroff -f")
        assert vm.wait(timeout=60) == 0, vm.output[-2000:].decode(errors="replace")
