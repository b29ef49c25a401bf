"""`pykvm boot --net`: the tiny kernel on virtio-net, pinged and pinging, beside containers.

Each test makes its own network namespace and runs the VMM in it (`nsenter --net=`): the
tap, the bridge and every packet stay there.  The guest is guests/tiny, whose ARP and
ICMP echo answers (net.c) run in guest kernel mode: on a PVM host that is emulated,
slow but correct.  Pings are bounded in count (-c) and in time (-w).
"""
from __future__ import annotations

import json
import os
import re
import signal
import sys

import pytest
from clitools import wait_for
from linux_guest import SerialSession
from tinyvm import MICROVM_POWEROFF, TINY_ELF, build_tiny, microvm_command, vmm_problem

pytestmark = [pytest.mark.root, pytest.mark.kvm]

BUSYBOX = "/bin/busybox"
HOST, GUEST = "10.99.0.1", "10.99.0.2"      # the tap's address in the namespace, the guest's
TAP = "tap0"
GATEWAY = "10.213.0.1"                      # the bridge network's default gateway
BOOT_SILENCE = 120                          # seconds of console silence before a wait fails
PING_DEADLINE = "20"                        # busybox ping -w: seconds until ping gives up


def leases(state_root) -> dict:
    path = state_root.parent / "network" / "leases.json"
    return json.loads(path.read_text())["leases"] if path.exists() else {}


def vm_lease(state_root) -> tuple[str, dict]:
    return next((a, r) for a, r in leases(state_root).items() if r.get("kind") == "vm")


def boot_tiny(netns: str, env: dict, *args: str, cmdline: str) -> SerialSession:
    """`pykvm boot` of the tiny kernel inside the namespace, console on a pty."""
    build_tiny()
    return SerialSession(["nsenter", f"--net=/run/netns/{netns}", "--", sys.executable, "-m",
                          "pykvm", "boot", "--kernel", str(TINY_ELF), *args, "--cmdline", cmdline],
                         env=env)


def boot_microvm(netns: str, cmdline: str) -> SerialSession:
    """The same ELF under QEMU's microvm, its virtio-net-device on the same tap."""
    problem = vmm_problem("qemu")
    if problem:
        pytest.skip(problem)
    build_tiny()
    qemu = microvm_command(TINY_ELF, cmdline, disks=[])
    qemu += ["-netdev", f"tap,id=net0,ifname={TAP},script=no,downscript=no",
             "-device", "virtio-net-device,netdev=net0"]
    return SerialSession(["nsenter", f"--net=/run/netns/{netns}", "--", *qemu])


def ping_from(run, address: str, *options: str) -> str:
    """busybox ping's summary line ("N packets transmitted, M packets received, ...")."""
    r = run(BUSYBOX, "ping", "-c", "3", "-w", PING_DEADLINE, *options, address)
    return next((line for line in r.stdout.splitlines() if "transmitted" in line), r.stdout + r.stderr)


def answered(session: SerialSession) -> tuple[int, int]:
    """(ARP requests, echo requests) the guest says it answered, from its `net` command."""
    start = len(session.output)
    session.send("net")
    session.expect("bad checksums", BOOT_SILENCE, start)
    found = re.findall(rb"answered (\d+) ARP requests, (\d+) echo requests", session.output[start:])
    return tuple(map(int, found[-1]))


@pytest.fixture
def tap(in_ns):
    """A persistent tap in the namespace, with the host's address (as for QEMU's script=no)."""
    in_ns("ip", "tuntap", "add", TAP, "mode", "tap").check_returncode()
    in_ns("ip", "addr", "add", f"{HOST}/24", "dev", TAP).check_returncode()
    in_ns("ip", "link", "set", TAP, "up").check_returncode()
    return TAP


@pytest.mark.parametrize("vmm", ["pykvm", "pykvm-notify-exit", "qemu-microvm"])
def test_host_and_tiny_ping_each_other_over_a_tap(vmm, netns, in_ns, kvm, tap):
    """pykvm with kicks by ioeventfd and by MMIO exit (the receive side's interrupt then comes
    from the tap's reader thread through KVM_IRQ_LINE), and QEMU with the same ELF."""
    cmdline = f"ip={GUEST}::{HOST}:255.255.255.0::eth0:off run=ping {HOST} 2"
    notify = ["--virtio-notify", "exit"] if vmm == "pykvm-notify-exit" else []
    session = (boot_tiny(netns, kvm.env, "--net", f"tap={tap}", *notify, cmdline=cmdline)
               if vmm.startswith("pykvm") else boot_microvm(netns, cmdline))
    try:
        session.expect("2 packets transmitted, 2 received", BOOT_SILENCE)       # guest -> host
        # The host learned the guest's MAC from the guest's ARP request; forget it, so that
        # the host's ping has to ask, and the guest has to answer ARP.
        in_ns("ip", "neigh", "flush", "dev", tap).check_returncode()
        assert ping_from(in_ns, GUEST).startswith("3 packets transmitted, 3 packets received")
        neighbour = in_ns("ip", "neigh", "show", GUEST, "dev", tap).stdout
        assert "lladdr 52:54:00:12:34:56" in neighbour, neighbour
        # 1400 data bytes: a 1442-byte frame, more than one of tiny's 1 KiB receive buffers
        # (mergeable receive buffers: the device splits it, the driver joins it)
        big = ping_from(in_ns, GUEST, "-s", "1400")
        assert big.startswith("3 packets transmitted, 3 packets received"), big
        arp, echo = answered(session)
        assert echo == 6 and arp >= 1, (arp, echo)
        session.send("poweroff")
        assert session.wait(BOOT_SILENCE) == (0 if vmm.startswith("pykvm") else MICROVM_POWEROFF)
    finally:
        session.close()
    assert in_ns("ip", "link", "show", tap).returncode == 0, "a tap made beforehand stays"


def test_a_vm_with_a_network_card_is_not_snapshotted_and_runs_on(netns, in_ns, kvm, tap, tmp_path):
    """Its tap and the frames in flight are the host's: the snapshot is refused in one line,
    nothing is written, and the guest still answers."""
    cmdline = f"ip={GUEST}::{HOST}:255.255.255.0::eth0:off"
    session = boot_tiny(netns, kvm.env, "--net", f"tap={tap}", "--snapshot-dir", str(tmp_path / "snap"),
                        cmdline=cmdline)
    try:
        session.expect("tiny$ ", BOOT_SILENCE)
        session.proc.send_signal(signal.SIGUSR2)
        session.expect("pykvm: error: snapshot not written: a VM with a network card", BOOT_SILENCE)
        assert not (tmp_path / "snap" / "snapshot.json").exists()
        assert ping_from(in_ns, GUEST).startswith("3 packets transmitted, 3 packets received")
        session.send("poweroff")
        assert session.wait(BOOT_SILENCE) == 0
    finally:
        session.close()


def test_a_container_and_a_vm_on_the_bridge_ping_each_other(kvm, in_ns, netns, fresh_rootfs,
                                                             state_root):
    r = kvm("container", "run", "-d", "--network", "bridge", "--cap-add", "NET_RAW", "--name", "box",
            "--rootfs", fresh_rootfs, "sleep", "600")
    assert r.returncode == 0, r.stderr
    box = next(a for a, r in leases(state_root).items() if r["name"] == "box")
    session = boot_tiny(netns, kvm.env, "--net", "bridge", cmdline=f"run=ping {box} 3")
    try:
        session.expect("3 packets transmitted, 3 received", BOOT_SILENCE)       # VM -> container
        address, record = vm_lease(state_root)
        mac = "52:54:00:" + ":".join(f"{int(b):02x}" for b in address.split(".")[1:])
        start = len(session.output)
        session.send("net")
        session.expect(f"eth0: mac {mac} ip {address}/16 gateway {GATEWAY}", BOOT_SILENCE, start)
        ports = in_ns("ip", "-o", "link", "show", "master", "pykvm0").stdout
        assert f" {record['tap']}:" in ports, ports
        # A container run sweeps the network first: the running VM keeps its tap and lease.
        r = kvm("container", "run", "--rm", "--network", "bridge", "--rootfs", fresh_rootfs, "true")
        assert r.returncode == 0, r.stderr
        assert vm_lease(state_root)[0] == address
        for target in (address, record["name"]):                           # container -> VM
            r = kvm("container", "exec", "box", BUSYBOX, "ping", "-c", "3", "-w", PING_DEADLINE,
                    target)
            assert "3 packets transmitted, 3 packets received" in r.stdout, r.stdout + r.stderr
        session.send("poweroff")
        assert session.wait(BOOT_SILENCE) == 0
    finally:
        session.close()
    assert all(r.get("kind") != "vm" for r in leases(state_root).values()), "the lease went back"
    assert in_ns("ip", "link", "show", record["tap"]).returncode != 0, "the tap went with the VM"


def test_kill_9_of_the_vmm_leaves_no_tap_and_its_lease_is_pruned(kvm, in_ns, netns, state_root):
    session = boot_tiny(netns, kvm.env, "--net", "bridge", cmdline="")
    try:
        session.expect("virtio-net eth0", BOOT_SILENCE)
        address, record = vm_lease(state_root)
        assert in_ns("ip", "link", "show", record["tap"]).returncode == 0
        os.kill(session.proc.pid, signal.SIGKILL)
        session.proc.wait(30)
    finally:
        session.close()
    # The kernel deleted the tap with its last file descriptor; the lease outlived the VMM ...
    wait_for(lambda: in_ns("ip", "link", "show", record["tap"]).returncode != 0, timeout=10)
    assert address in leases(state_root)
    listing = kvm("container", "network", "ls").stdout
    assert re.search(rf"^{re.escape(address)} .*stale \(prune\)$", listing, re.M), listing
    # ... until a prune (or the next run's sweep) gives it back.
    r = kvm("container", "network", "prune")
    assert f"released {address} of {record['name']} ({record['id']})" in r.stdout, r.stdout + r.stderr
    assert leases(state_root) == {}


def test_a_vm_that_cannot_boot_gives_its_lease_and_tap_back(kvm, in_ns, state_root, tmp_path):
    """The kernel is refused after the network was set up: one error line, nothing left over."""
    r = kvm("boot", "--kernel", tmp_path / "missing-kernel", "--net", "bridge")
    assert r.returncode != 0 and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("pykvm: error: ") and "Traceback" not in r.stderr, r.stderr
    assert in_ns("ip", "link", "show", "pykvm0").returncode == 0, "the network was made first"
    assert leases(state_root) == {}
    ports = in_ns("ip", "-o", "link", "show", "master", "pykvm0").stdout
    assert "pkt" not in ports, ports
