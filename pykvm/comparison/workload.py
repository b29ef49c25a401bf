"""The workload both sides run, and how to read what it printed.

The same three steps on each side: print a line, report the kernel it sees,
look around (processes, network interfaces, mounts, hostname, namespaces),
exit.  Each look-around step first prints a section line `@@name`, so the
output splits into sections the properties module reads.

    VM, tiny guest     pykvm boot tiny --cmdline "run=echo ...;echo @@kernel;info;..."
                       (tiny's shell runs the commands on its command line, guests/tiny/shell.c)
    VM, Linux guest    pykvm boot linux; the SCRIPT is typed into its console shell
    VM, the image      pykvm container run --rm --network none --isolation vm --memory M IMAGE ...
                       (--guest image: the container's very command, under its own kernel)
    container          pykvm container run --rm --network none busybox sh -c SCRIPT
                       (an image without /bin/sh runs the command its label PROBE_LABEL
                       names, as hello does: `/hello --probe`; or else just its own command)

A user would type these commands; we run them as child processes, exactly so.
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field, replace

__all__ = ["MARKER", "PROBES", "Workload", "Unobserved", "tiny_vm", "linux_vm", "shell_container",
           "probe_container", "plain_container", "image_vm", "baseline", "split_sections", "display_command",
           "pykvm_argv", "PROBE_LABEL"]

MARKER = "pykvm-compare: hello"      # the workload's first line, the same on every side
SECTION = "@@"                       # a line "@@name" starts section `name` of the output
PROBE_LABEL = "pykvm.compare.probe"  # image label: a command that prints MARKER and sections itself
END = "end"                          # the last section: everything before it was printed
# The container's side of the comparison has no network but lo, as the VMs have none.
CONTAINER_RUN = ("container", "run", "--rm", "--network", "none")

# Look-around steps for a busybox (or any POSIX) userland: section name -> shell command.
PROBES = {
    "kernel": "uname -sr",
    "boot_id": "cat /proc/sys/kernel/random/boot_id",
    "memory": "grep MemTotal /proc/meminfo",
    "processes": "ps",
    "interfaces": "cat /proc/net/dev",
    "mounts": "cat /proc/mounts",
    "hostname": "hostname",
    "namespaces": "for n in /proc/self/ns/*; do echo ${n##*/} $(readlink $n); done",
}
# The tiny kernel's shell has no pipes or files: `info` tells kernel, memory and
# hypervisor; `ps` lists its process table (guests/tiny/shell.c).
TINY_PROBES = {"kernel": "info", "processes": "ps"}

LINUX_READY = "pykvm-guest: userspace up"   # guests/linux/init prints it before starting the shell
# A Linux guest's kernel logs to the same console: `dmesg -n 1` (console loglevel 1, syslog(2))
# keeps its messages out of the workload's lines.  Its boot log names the hypervisor it found
# (arch/x86/kernel/cpu/hypervisor.c: "Hypervisor detected: KVM").
LINUX_QUIET = "dmesg -n 1"
LINUX_PROBES = {**PROBES, "hypervisor": "dmesg | grep -m1 -o 'Hypervisor detected: .*'"}


@dataclass(frozen=True)
class Unobserved:
    """An isolation property this workload cannot look at; `value` is what holds by construction."""

    value: object
    reason: str
    structural: bool     # True: follows from how the thing is built; False: simply not looked at


@dataclass(frozen=True)
class Workload:
    """One side of the comparison: the command to run and how to read its output."""

    side: str                       # "vm", "container" or "baseline"
    name: str                       # the guest's or the image's name
    argv: list[str]
    prompt: str = ""                # a shell prompt that prefixes echoed commands, dropped when parsing
    reply_after: str | None = None  # when a line starts with this, type `reply` on stdin
    reply: bytes = b""
    unobserved: dict[str, Unobserved] = field(default_factory=dict)
    marker: str | None = MARKER     # the workload's first line; None: whatever it prints first

    def first_line(self, line: str) -> bool:
        """The line whose arrival counts as 'first output' of the workload."""
        return line.strip() == self.marker if self.marker else line.strip() != ""


def pykvm_argv(*args: str) -> list[str]:
    """The pykvm command line, run with this same Python (as the installed `pykvm` script does)."""
    return [sys.executable, "-m", "pykvm", *args]


def display_command(argv: list[str]) -> str:
    """argv as a user would type it: `pykvm ...` instead of `python -m pykvm ...`."""
    return shlex.join(["pykvm", *argv[3:]])


def _script(probes: dict[str, str], separator: str) -> str:
    steps = [f"echo {MARKER}"]
    for name, command in probes.items():
        steps += [f"echo {SECTION}{name}", command]
    steps.append(f"echo {SECTION}{END}")
    return separator.join(steps)


TINY_UNOBSERVED = {
    "interfaces": Unobserved([], "the tiny kernel has no network stack, and pykvm emulates no network "
                             "card: only a UART, the debug-exit port, ACPI PM1a and the i8042", True),
    "mounts": Unobserved({"count": 0, "root": None, "root_type": None}, "the tiny kernel has no file system: its user programs are linked into "
                         "the kernel image (guests/tiny/userbins.S)", True),
    "hostname": Unobserved(None, "the tiny kernel has no hostname; nothing of the host's is passed in", True),
    "namespaces": Unobserved(None, "a VM has no namespaces of the host's kernel: it runs its own kernel", True),
}


def tiny_vm(memory: str) -> Workload:
    """The tiny teaching kernel, its shell running the workload from the kernel command line."""
    cmdline = "run=" + _script(TINY_PROBES, ";") + ";poweroff"
    return Workload("vm", "tiny", pykvm_argv("boot", "tiny", "--mem", memory, "--cmdline", cmdline),
                    prompt="tiny$ ", unobserved=TINY_UNOBSERVED)


def linux_vm(memory: str) -> Workload:
    """A Linux guest: the script is typed into the shell its /init starts on the console."""
    line = f"{LINUX_QUIET}; {_script(LINUX_PROBES, '; ')}; poweroff -f\n"
    return Workload("vm", "linux", pykvm_argv("boot", "linux", "--mem", memory), prompt="guest# ",
                    reply_after=LINUX_READY, reply=line.encode(),
                    unobserved={"namespaces": TINY_UNOBSERVED["namespaces"]})


def shell_container(image: str) -> Workload:
    """An image with /bin/sh: the same script as the Linux guest's, through `sh -c`."""
    return Workload("container", image,
                    pykvm_argv(*CONTAINER_RUN, image, "sh", "-c", _script(PROBES, "; ")))


def probe_container(image: str, command: list[str]) -> Workload:
    """An image without a shell whose own program reports what it can (its PROBE_LABEL)."""
    probe = shlex.join(command)
    why = (f"the {image} image has no shell or tools; its `{probe}` reports only the kernel, "
           "boot_id and hostname (use --image busybox to see more)")
    unobserved = {name: Unobserved(None, why, False) for name in PROBES
                  if name not in ("kernel", "boot_id", "hostname")}
    return Workload("container", image, pykvm_argv(*CONTAINER_RUN, image, *command),
                    unobserved=unobserved)


def plain_container(image: str) -> Workload:
    """An image without a shell (hello): it runs its own command, and cannot look around."""
    why = f"the {image} image has no shell or tools to look with (use --image busybox)"
    unobserved = {name: Unobserved(None, why, False)
                  for name in ("kernel", "boot_id", "memory", "processes", "interfaces", "mounts", "hostname",
                               "namespaces")}
    return Workload("container", image, pykvm_argv(*CONTAINER_RUN, image),
                    unobserved=unobserved, marker=None)


def image_vm(box: Workload, memory: str) -> Workload:
    """The container side's workload `box`, run with `--isolation vm --memory MEMORY` instead: the
    same image and command, under a Linux kernel of its own.  A shell image also looks for the
    hypervisor its kernel found (its boot log, as linux_vm's); the kernel's log stays on the serial
    port, apart from the command's output."""
    run = len(pykvm_argv(*CONTAINER_RUN))
    assert box.argv[:run] == pykvm_argv(*CONTAINER_RUN), box.argv
    rest = box.argv[run:]
    if rest[1:3] == ["sh", "-c"]:
        rest = [rest[0], "sh", "-c", _script(LINUX_PROBES, "; ")]
    return replace(box, side="vm", argv=pykvm_argv(*CONTAINER_RUN, "--isolation", "vm", "--memory", memory, *rest),
                   unobserved={**box.unobserved, "namespaces": TINY_UNOBSERVED["namespaces"]})


def baseline() -> Workload:
    """The Python front-end alone (`pykvm --version`): what both sides pay before doing anything."""
    return Workload("baseline", "pykvm", pykvm_argv("--version"), marker=None)


def split_sections(lines: list[str], prompt: str = "") -> dict[str, list[str]]:
    """Output lines -> {section: its lines}; echoed commands (lines starting with the prompt) dropped."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in lines:
        text = line.strip()
        if prompt and line.startswith(prompt):
            continue
        if text.startswith(SECTION) and text[len(SECTION):].isidentifier():
            current = text[len(SECTION):]
            sections[current] = []
        elif current is not None and text:
            sections[current].append(line)
    return sections
