"""Snapshot and restore of a running tiny kernel (pykvm.vm.snapshot, docs/09-snapshots.md).

The guest runs `run counter &`: a user program printing "count N" every 200 ms
while the timer ticks and the shell waits for input.  A snapshot taken mid-run
and restored must continue that count, that uptime and that shell, with no
reboot in between; bad snapshots are refused with one line, nothing started.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import threading
from pathlib import Path

import pytest

from clitools import one_error_line, pykvm
from livevm import WAIT_S, LiveVm
from tiers import nested_under_tcg
from tinyvm import BANNER, TINY_ELF, build_tiny

pytestmark = pytest.mark.kvm

CMDLINE = "run=run counter &"
CLONES = int(os.environ.get("PYKVM_SNAPSHOT_CLONES", "20"))
COUNT_LINE = r"(?:^|\$ )count {}$"     # a count may follow a prompt on its line
COUNT = re.compile(COUNT_LINE.format(r"(\d+)"), re.M)
UPTIME = r"up \d+\.\d\d s \((\d+) ticks at 100 Hz\)"


def counts(text: str) -> list[int]:
    return [int(n) for n in COUNT.findall(text)]


def boot(snapshot_dir: Path) -> LiveVm:
    build_tiny()
    return LiveVm("boot", "--kernel", str(TINY_ELF), "--cmdline", CMDLINE, "--snapshot-dir", str(snapshot_dir))


def restore(directory: Path, *args: str) -> LiveVm:
    return LiveVm("restore", str(directory), *args)


def uptime_ticks(vm: LiveVm) -> int:
    return int(vm.command("uptime", UPTIME).group(1))


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> dict:
    """One snapshot of the counting guest, taken by SIGUSR2, with what the original showed."""
    directory = tmp_path_factory.mktemp("snap") / "counter"
    with boot(directory) as vm:
        vm.wait_for(COUNT_LINE.format(3))
        ticks = uptime_ticks(vm)
        before = max(counts(vm.text))
        vm.snapshot_by_signal()
        status = vm.quit()
    return {"dir": directory, "ticks": ticks, "count_before": before, "counts": counts(vm.text),
            "status": status}


def test_the_count_uptime_and_shell_continue(snapshot):
    assert snapshot["status"] == 0, snapshot
    with restore(snapshot["dir"]) as vm:
        vm.wait_for(COUNT.pattern)
        first = counts(vm.text)[0]
        # The guest resumes where the snapshot was taken: after the counts printed before it ...
        assert first > snapshot["count_before"] >= 3, (first, snapshot)
        # ... and near where the original VM went on to (it ran on after the snapshot, until
        # quit): at most the one after the original's last, because a line the guest was
        # printing at the snapshot shows only its tail after the restore, and the original
        # may have been quit before that line was whole.
        assert first <= max(snapshot["counts"]) + 2, (first, snapshot["counts"])
        assert BANNER not in vm.text, f"the restored guest booted again:\n{vm.text}"
        ticks = uptime_ticks(vm)
        assert ticks > snapshot["ticks"], f"uptime went back: {ticks} ticks after {snapshot['ticks']}"
        vm.command("echo restored and answering", r"^restored and answering$")
        vm.wait_for(COUNT_LINE.format(first + 3))
        seen = counts(vm.text)
        assert seen == list(range(first, first + len(seen))), f"the count skipped or repeated: {seen}"


def test_snapshot_restore_snapshot_again_restore_again(snapshot, tmp_path):
    """The second snapshot replaces the first in the very directory the VM was restored from."""
    directory = tmp_path / "again"
    shutil.copytree(snapshot["dir"], directory)
    with restore(directory, "--snapshot-dir", str(directory)) as vm:
        vm.wait_for(COUNT.pattern)
        first_run = counts(vm.text)[0]
        vm.wait_for(COUNT_LINE.format(first_run + 2))
        ticks = uptime_ticks(vm)
        before = max(counts(vm.text))
        vm.snapshot_by_key()                         # Ctrl-A s this time
        vm.command("echo the first restore goes on", r"^the first restore goes on$")
        assert vm.quit() == 0
    line = pykvm("snapshot", "show", str(directory))
    assert line.returncode == 0, line.stderr.decode()
    with restore(directory) as vm:
        vm.wait_for(COUNT.pattern)
        first = counts(vm.text)[0]
        assert first > before, (first, before)
        assert uptime_ticks(vm) > ticks
        vm.command("echo second restore", r"^second restore$")
        assert BANNER not in vm.text


@pytest.mark.slow                      # 20 VMs at once: a load test, not a semantics test
def test_many_clones_from_one_snapshot_all_answer(snapshot):
    """CLONES VMs restored at once share the snapshot's memory file; each one answers for itself."""
    clones = [restore(snapshot["dir"]) for _ in range(CLONES)]
    try:
        for i, vm in enumerate(clones):
            vm.wait_for(COUNT.pattern, timeout=120)
            vm.send(f"echo clone {i}\r".encode())
        for i, vm in enumerate(clones):
            vm.wait_for(rf"^clone {i}$", timeout=120)
            assert BANNER not in vm.text
    finally:
        statuses = [vm.quit() for vm in clones]
    assert statuses == [0] * CLONES, statuses


def test_a_clone_copies_only_the_pages_its_guest_writes(snapshot):
    """Guest RAM is the snapshot's file mapped copy-on-write: the page holding the kernel's
    `ticks` is the clone's own copy (the timer writes it), the kernel's code stays the file's."""
    import subprocess

    from hostmem import written_guest_pages

    symbols = subprocess.run(["nm", str(TINY_ELF)], capture_output=True, text=True, check=True).stdout
    ticks = next(int(line.split()[0], 16) for line in symbols.splitlines() if line.endswith(" ticks"))
    text = [int(line.split()[0], 16) for line in symbols.splitlines() if line.split()[1] in "tT"]
    with restore(snapshot["dir"]) as vm:
        vm.wait_for(COUNT.pattern)
        assert uptime_ticks(vm) > snapshot["ticks"]              # the timer has written `ticks`
        written = set(written_guest_pages(vm.proc.pid, str((snapshot["dir"] / "memory.bin").resolve())))
    assert ticks // 4096 in written, f"ticks at {ticks:#x}; copied pages {sorted(map(hex, written))}"
    assert not written & {address // 4096 for address in text}, sorted(map(hex, written))


def test_a_restore_writes_nothing_into_guest_ram(snapshot):
    """A restore gives the state to KVM by ioctls and to pykvm's devices, none of it to guest
    RAM: with the VM built and no vCPU run yet, no page of the memory.bin mapping is a copy."""
    from hostmem import named_mappings, written_guest_pages
    from pykvm.commands.restore import restore_config
    from pykvm.vm.kvm import Kvm
    from pykvm.vm.machine import Machine
    from pykvm.vm.snapshot import Snapshot, check_restore

    saved = Snapshot.open(snapshot["dir"])
    with Kvm() as kvm:
        check_restore(saved, kvm)
    ram = str((snapshot["dir"] / "memory.bin").resolve())
    with Machine(restore_config(saved, output=lambda data: None)):
        assert sum(m.size_kib for m in named_mappings(os.getpid(), ram)) * 1024 == saved.memory_size
        assert written_guest_pages(os.getpid(), ram) == []


def test_show_describes_every_part(snapshot):
    result = pykvm("snapshot", "show", str(snapshot["dir"]))
    text = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    header = json.loads((snapshot["dir"] / "snapshot.json").read_text())
    for name, part in header["parts"].items():
        assert re.search(rf"^  {re.escape(name)} +{part['size']} B  {re.escape(part['source'])}", text, re.M), \
            f"{name} not described:\n{text}"
    assert "KVM_GET_XSAVE" in text or "KVM_GET_FPU" in text
    assert re.search(r"vcpu0/regs\.bin .* rip=0x[0-9a-f]+", text), text


# --- bad input: one line each, nothing started --------------------------------------------

def damaged_copy(snapshot, tmp_path) -> Path:
    directory = tmp_path / "damaged"
    shutil.copytree(snapshot["dir"], directory)
    return directory


def refused(directory: Path, *args: str) -> str:
    result = pykvm("restore", str(directory), *args, timeout=60)
    assert result.stdout == b"", f"the guest ran: {result.stdout[:300]!r}"
    return one_error_line(result)


def rewrite_part(directory: Path, name: str, data: bytes) -> None:
    """Change a part and re-seal its sha256 in the header: a consistent, deliberate edit."""
    (directory / name).write_bytes(data)
    header = json.loads((directory / "snapshot.json").read_text())
    header["parts"][name].update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    (directory / "snapshot.json").write_text(json.dumps(header))


def test_truncated_memory_is_refused(snapshot, tmp_path):
    directory = damaged_copy(snapshot, tmp_path)
    os.truncate(directory / "memory.bin", 64 << 20)
    assert "truncated" in refused(directory)


def test_truncated_part_is_refused(snapshot, tmp_path):
    directory = damaged_copy(snapshot, tmp_path)
    regs = directory / "vcpu0" / "regs.bin"
    regs.write_bytes(regs.read_bytes()[:100])
    line = refused(directory)
    assert "regs.bin" in line and "truncated" in line, line


def test_tampered_part_is_refused(snapshot, tmp_path):
    directory = damaged_copy(snapshot, tmp_path)
    lapic = bytearray((directory / "vcpu0" / "lapic.bin").read_bytes())
    lapic[0x80] ^= 0xF0                               # the TPR
    (directory / "vcpu0" / "lapic.bin").write_bytes(lapic)
    line = refused(directory)
    assert "lapic.bin" in line and "sha256" in line, line


def test_tampered_memory_is_refused(snapshot, tmp_path):
    directory = damaged_copy(snapshot, tmp_path)
    with open(directory / "memory.bin", "r+b") as f:
        f.seek(0x100000)                              # the kernel's first page
        byte = f.read(1)
        f.seek(0x100000)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert "guest memory differs" in refused(directory)


def test_a_version_from_the_future_is_refused(snapshot, tmp_path):
    directory = damaged_copy(snapshot, tmp_path)
    header = json.loads((directory / "snapshot.json").read_text())
    header["version"] = 99
    (directory / "snapshot.json").write_text(json.dumps(header))
    line = refused(directory)
    assert "version 99 is newer" in line, line


def test_a_different_memory_size_is_refused(snapshot, tmp_path):
    line = refused(snapshot["dir"], "--mem", "64M")
    assert "128 MiB" in line and "64 MiB" in line, line


def test_a_host_cpu_lacking_a_feature_is_refused(snapshot, tmp_path):
    """A snapshot from a CPU with one more feature bit than this host offers guests."""
    from pykvm.vm.kvm import Kvm
    from pykvm.vm.snapshot import cpu

    directory = damaged_copy(snapshot, tmp_path)
    data = bytearray((directory / "vcpu0" / "cpuid.bin").read_bytes())
    with Kvm() as kvm:
        offered = cpu.offered_cpuid(kvm)
    leaf7 = next(e for e in offered if e.function == 7 and e.index == 0)
    missing = next(1 << bit for bit in range(32) if not leaf7.ebx & (1 << bit))
    entries = cpu.entries_from_bytes(bytes(data))
    header_size, entry_size = 8, 40                   # struct kvm_cpuid2 / kvm_cpuid_entry2
    slot = next(i for i, e in enumerate(entries) if e.function == 7 and e.index == 0)
    ebx_at = header_size + slot * entry_size + 16     # function, index, flags, eax, then ebx
    value = int.from_bytes(data[ebx_at:ebx_at + 4], "little") | missing
    data[ebx_at:ebx_at + 4] = value.to_bytes(4, "little")
    rewrite_part(directory, "vcpu0/cpuid.bin", bytes(data))
    header = json.loads((directory / "snapshot.json").read_text())
    header["host"].update(cpu.facts(cpu.entries_from_bytes(bytes(data))))
    (directory / "snapshot.json").write_text(json.dumps(header))
    line = refused(directory)
    assert "lacks CPUID 0x7.0.ebx" in line and f"{missing:#x}" in line, line


def test_a_header_that_disagrees_with_its_cpuid_is_refused(snapshot, tmp_path):
    directory = damaged_copy(snapshot, tmp_path)
    header = json.loads((directory / "snapshot.json").read_text())
    header["host"]["cpuid_features"]["0x7.0.ebx"] = "0x00000000"
    (directory / "snapshot.json").write_text(json.dumps(header))
    assert "do not match vcpu0/cpuid.bin" in refused(directory)


def test_not_a_snapshot_is_refused(tmp_path):
    assert "not a snapshot directory" in refused(tmp_path)


def test_snapshot_dir_holding_other_files_is_refused_and_kept(tmp_path):
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    result = pykvm("boot", "--kernel", str(TINY_ELF), "--snapshot-dir", str(tmp_path), timeout=60)
    assert "not a snapshot directory" in one_error_line(result)
    assert result.stdout == b"" and keep.read_text() == "mine"


def test_a_device_table_missing_a_field_is_refused(snapshot, tmp_path):
    """An edit that keeps the sha256 right but leaves out a register: one line, not a traceback."""
    directory = damaged_copy(snapshot, tmp_path)
    state = json.loads((directory / "devices" / "serial.json").read_text())
    del state["lcr"]
    rewrite_part(directory, "devices/serial.json", json.dumps(state).encode())
    line = refused(directory)
    assert "devices/serial.json" in line and "lcr" in line, line


# --- several vCPUs ----------------------------------------------------------------------------

CPU_ROW = re.compile(r"^ +(\d+) +\d+ +(\d+) +\d+ +\d+ +\d+  (\S+) \(pid \d+\)$", re.M)   # `cpus`
PS_COUNTER = re.compile(r"^ +\d+  \w+ +(\d+|-)  counter$", re.M)


def cpu_ticks(vm: LiveVm) -> dict[int, int]:
    """CPU index -> its timer ticks, from the `cpus` table."""
    start = len(vm.text)
    vm.send(b"cpus\r")
    vm.wait_for(r"^user programs ran on two CPUs at once", start)
    return {int(cpu): int(ticks) for cpu, ticks, _ in CPU_ROW.findall(vm.text, start)}


@pytest.fixture(scope="module")
def smp_snapshot(tmp_path_factory) -> dict:
    """The counting guest on two vCPUs, snapshotted while both CPUs' timers tick."""
    build_tiny()
    directory = tmp_path_factory.mktemp("snap") / "smp"
    with LiveVm("boot", "--kernel", str(TINY_ELF), "--cpus", "2", "--cmdline", CMDLINE,
                "--snapshot-dir", str(directory)) as vm:
        vm.wait_for(COUNT_LINE.format(3))
        ps = vm.command("ps", PS_COUNTER.pattern)
        ticks = cpu_ticks(vm)
        before = max(counts(vm.text))
        vm.snapshot_by_signal()
        status = vm.quit()
    return {"dir": directory, "ticks": ticks, "count_before": before, "counter_cpu": ps.group(1),
            "status": status, "stderr": vm.err.decode(errors="replace")}


def test_a_two_vcpu_guest_continues_on_both_cpus(smp_snapshot):
    assert smp_snapshot["status"] == 0, smp_snapshot
    header = json.loads((smp_snapshot["dir"] / "snapshot.json").read_text())
    assert header["guest"]["vcpus"] == 2 and "vcpu1/regs.bin" in header["parts"], header["guest"]
    with restore(smp_snapshot["dir"]) as vm:
        vm.wait_for(COUNT.pattern)
        first = counts(vm.text)[0]
        assert first > smp_snapshot["count_before"], (first, smp_snapshot)
        assert BANNER not in vm.text, f"the restored guest booted again:\n{vm.text}"
        ticks = cpu_ticks(vm)
        # Both CPUs' LAPIC timers tick on from where they were: the AP was restored, not restarted.
        assert set(ticks) == {0, 1}, ticks
        assert all(ticks[cpu] > smp_snapshot["ticks"][cpu] for cpu in (0, 1)), (ticks, smp_snapshot["ticks"])
        start = len(vm.text)
        vm.command("run busy busy", r"^\[\d+ busy\] exit 0$(?s:.*)^\[\d+ busy\] exit 0$")
        rounds = re.findall(r"^busy \d+: round \d on cpu (\d)$", vm.text[start:], re.M)
        assert "1" in rounds, f"no program ran on CPU 1 after the restore:\n{vm.text[start:]}"
        vm.wait_for(COUNT_LINE.format(first + 3))


@pytest.mark.skipif(nested_under_tcg(), reason="under nested TCG, L1's KVM does not give even one "
                    "vCPU a monotonic TSC (vCPU 0's went backwards between two reads from one L1 CPU)")
def test_the_restored_vcpus_share_one_tsc(smp_snapshot):
    """Read between two reads of vCPU 0's TSC, vCPU 1's lies between them: one TSC offset.

    KVM computes a stopped vCPU's TSC from the TSC of the host CPU the reading
    thread is on, and host CPUs' TSCs need not agree (under nested TCG they do
    not: vCPU 0's own TSC was once seen going backwards between two reads).  So
    the three reads are made from one host CPU."""
    from pykvm.vm.arch.x86.msrs import IA32_TSC
    from pykvm.vm.machine import Machine
    from pykvm.commands.restore import restore_config
    from pykvm.vm.snapshot import Snapshot

    config = restore_config(Snapshot.open(smp_snapshot["dir"]), output=lambda data: None)
    allowed = os.sched_getaffinity(0)
    with Machine(config) as machine:
        first, second = machine.vcpus
        os.sched_setaffinity(0, {min(allowed)})          # this thread only (pid 0)
        try:
            before = first.get_msrs([IA32_TSC])[IA32_TSC]
            between = second.get_msrs([IA32_TSC])[IA32_TSC]
            after = first.get_msrs([IA32_TSC])[IA32_TSC]
        finally:
            os.sched_setaffinity(0, allowed)
    assert before <= between <= after, (before, between, after)


def test_a_stop_during_the_pause_releases_every_vcpu(tmp_path, monkeypatch):
    """One vCPU thread is writing the snapshot (held inside it here), the other waits at the
    barrier; a stop then must let the waiting one go, and the VM end, with no snapshot."""
    import pykvm.vm.snapshot
    from pykvm.errors import SnapshotError
    from pykvm.vm.machine import Machine, MachineConfig

    build_tiny()
    writing, finish, writer = threading.Event(), threading.Event(), []

    def held_take(machine, directory):
        writer.append(threading.current_thread().name)
        writing.set()
        finish.wait(WAIT_S)
        raise SnapshotError("held until the VM stopped")

    monkeypatch.setattr(pykvm.vm.snapshot, "take", held_take)
    counting, console = threading.Event(), bytearray()

    def output(data: bytes) -> None:
        console.extend(data)
        if b"count 1" in console:
            counting.set()

    config = MachineConfig(kernel=TINY_ELF, cpus=2, cmdline=CMDLINE, output=output,
                           snapshot_dir=tmp_path / "snap")
    with Machine(config) as machine:
        statuses = []
        runner = threading.Thread(target=lambda: statuses.append(machine.run()))
        runner.start()
        try:
            assert counting.wait(WAIT_S), f"the guest never counted:\n{console.decode(errors='replace')}"
            machine.request_snapshot()
            assert writing.wait(WAIT_S), "no vCPU thread started writing the snapshot"
            other = 1 - int(writer[0].removeprefix("vcpu"))
            machine.stop(0)
            assert machine._finished[other].wait(WAIT_S), f"vCPU {other} still waits at the barrier"
        finally:
            finish.set()
            runner.join(WAIT_S)
    assert not runner.is_alive() and statuses == [0], statuses
    assert not (tmp_path / "snap").exists()


# --- virtio devices ----------------------------------------------------------------------------

SECTOR = 512
MID_USE_TRIES = 20                # snapshots until one lands among dbench's reads
RESTORED_DBENCH_S = 300          # DBENCH_READS reads: seconds here, a few minutes on a loaded host
# Reads enough to be caught mid-way by one of the snapshots: 20000 take about 10 s on this
# machine's KVM; under nested TCG (the hardware lane) each read costs far more VM exits' time.
DBENCH_READS = 2000 if nested_under_tcg() else 20000
DBENCH = re.compile(r"^dbench: (\d+) reads of 4 KiB from vda in \d+ ticks", re.M)


def disk_image(path: Path, sectors: int) -> Path:
    path.write_bytes(bytes([0xA5]) * (sectors * SECTOR))
    return path


def text_at(image: Path, sector: int) -> bytes:
    return image.read_bytes()[sector * SECTOR:(sector + 1) * SECTOR].rstrip(b"\0")


def served(directory: Path) -> int:
    """The requests the snapshot's virtio-blk had taken from its queue (mod 2^16)."""
    return json.loads((directory / "virtio" / "0-virtio-blk.json").read_text())["queues"][0]["last_avail"]


def test_a_virtio_disk_snapshotted_mid_use_goes_on_after_restore(tmp_path):
    """The guest writes a sector, then reads the disk at random; the snapshot lands among
    those reads.  Restored, the reads finish (the queue's indexes came back), the guest reads
    its sector and writes another, and the host finds both in the image."""
    build_tiny()
    image = disk_image(tmp_path / "disk.img", 8192)                 # 4 MiB
    directory = tmp_path / "snap"
    with LiveVm("boot", "--kernel", str(TINY_ELF), "--cmdline", CMDLINE, "--disk", str(image),
                "--rng", "--snapshot-dir", str(directory)) as vm:
        vm.wait_for(COUNT_LINE.format(2))
        vm.command("dwrite 3 before the snapshot", r"^vda: wrote sector 3 .*flushed$")
        vm.snapshot_by_signal()
        served_before = served(directory)
        start = len(vm.text)
        vm.send(f"dbench rand {DBENCH_READS}\r".encode())
        vm.wait_for(rf"dbench rand {DBENCH_READS}$", start)          # its echo (a count may come first)
        for _ in range(MID_USE_TRIES):                               # dbench first fills its buffer
            last = max(counts(vm.text))
            vm.wait_for(COUNT_LINE.format(last + 1))                 # the guest ran on since the last try
            vm.snapshot_by_signal()
            if served(directory) != served_before:
                break
        vm.proc.send_signal(signal.SIGKILL)                          # no more requests to the image
    assert served(directory) != served_before, "no snapshot caught dbench's reads"
    assert text_at(image, 3) == b"before the snapshot"
    shown = pykvm("snapshot", "show", str(directory)).stdout.decode()
    assert re.search(rf"^  virtio: disk {re.escape(str(image))}, rng; kicks by eventfd$", shown, re.M), shown
    assert re.search(r"^  virtio/0-virtio-blk\.json .* status 0xf \(ACKNOWLEDGE\|DRIVER\|FEATURES_OK\|"
                     r"DRIVER_OK\).* q0 size \d+ next avail \d+ used \d+", shown, re.M), shown
    with restore(directory) as vm:
        # The restored guest's console starts at the snapshot: dbench's result there means it
        # was reading when the snapshot was taken, and its reads went on.
        # (or the driver's own words if a request went unanswered for its 10 s)
        done = vm.wait_for(rf"{DBENCH.pattern}|^.*no answer.*$", timeout=RESTORED_DBENCH_S)
        assert done.group(1) == str(DBENCH_READS), done.group(0)
        assert BANNER not in vm.text
        vm.command("dread 3", r"^0000  62 65 66 6f 72 65 20 74 68 65 20 73 6e 61 70 73  \|before the snaps\|$")
        vm.command("dwrite 5 after the restore", r"^vda: wrote sector 5 .*flushed$")
        vm.command("poweroff", r"poweroff")
        assert vm.proc.wait(60) == 0
    assert text_at(image, 5) == b"after the restore" and text_at(image, 3) == b"before the snapshot"


def test_a_disk_changed_since_the_snapshot_is_refused(tmp_path):
    build_tiny()
    image = disk_image(tmp_path / "disk.img", 2048)
    directory = tmp_path / "snap"
    with LiveVm("boot", "--kernel", str(TINY_ELF), "--cmdline", CMDLINE, "--disk", f"{image},ro",
                "--snapshot-dir", str(directory)) as vm:
        vm.wait_for(COUNT_LINE.format(2))
        vm.snapshot_by_signal()
        vm.quit()
    header = json.loads((directory / "snapshot.json").read_text())
    assert header["guest"]["virtio"]["disks"] == [
        {"path": str(image), "read_only": True, "size": 2048 * SECTOR, "mtime_ns": image.stat().st_mtime_ns}]
    with open(image, "r+b") as f:                                   # someone else writes the image
        f.write(b"changed")
    line = refused(directory)
    assert f"disk {image} changed since the snapshot" in line, line
    image.unlink()
    assert "No such file" in refused(directory)
