"""The Linux guest on virtio-net (hardware-KVM lane: `make test-hw`).

`pykvm boot --net bridge` in a network namespace of the test's own: pykvm leases the
guest an address on its bridge and writes it on the kernel command line as `ip=`, after
Debian's default line; the recipe's /init loads virtio_net (with net_failover and
failover) and sets the address with busybox ip.  The host (the namespace) pings the
guest, and a line goes over TCP each way with busybox nc.  Every wait is bounded.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from clitools import wait_for
from linux_guest import SerialSession, guest_file

pytestmark = [pytest.mark.linux, pytest.mark.slow, pytest.mark.root]

PROMPT = "guest# "
GATEWAY = "10.213.0.1"                  # the bridge network's default gateway
BUSYBOX = "/bin/busybox"
GUEST_PORT, HOST_PORT = 7000, 7001
CONFIGURED = re.compile(rb"pykvm-guest: eth0 (10\.213\.[0-9.]+)/16 via " + GATEWAY.encode())


@pytest.fixture(scope="module")
def kernel():
    guest_file("initramfs.cpio", "initramfs")
    return str(guest_file("vmlinuz", "kernel")), str(guest_file("initramfs.cpio", "initramfs"))


def vm_leases(state_root) -> list[dict]:
    path = state_root.parent / "network" / "leases.json"
    records = json.loads(path.read_text())["leases"].values() if path.exists() else []
    return [r for r in records if r.get("kind") == "vm"]


def test_host_pings_the_guest_and_tcp_goes_both_ways(kernel, netns, in_ns, tmp_path):
    bzimage, initramfs = kernel
    state_root = tmp_path / "state"
    env = {**os.environ, "PYKVM_STATE_ROOT": str(state_root)}
    argv = ["nsenter", f"--net=/run/netns/{netns}", "--", sys.executable, "-m", "pykvm", "boot",
            "--kernel", bzimage, "--initrd", initramfs, "--mem", "256M", "--net", "bridge"]
    with SerialSession(argv, env=env) as vm:
        at = vm.expect("pykvm-guest: eth0 ", timeout=180)
        at = vm.expect(PROMPT, timeout=60, start=at)
        address = CONFIGURED.search(vm.output).group(1).decode()
        assert [r["tap"] for r in vm_leases(state_root)], "the VM holds a lease"

        r = in_ns(BUSYBOX, "ping", "-c", "3", "-w", "30", address)
        assert "3 packets transmitted, 3 packets received" in r.stdout, r.stdout + r.stderr

        # guest -> host: the host listens, the guest sends one line
        listener = subprocess.Popen(["nsenter", f"--net=/run/netns/{netns}", "--", BUSYBOX, "nc",
                                     "-l", "-p", str(HOST_PORT)], stdout=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: f":{HOST_PORT} " in in_ns(BUSYBOX, "netstat", "-ltn").stdout, timeout=10)
            vm.send(f"echo hello-from-guest | nc -w 10 {GATEWAY} {HOST_PORT}; echo sent-$?")
            at = vm.expect("sent-0", timeout=60, start=at)
            assert listener.communicate(timeout=30)[0] == "hello-from-guest\n"
        finally:
            listener.kill()
            listener.wait()

        # host -> guest: the guest serves one line, the host connects
        vm.send(f"nc -l -p {GUEST_PORT} -e echo hello-from-the-guest &")
        answers = []
        wait_for(lambda: answers.append(in_ns(BUSYBOX, "nc", "-w", "5", address, str(GUEST_PORT),
                                                stdin=subprocess.DEVNULL).stdout) or
                 answers[-1] == "hello-from-the-guest\n", timeout=60)

        vm.send("poweroff -f")
        assert vm.wait(timeout=60) == 0, vm.output[-2000:].decode(errors="replace")
    assert vm_leases(state_root) == [], "the lease went back when pykvm ended"
