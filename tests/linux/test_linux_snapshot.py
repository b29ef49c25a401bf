"""Snapshot and restore of a Linux guest at its shell prompt (hardware-KVM lane: `make test-hw`).

The tiny kernel's snapshots are tested in tests/kvm/test_snapshot.py; Linux leans on more of
the state a snapshot holds: kvmclock (its MSRs and KVM_GET_CLOCK), the TSC and the LAPIC's
TSC-deadline timer, its paravirtual MSRs (steal time, PV EOI, async page faults), and the
UART's interrupt-driven receive.  The guest is snapshotted by SIGUSR2 while it waits at its
prompt with a process in the background, then a new pykvm process restores it: the shell
answers, the background process is still there, the clock went on (`/proc/uptime`), its
timers fire (`sleep`), and nothing booted again.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess

import pytest

from linux_guest import SerialSession, guest_file, pykvm_argv

pytestmark = [pytest.mark.linux, pytest.mark.slow]

PROMPT = "guest# "
WRITTEN = "snapshot written"
BANNER = "Linux version"
# The quotes keep the terminal's echo of the command line from matching the answer.
UPTIME = re.compile(rb"uptime=(\d+\.\d+) ")
KVM_SYSTEM_TIME = 0x4B564D01   # kvmclock: the guest-physical address of its pvclock structure | enable
REPORT = ("echo \"up\"\"time=$(cut -d' ' -f1 /proc/uptime) sleeper=$(kill -0 $SLEEPER && echo alive) "
          "mark=$(cat /tmp/mark) sum=$((6 * 7)).\"")


@pytest.fixture(scope="module")
def kernel():
    guest_file("initramfs.cpio", "initramfs")
    return str(guest_file("vmlinuz", "kernel")), str(guest_file("initramfs.cpio", "initramfs"))


def report(vm: SerialSession, at: int) -> tuple[float, int]:
    """The guest's uptime and where its report ends, after checking the rest of the report."""
    vm.send(REPORT)
    end = vm.expect("sum=42.", timeout=120, start=at)
    line = vm.output[at:end]
    assert b"sleeper=alive mark=before-the-snapshot" in line, line.decode(errors="replace")
    found = UPTIME.search(line)
    assert found, line.decode(errors="replace")
    return float(found.group(1)), end


def snapshot_at_prompt(argv: list[str], *before: tuple[str, str]) -> float:
    """Boot, type each (command, answer) of `before`, leave a file and a background process,
    report, snapshot by SIGUSR2; the uptime reported just before the snapshot.  The VM is
    killed afterwards: nothing of it runs on beside the restored one."""
    with SerialSession(argv) as vm:
        at = vm.expect(PROMPT, timeout=180)
        for command, answer in before:
            vm.send(command)
            at = vm.expect(answer, timeout=120, start=at)
        vm.send("echo before-the-snapshot > /tmp/mark; sleep 100000 & SLEEPER=$!")
        uptime, at = report(vm, at)
        at = vm.expect(PROMPT, timeout=60, start=at)
        vm.proc.send_signal(signal.SIGUSR2)
        vm.expect(WRITTEN, timeout=120, start=at)
    return uptime


def check_restored(directory, uptime_before: float, *more: tuple[str, str]) -> bytes:
    """Restore, and check the guest goes on where it was: its shell, process, file and clock;
    then type each (command, answer) of `more` and wait for its answer."""
    with SerialSession(pykvm_argv("restore", str(directory))) as vm:
        uptime, at = report(vm, 0)
        assert uptime > uptime_before, f"uptime went back: {uptime} s after {uptime_before} s"
        vm.send("sleep 1; echo \"sle\"\"pt-ok\"")             # a timer that must fire
        at = vm.expect("slept-ok", timeout=120, start=at)
        for command, answer in more:
            vm.send(command)
            at = vm.expect(answer, timeout=120, start=at)
        vm.send("kill $SLEEPER; poweroff -f")
        status = vm.wait(timeout=120)
    assert BANNER.encode() not in vm.output, f"the restored guest booted again:\n{vm.output[-3000:]!r}"
    assert status == 0, vm.output[-2000:].decode(errors="replace")
    return vm.output


def test_linux_at_its_prompt_is_restored_and_answers(kernel, tmp_path):
    bzimage, initramfs = kernel
    directory = tmp_path / "snap"
    uptime = snapshot_at_prompt(pykvm_argv("boot", "--kernel", bzimage, "--initrd", initramfs,
                                           "--mem", "256M", "--snapshot-dir", str(directory)))
    msrs = json.loads((directory / "vcpu0" / "msrs.json").read_text())
    assert msrs[f"{KVM_SYSTEM_TIME:#x}"] & 1, f"kvmclock is off in the snapshot: {msrs}"
    shown = subprocess.run(pykvm_argv("snapshot", "show", str(directory)), capture_output=True, text=True)
    assert re.search(r"^  vcpu0/msrs\.json .* KVM_SYSTEM_TIME=0x[0-9a-f]*[13579bdf]\b", shown.stdout, re.M), \
        shown.stdout + shown.stderr
    check_restored(directory, uptime)
    check_restored(directory, uptime)          # a snapshot restores as often as asked


def test_two_vcpus_virtio_console_and_disk_are_restored(kernel, tmp_path):
    """Two vCPUs, the shell on hvc0, an ext4 disk mounted: after the restore both CPUs run,
    the disk reads what was written before and takes a new file, which the host finds."""
    from test_linux_virtio import debugfs_cat, e2fs_tool

    bzimage, initramfs = kernel
    content = tmp_path / "content"
    content.mkdir()
    (content / "host.txt").write_text("written on the host\n")
    image = tmp_path / "disk.img"
    # No lazy inode-table or journal init: the kernel would write them in the background
    # after the mount, and a disk written after the snapshot cannot be restored.
    subprocess.run([e2fs_tool("mkfs.ext4"), "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                    "-d", str(content), str(image), "16M"], check=True)
    directory = tmp_path / "snap"
    argv = pykvm_argv("boot", "--kernel", bzimage, "--initrd", initramfs, "--mem", "256M", "--cpus", "2",
                      "--console", "virtio", "--disk", str(image), "--rng", "--snapshot-dir", str(directory))
    uptime = snapshot_at_prompt(argv, ("mount -t ext4 -o noatime /dev/vda /mnt && cat /mnt/host.txt && sync "
                                       "&& echo \"moun\"\"ted\"", "mounted"))
    check_restored(directory, uptime,
                   ("echo \"cp\"\"us=$(nproc) $(cat /mnt/host.txt)\"", "cpus=2 written on the host"),
                   ("echo after-the-restore > /mnt/guest.txt && umount /mnt && echo \"un\"\"mounted\"",
                    "unmounted"))
    assert debugfs_cat(image, "/guest.txt") == "after-the-restore\n"
