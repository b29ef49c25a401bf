"""`pykvm container run --isolation vm`: the same image, run by its own Linux kernel in a VM.

The container path and this one start from the same RunConfig (run.py fills it with
Docker's rules: ENTRYPOINT/CMD and the arguments, Env then -e, WorkingDir or -w, User or
-u resolved in the image's /etc/passwd).  Where a container hands it to the runtime
(namespaces, cgroups, overlayfs on the host's kernel), this module hands it to a VM:

    1. the guest    Debian's kernel and pykvm's initramfs (`make linux-guest`), whose
                    /bin/container-init becomes PID 1 through rdinit= on the command line
    2. root disk    the image's layers as a read-only ext4 disk, cached per image
                    (pykvm.container.image.rootdisk)
    3. run disk     the resolved command as a request for container-init (pykvm.vm.rundisk)
    4. the machine  --cpus vCPUs, both disks, hvc0 -> our stdout, hvc1 -> our stderr, the kernel's
                    serial log kept aside (shown only if no exit status comes back); hvc2 <- our
                    stdin with -i, and the signals we pass on (pykvm.vm.command_channel); with
                    -it our terminal <-> hvc0, the command's terminal
    5. the answer   container-init's exit status, read from the run disk; pykvm exits with it

Steps 3 to 5 are boot_root_disk, which an OCI bundle's run takes too (oci_vm.py: `oci create
|run --isolation vm`, the bundle's directory as the root disk), and -d's background process
is start_background, which `oci create` takes, waiting for `oci start` first.

When whoever reads our stdout goes away (`... | head -1`), the VM is stopped and pykvm
exits with 141, 128 + SIGPIPE, what a shell reports for a writer whose reader left.
With -d (run_detached) all of this runs in a background pykvm process that `ps`, `logs`,
`stop`, `kill` and `rm` treat as a container's process.

What the VM does not have (yet), the options that ask for it are refused in one line
(REFUSED): a VM has its own network stack, process table and kernel.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from pykvm.errors import ConfigError, GuestError, PyKvmError

__all__ = ["run_in_vm", "boot_root_disk", "run_request", "run_detached", "start_background", "check_ram",
           "refuse_container_options", "linux_guest", "vm_cmdline", "parse_vcpus", "stdin_mode", "VmSpec",
           "DEFAULT_MEMORY", "FORWARDED", "REFUSED"]

DEFAULT_MEMORY = "256M"             # guest RAM without --memory: kernel, initramfs, tmpfs and the command
INIT = "/bin/container-init"        # in the initramfs (guests/linux/Makefile)
SERIAL_LOG_BYTES = 64 << 10         # the kernel log kept for an error message, at most
READER_GONE = 128 + signal.SIGPIPE  # our exit status when stdout's reader closed its end
QUIT = 128 + signal.SIGINT          # ... and when Ctrl-A x quit -it's terminal, as a shell's ^C
# Signals to pykvm that the command in the guest gets instead (SIGKILL cannot be caught: it
# ends pykvm, and with it the VM, at once: `stop`'s last resort).  Not SIGUSR1: pykvm's own
# vCPU threads are kicked out of KVM_RUN with it (machine.KICK_SIGNAL).
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR2)
# Linux's command line: the serial console for the kernel's log, quiet (each byte on a UART is
# a VM exit), a panic resets at once (pykvm reports it), and our init instead of the shell /init.
CMDLINE_WORDS = ("console=ttyS0 quiet reboot=k,panic_warm panic=-1 pci=off 8250.nr_uarts=1 "
                 "i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd")

# option -> why it is refused with --isolation vm (the option's value counts when it is not its default)
REFUSED = {
    "--network host": "a VM has its own kernel and network stack; it cannot share the host's",
    "--network bridge": "no network card is given to the VM yet; use --network none",
    "--publish": "no network card is given to the VM yet",
    "--pids-limit": "the VM's kernel has its own process table; limit it with --memory",
    "--cap-add": "the command runs as the guest kernel's root or -u user, capabilities are not set",
    "--cap-drop": "the command runs as the guest kernel's root or -u user, capabilities are not set",
    "--security-opt": "no seccomp profile is loaded in the guest",
    "--read-only": "the image disk is read-only already; the writable layer is a tmpfs in the guest",
    "--rootfs": "a VM boots an image's root disk; give an IMAGE",
    "--name": "a VM in the foreground keeps no state to name; with -d it does",
    "--detach -i/-t": "a detached VM has no terminal or stdin to attach; give -d alone",
    "--init": "container-init is always PID 1 in the VM",
}


def refuse_container_options(given: dict[str, bool]) -> None:
    """ConfigError for the first option in REFUSED that was given (`given`: option -> given?)."""
    for option, reason in REFUSED.items():
        if given.get(option):
            raise ConfigError(f"{option} has no meaning with --isolation vm: {reason}")


def parse_vcpus(text: str | None) -> int:
    """--cpus with --isolation vm: how many vCPUs, a whole number (1 without the option).
    A container's --cpus is a share of the host's CPU time (0.5 is half of one); a VM's kernel
    sees whole processors (the MADT lists each), so a fraction is refused.  The upper bound is
    the machine's (check_cpus: pykvm's and this KVM's limits)."""
    from pykvm.vm.machine import MAX_CPUS

    if text is None:
        return 1
    if not text.isdigit() or not 1 <= int(text) <= MAX_CPUS:
        raise ConfigError(f"--cpus {text}: with --isolation vm it is a whole number of vCPUs, 1 to {MAX_CPUS}")
    return int(text)


def linux_guest(cache: Path | None = None) -> tuple[Path, Path]:
    """Step 1: (kernel, initramfs) of `make linux-guest`, checked; ConfigError says what to run."""
    from pykvm.vm.guests import LINUX_CACHE, hardware_kvm_problem

    cache = cache or LINUX_CACHE
    kernel, initrd = cache / "vmlinuz", cache / "initramfs.cpio"
    for path in (kernel, initrd):
        if not path.exists():
            raise ConfigError(f"--isolation vm needs the Linux guest ({path} is missing): "
                              "run `make linux-guest`")
    if not (cache / "rootfs" / INIT.lstrip("/")).exists():
        raise ConfigError(f"the Linux guest in {cache} has no {INIT} (built before it existed): "
                          "run `make linux-guest` again")
    if problem := hardware_kvm_problem():
        raise ConfigError(f"--isolation vm boots Linux, but {problem}")
    return kernel, initrd


def vm_cmdline() -> str:
    return f"{CMDLINE_WORDS} rdinit={INIT}"


def stdin_mode(interactive: bool, tty: bool) -> str:
    """-i/-t -> the run disk's stdin: "tty" (the command's terminal is hvc0), "pipe" (our stdin
    reaches it through hvc2 and a pipe) or "null".  -it needs a terminal to give (Docker's rule)."""
    if tty and interactive and not os.isatty(0):
        raise ConfigError("-it: the input is not a terminal; use -i alone to pipe it into the command")
    return "tty" if tty else "pipe" if interactive else "null"


def guest_ram(memory: str | None) -> int:
    """--memory with --isolation vm: the guest's RAM in bytes (DEFAULT_MEMORY without it)."""
    from pykvm.sizes import parse_size

    return check_ram(parse_size(memory or DEFAULT_MEMORY, what="--memory", default_unit="M"), f"--memory {memory}")


def check_ram(ram: int, what: str) -> int:
    """`ram` bytes of guest RAM, if this host has that much; else a ConfigError naming `what`."""
    from pykvm.sizes import format_size, host_memory

    if ram > host_memory():
        raise ConfigError(f"{what}: more than this host's {format_size(host_memory())} of RAM")
    return ram


def run_in_vm(image: str, cfg, memory: str | None, guest: tuple[Path, Path], cpus: int = 1) -> int:
    """Run the RunConfig `cfg` made from `image` (its command, env, cwd, user, hostname; -i, -t)
    in a VM with `memory` of RAM and `cpus` vCPUs, booting `guest` (linux_guest()'s kernel and
    initramfs); returns the command's exit status."""
    from pykvm.container.image.rootdisk import root_disk
    from pykvm.container.image.store import ImageStore

    ram = guest_ram(memory)
    store = ImageStore()
    disk = root_disk(store, store.get(image))                                      # 2
    return boot_root_disk(disk, cfg, ram, guest, cpus)


def boot_root_disk(disk: Path, cfg, ram: int, guest: tuple[Path, Path], cpus: int = 1) -> int:
    """Steps 3 to 5, for an image's disk (run_in_vm) and a bundle's (oci_vm.py) alike: boot
    `guest` with `disk` as the read-only root and `cfg`'s process (args, env, cwd, user,
    hostname; -i, -t) as container-init's request; returns the command's exit status."""
    from pykvm.vm.rundisk import read_exit_status, write_run_disk

    request = run_request(cfg)
    stdin = request.stdin
    with tempfile.TemporaryDirectory(prefix="pykvm-vm-") as work:
        run_disk = Path(work) / "run.img"
        write_run_disk(run_disk, request)                                          # 3
        serial_log = bytearray()
        vm = VmSpec(guest, ram, cpus, disk, run_disk, stdin, attach_input=cfg.interactive)
        try:
            stopped = _boot(vm, serial_log)                                        # 4
        except GuestError as e:
            raise GuestError(_with_log(str(e), serial_log)) from None
        if stopped is not None:
            return stopped
        answer = read_exit_status(run_disk)                                        # 5
    if answer is None:
        raise GuestError(_with_log("the VM ended without the command's exit status", serial_log))
    return answer


def run_request(cfg):
    """Step 3's request (pykvm.vm.rundisk.RunRequest) for the RunConfig `cfg`: its command, env,
    cwd, user and groups, hostname (else the id's first 12 digits, as Docker's), stdin mode."""
    from pykvm.vm.rundisk import RunRequest

    return RunRequest(args=cfg.args, env=cfg.env, cwd=cfg.cwd, uid=cfg.uid, gid=cfg.gid,
                      groups=list(cfg.additional_gids), hostname=cfg.hostname or cfg.id[:12],
                      stdin=stdin_mode(cfg.interactive, cfg.tty))


@dataclass(frozen=True)
class VmSpec:
    """Step 4's machine: what it boots, its size, its disks, and where the command's stdin comes from."""

    guest: tuple[Path, Path]        # kernel, initramfs
    ram: int
    cpus: int
    root_disk: Path
    run_disk: Path
    stdin: str                      # the run disk's: "null", "pipe" or "tty"
    attach_input: bool              # -i: our stdin goes in (to hvc2 for "pipe", to hvc0 for "tty")


@contextlib.contextmanager
def _watchdog_reports_off():
    """No "no VM exit for N s" reports while the command runs.  `pykvm boot` prints them because
    a quiet guest may be a stuck one; here a command that computes for seconds makes no VM exit
    at all (its kernel takes the timer interrupts inside KVM), and our stderr is the command's.
    A vCPU halted for good still stops the VM: that is a verdict, not a report."""
    logger = logging.getLogger("pykvm.vm.watchdog")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _with_log(message: str, serial_log: bytearray) -> str:
    """`message`, and the end of the kernel's log when there is one (what went wrong in the guest)."""
    log = serial_log.decode(errors="replace").strip()
    return f"{message}; the guest kernel's log ends:\n{log[-4000:]}" if log else message


def _boot(vm: VmSpec, serial_log: bytearray) -> int | None:
    """Step 4: the machine, run to its end; the kernel's serial output goes to `serial_log`.
    Returns the exit status when pykvm stopped the VM itself: READER_GONE when nobody reads
    our stdout any more, QUIT after Ctrl-A x at -it's terminal; else None."""
    from pykvm.vm.command_channel import CommandChannel
    from pykvm.vm.console import write_all
    from pykvm.vm.devices.virtio.attach import DiskSpec, VirtioConfig
    from pykvm.vm.machine import Machine, MachineConfig

    machine, stopped = None, None

    def stop(status: int) -> None:
        nonlocal stopped
        if stopped is None:
            stopped = status
            machine.stop(status)

    def keep_log(data: bytes) -> None:
        serial_log.extend(data)
        del serial_log[:-SERIAL_LOG_BYTES]

    def to_stdout(data: bytes) -> None:
        if stopped == READER_GONE:
            return
        try:
            write_all(sys.stdout.fileno(), data)
        except BrokenPipeError:
            stop(READER_GONE)

    channel = CommandChannel(0 if vm.stdin == "pipe" else None)
    virtio = VirtioConfig(disks=[DiskSpec(vm.root_disk, read_only=True), DiskSpec(vm.run_disk)], console=True,
                          console_output=to_stdout,
                          error_console=lambda data: write_all(sys.stderr.fileno(), data),
                          input_console=channel.guest_output)
    kernel, initrd = vm.guest
    config = MachineConfig(kernel=kernel, initrd=initrd, memory=vm.ram, cpus=vm.cpus, cmdline=vm_cmdline(),
                           output=keep_log, virtio=virtio)
    sys.stdout.flush()
    with (_watchdog_reports_off(), Machine(config) as machine, channel, _terminal(vm, machine, stop),
          _signals_to(channel, vm)):
        channel.start(machine.virtio.input_console)     # the consoles work once the machine runs
        machine.run()
    return stopped


@contextlib.contextmanager
def _terminal(vm: VmSpec, machine, stop):
    """With -it, our terminal is the command's while the machine runs: raw, as `pykvm boot`'s,
    its keys to hvc0; Ctrl-A x quits."""
    from pykvm.vm.console import Console

    if vm.stdin == "tty" and vm.attach_input:
        with Console(machine.virtio.console, on_quit=lambda: stop(QUIT)):
            yield
    else:
        yield


@contextlib.contextmanager
def _signals_to(channel, vm: VmSpec):
    """FORWARDED signals to pykvm go to the command in the guest, as `docker run` passes them
    on: `container stop` (SIGTERM to a detached VM's pykvm), `kill -s`, a Ctrl-C.  Not with -it
    (the terminal is raw: a Ctrl-C is a key for the guest's terminal), nor off the main thread."""
    if (vm.stdin == "tty" and vm.attach_input) or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signo: signal.signal(signo, lambda signo, frame: channel.send_signal(signo))
                for signo in FORWARDED}
    try:
        yield
    finally:
        for signo, handler in previous.items():
            signal.signal(signo, handler)


def run_detached(image: str, cfg, memory: str | None, guest: tuple[Path, Path], cpus: int = 1) -> str:
    """-d: run_in_vm in a pykvm process of its own, in the background; returns the container id.

    The state directory is a container's (pykvm.container.runtime.state), with the pykvm process
    as its pid, so `ps`, `logs`, `stop`, `kill` and `rm` find it as they find a container:
    its output goes to container.log, its exit status to exit.json, and a signal to it is
    passed on to the command in the guest (_signals_to), SIGKILL alone ends the VM at once."""
    from pykvm.container.runtime.logs import LOG_NAME
    from pykvm.container.runtime.state import ContainerState, StateStore

    guest_ram(memory)                   # bad input: one line here, not in the log
    store = StateStore()
    state = ContainerState(id=cfg.id, name=cfg.name or cfg.id, command=list(cfg.args), created=time.time(),
                           auto_remove=cfg.remove, detached=True, isolation="vm")
    store.create(state)
    log = os.open(os.path.join(store.dir(state.id), LOG_NAME),
                  os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    start_background(store, state, lambda: run_in_vm(image, cfg, memory, guest, cpus), output=log)
    return state.id


def start_background(store, state, work, output: int | None = None, exec_fifo: str | None = None) -> None:
    """Fork the pykvm process that runs `work()` (a VM, to its exit status) in the background,
    record it as the pid of `state` (saved in `store`) and return.

    `output`: a file descriptor for its stdout and stderr (it is closed here; stdin becomes
    /dev/null), or None to keep ours, as runc's `create` leaves the container the caller's.
    `exec_fifo`: wait, before `work()`, until `oci start` opens this FIFO for reading (runc's
    trick, as a container's init waits: until then the status is "created").  Afterwards
    the exit status goes to exit.json, and the process exits with it (as a container's
    process does: an engine's conmon waits for it)."""
    from pykvm.container.runtime.state import process_start_time

    saved_r, saved_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(saved_w)
        _background(store, state, work, output, exec_fifo, saved_r)
    os.close(saved_r)
    if output is not None:
        os.close(output)
    state.pid, state.pid_start = pid, process_start_time(pid)
    store.save(state)
    os.close(saved_w)                   # now the background process may run (and remove the state)


def _background(store, state, work, output: int | None, exec_fifo: str | None, saved: int) -> NoReturn:
    """The child of start_background: a session of its own; once the parent has saved the
    state (`saved` reads end of file) and `oci start` came (with `exec_fifo`), run the VM and
    record how it ended."""
    status = 125                        # Docker's "the run itself failed"
    try:
        os.setsid()
        os.read(saved, 1)
        if output is not None:
            null = os.open(os.devnull, os.O_RDONLY)
            for fd, target in ((null, 0), (output, 1), (output, 2)):
                os.dup2(fd, target)
        if exec_fifo is not None:
            fifo = os.open(exec_fifo, os.O_WRONLY | os.O_CLOEXEC)    # blocks until `start` opens it
            os.write(fifo, b"0")                                     # "0": go on (lifecycle.oci_start)
            os.close(fifo)
        status = work()
    except PyKvmError as e:
        os.write(2, f"pykvm: error: {e}\n".encode())
    except BaseException as e:          # the log is the only place anyone will see it
        os.write(2, f"pykvm: error: {type(e).__name__}: {e}\n".encode())
    finally:
        store.record_exit(state.id, status, False)
        if state.auto_remove:
            store.remove(state.id)
        os._exit(status)
