"""`pykvm container run --isolation vm`: what is refused, and what a missing guest says.

The VM itself boots only where Linux can (tests/linux/test_isolation_vm.py, the L1 lane);
these checks run before any image is read or any VM is built, so they run everywhere.
"""
from __future__ import annotations

import os
import signal

import pytest
from clitools import one_error_line, pykvm

from pykvm.commands.container.isolation import REFUSED, linux_guest, vm_cmdline
from pykvm.errors import ConfigError


@pytest.mark.parametrize("options, refused", [
    (["--network", "host"], "--network host"),
    (["--network", "bridge"], "--network bridge"),
    (["-p", "8080:80"], "--publish"),
    (["--pids-limit", "5"], "--pids-limit"),
    (["--cap-add", "NET_ADMIN"], "--cap-add"),
    (["--security-opt", "seccomp=unconfined"], "--security-opt"),
    (["--read-only"], "--read-only"),
    (["-d", "-i"], "--detach -i/-t"),
    (["-d", "-t"], "--detach -i/-t"),
    (["--name", "box"], "--name"),
    (["--init"], "--init"),
])
def test_options_without_meaning_in_a_vm_are_one_line(options, refused):
    line = one_error_line(pykvm("container", "run", "--isolation", "vm", *options, "no-such-image", "true"))
    assert line == f"pykvm: error: {refused} has no meaning with --isolation vm: {REFUSED[refused]}"


@pytest.mark.parametrize("cpus", ["0.5", "0", "65", "two"])
def test_cpus_in_a_vm_is_a_whole_number_of_vcpus(cpus):
    """A container's --cpus 0.5 is half of one CPU's time; a VM's kernel sees whole processors."""
    line = one_error_line(pykvm("container", "run", "--isolation", "vm", "--cpus", cpus, "no-such-image", "true"))
    assert line == f"pykvm: error: --cpus {cpus}: with --isolation vm it is a whole number of vCPUs, 1 to 64"


def test_it_without_a_terminal_is_one_line():
    """-it gives the command a terminal to type into; with stdin a pipe there is none (Docker's rule)."""
    line = one_error_line(pykvm("container", "run", "--isolation", "vm", "-it", "no-such-image", "sh"))
    assert line == "pykvm: error: -it: the input is not a terminal; use -i alone to pipe it into the command"


def test_network_none_is_accepted():
    """--network none is the one network a VM has; it is accepted (and fails later, on the image)."""
    result = pykvm("container", "run", "--isolation", "vm", "--network", "none", "no-such-image", "true")
    assert "has no meaning" not in result.stderr.decode()


def test_a_missing_guest_names_the_make_target(tmp_path):
    with pytest.raises(ConfigError, match=r"vmlinuz is missing\): run `make linux-guest`"):
        linux_guest(tmp_path)
    (tmp_path / "vmlinuz").write_bytes(b"")
    (tmp_path / "initramfs.cpio").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"has no /bin/container-init .*run `make linux-guest` again"):
        linux_guest(tmp_path)


def test_the_kernel_runs_our_init_quietly():
    words = vm_cmdline().split()
    assert "rdinit=/bin/container-init" in words and "quiet" in words
    assert "console=ttyS0" in words and not any(w.startswith("earlyprintk") for w in words)


def test_pykvm_s_own_signals_are_not_passed_on_to_the_command():
    """SIGUSR1 kicks pykvm's vCPU threads out of KVM_RUN: passed on, it would reach the command."""
    from pykvm.commands.container.isolation import FORWARDED
    from pykvm.vm.machine import KICK_SIGNAL

    assert KICK_SIGNAL not in FORWARDED and signal.SIGTERM in FORWARDED and signal.SIGKILL not in FORWARDED


def test_exec_into_a_detached_vm_is_refused(tmp_path):
    """A detached VM's recorded process is pykvm on the host (this test's own process stands in
    for it): exec must not join its namespaces, which are the host's."""
    from pykvm.container.runtime.state import ContainerState, StateStore, process_start_time

    pid = os.getpid()
    StateStore(tmp_path).create(ContainerState(id="0123456789ab", name="in-a-vm", pid=pid,
                                               pid_start=process_start_time(pid), detached=True,
                                               isolation="vm"))
    line = one_error_line(pykvm("container", "exec", "in-a-vm", "true", env={"PYKVM_STATE_ROOT": str(tmp_path)}))
    assert line.startswith("pykvm: error: container 0123456789ab runs in a VM (--isolation vm)"), line
