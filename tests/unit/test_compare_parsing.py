"""`pykvm compare`'s readers: the workload's output and the host's /proc files, parsed.

The inputs are in the formats tiny's shell (guests/tiny/shell.c), busybox and
proc(5) print; the end-to-end test (tests/kvm/test_compare.py) feeds real ones.
"""
from __future__ import annotations

import pytest

from pykvm.comparison import properties as prop
from pykvm.comparison import workload as wl
from pykvm.comparison.measure import Stats
from pykvm.comparison.plot import _nice_max
from pykvm.comparison.report import check_options
from pykvm.errors import ConfigError

TINY_OUTPUT = """
tiny 1.0: booting
tiny$ echo pykvm-compare: hello
pykvm-compare: hello
tiny$ echo @@kernel
@@kernel
tiny$ info
kernel:     tiny 1.0 (x86-64)
hypervisor: KVMKVMKVM
memory:     63 MiB
tiny$ echo @@processes
@@processes
tiny$ ps
PID  STATE     NAME
  0  running   shell
  1  sleeping  counter
tiny$ echo @@end
@@end
tiny$ poweroff""".replace("\n", "\r\n").replace("\r", "").split("\n")

NET_DEV = """Inter-|   Receive                            |  Transmit
 face |bytes    packets errs drop fifo frame|bytes    packets
    lo:       0       0    0    0    0     0        0       0
  eth0:     100       1    0    0    0     0        0       0""".splitlines()


def test_sections_drop_echoed_commands():
    sections = wl.split_sections(TINY_OUTPUT, "tiny$ ")
    assert set(sections) == {"kernel", "processes", "end"}
    assert sections["processes"] == ["PID  STATE     NAME", "  0  running   shell", "  1  sleeping  counter"]


def test_tiny_kernel_memory_and_processes():
    sections = wl.split_sections(TINY_OUTPUT, "tiny$ ")
    assert prop.kernel_seen(sections["kernel"]) == "tiny 1.0"
    assert prop.memory_seen(sections) == 63 << 20
    assert prop.SEEN["processes"](sections["processes"])[0] == 2


def test_uname_line_is_the_kernel_as_is():
    assert prop.kernel_seen(["Linux 6.1.0-28-cloud-amd64"]) == "Linux 6.1.0-28-cloud-amd64"
    assert prop.kernel_seen([]) is None


def test_net_dev_mounts_and_meminfo():
    assert prop.net_dev_names(NET_DEV) == ["lo", "eth0"]
    mounts = ["/dev/vda / ext4 rw 0 0", "proc /proc proc rw 0 0", "overlay / overlay rw 0 0"]
    assert prop.mount_table(mounts) == {"count": 3, "root": "overlay", "root_type": "overlay"}
    assert prop.meminfo_total(["MemFree: 1 kB", "MemTotal:  2048 kB"]) == 2 << 20


def test_the_first_line_is_the_marker_not_the_echoed_command():
    vm = wl.tiny_vm("64M")
    first = next(line for line in TINY_OUTPUT if vm.first_line(line))
    assert first == wl.MARKER
    assert wl.plain_container("hello").first_line("Hello from pykvm!")


def test_the_linux_guest_runs_the_containers_script_and_more():
    line = wl.linux_vm("256M").reply.decode()
    script = wl.shell_container("busybox").argv[-1]
    container_steps = script.split("; ")
    linux_steps = line.rstrip("\n").split("; ")
    assert linux_steps[0] == wl.LINUX_QUIET and linux_steps[-1] == "poweroff -f"
    # Every step of the container's script, in order, then the Linux-only ones before @@end.
    assert linux_steps[1:len(container_steps)] == container_steps[:-1]
    assert linux_steps[-2] == container_steps[-1] == "echo @@end"


def test_hypervisor_from_tiny_and_from_a_linux_boot_log():
    assert prop.hypervisor_seen({"kernel": ["hypervisor: KVMKVMKVM"]}) == "KVMKVMKVM"
    assert prop.hypervisor_seen({"hypervisor": ["Hypervisor detected: KVM"]}) == "KVM"
    assert prop.hypervisor_seen({}) is None
    assert wl.display_command(wl.tiny_vm("64M").argv).startswith("pykvm boot tiny --mem 64M")


def test_stats():
    s = Stats.of([3.0, 1.0, 2.0, 10.0])
    assert (s.median, s.min, s.max) == (2.5, 1.0, 10.0)


@pytest.mark.parametrize("value, axis", [(0.37, 0.5), (0.9, 1), (17.4, 20), (23.0, 25), (26, 50), (100, 100)])
def test_plot_axis_is_round(value, axis):
    assert _nice_max(value) == pytest.approx(axis)


@pytest.mark.parametrize("runs, guest, plot", [(0, "tiny", None), (1, "qemu", None), (1, "tiny", "a.jpg")])
def test_bad_options(runs, guest, plot):
    with pytest.raises(ConfigError):
        check_options(runs, guest, plot)


@pytest.mark.parametrize("box", [wl.shell_container("busybox"), wl.probe_container("hello", ["/hello", "--probe"])])
def test_image_vm_runs_the_container_s_command_with_vm_isolation(box):
    """--guest image: the VM side is the very `container run` line, plus --isolation vm and its RAM."""
    vm = wl.image_vm(box, "192M")
    words = wl.display_command(vm.argv).split()
    assert words[:8] == ["pykvm", "container", "run", "--rm", "--network", "none", "--isolation", "vm"], words
    assert words[8:10] == ["--memory", "192M"], words
    run = len(wl.pykvm_argv(*wl.CONTAINER_RUN))
    command, vm_command = box.argv[run:], vm.argv[run + 4:]
    assert vm_command[:-1] == command[:-1], "the same image and program (a shell's script may grow)"
    assert vm.side == "vm" and vm.name == box.name and vm.marker == box.marker
    assert vm.unobserved["namespaces"].structural, "a VM's namespaces are its own kernel's, not the host's"
    assert set(box.unobserved) <= set(vm.unobserved)


def test_image_vm_looks_for_the_hypervisor_too():
    script = wl.image_vm(wl.shell_container("busybox"), "128M").argv[-1]
    assert script == wl._script(wl.LINUX_PROBES, "; ") and "@@hypervisor" in script
