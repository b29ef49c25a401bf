"""`oci create | run` with VM isolation: an OCI bundle's process run by its own Linux kernel.

`pykvm container oci run --isolation vm ID` (or a bundle whose config.json is annotated
"org.pykvm.isolation": "vm", as `podman run --annotation org.pykvm.isolation=vm` writes it;
bundle.bundle_isolation chooses) boots the same guest as `container run --isolation vm`
(isolation.py), with the bundle in place of the image:

    config.json                    the VM
    root.path (a directory)        the root disk: `mkfs.ext4 -d` of it (rootdisk.build_disk), in the
                                   container's state directory as root.ext4, read-only; the
                                   guest puts a tmpfs on top for what the command writes
    process.args, env, cwd,        container-init's request on the run disk, as an image's
      user.uid/gid/additionalGids,   (isolation.boot_root_disk: the one function both paths call)
      hostname
    linux.resources.memory.limit   guest RAM (else isolation.DEFAULT_MEMORY)
    linux.resources.cpu.quota      vCPUs: quota / period, rounded up (else 1)
      and .period
    namespaces, mounts, cgroups,   not used: the guest's own kernel is the boundary, and the VM
      capabilities, seccomp ...    sees its root disk and nothing else of the host
    process.terminal, hooks        refused in one line (VM_REFUSED)

The lifecycle is runc's, on the container's state directory (state.py), so that `start`,
`state`, `list`, `kill` and `delete` (lifecycle.py, pykvm-runc) need nothing of their own:

    create   build the root disk, make exec.fifo, fork the background pykvm process that will
             run the VM (isolation.start_background) and record it as the container's pid;
             it waits on exec.fifo, as a container's init does: status "created"
    start    opens exec.fifo: the background process boots the VM: status "running"
    kill     a signal to the background process, which passes it on to the command in the
             guest (isolation.FORWARDED; SIGKILL ends the VM at once)
    state    "stopped" once exit.json holds the command's status (or the process is gone)
    delete   the state directory, and the root disk in it
    run      all of it in the foreground: pykvm itself is the container's process, and exits
             with the command's status
"""
from __future__ import annotations

import os
import time
from dataclasses import replace

from pykvm.errors import ConfigError

__all__ = ["oci_create_vm", "oci_run_vm", "vm_resources", "check_for_vm", "VM_REFUSED", "ROOT_DISK"]

ROOT_DISK = "root.ext4"             # in the container's state directory
# config.json fields that a VM cannot honour, and why (set: one line, before anything is made)
VM_REFUSED = {
    "process.terminal is true": "the VM's console cannot be handed to a --console-socket yet; "
                        "set it to false (the output still comes back on stdout and stderr)",
    "hooks are given": "hooks run in the container's namespaces, and a VM has none on the host",
}


def check_for_vm(cfg) -> None:
    """A ConfigError for the first VM_REFUSED field `cfg` (a bundle's RunConfig) sets."""
    given = {"process.terminal is true": cfg.tty, "hooks are given": any(cfg.hooks.values())}
    for what, reason in VM_REFUSED.items():
        if given[what]:
            raise ConfigError(f"config.json: {what}, but with VM isolation {reason}")


def vm_resources(cfg) -> tuple[int, int]:
    """(guest RAM in bytes, vCPUs) from linux.resources: memory.limit is the RAM (else
    DEFAULT_MEMORY); cpu.quota / cpu.period, rounded up, the vCPUs (else 1).  A container's
    quota of 1.5 CPUs is CPU time; a guest kernel sees whole processors, so it gets 2."""
    from pykvm.commands.container.isolation import DEFAULT_MEMORY, check_ram
    from pykvm.sizes import parse_size
    from pykvm.vm.machine import MAX_CPUS

    limits = cfg.limits
    ram = check_ram(limits.memory or parse_size(DEFAULT_MEMORY, what="guest RAM", default_unit="M"),
                    f"linux.resources.memory.limit {limits.memory}")
    cpus = -(-limits.cpu_quota // limits.cpu_period) if limits.cpu_quota else 1
    if cpus > MAX_CPUS:
        raise ConfigError(f"config.json: linux.resources.cpu quota/period asks for {cpus} vCPUs; "
                          f"a VM has 1 to {MAX_CPUS}")
    return ram, cpus


def _load(cid: str, bundle: str, interactive: bool):
    """The bundle's RunConfig for container `cid`, checked for a VM; with its (RAM, vCPUs)."""
    from pykvm.container.runtime.bundle import load_bundle

    cfg = replace(load_bundle(bundle), id=cid, name=cid, interactive=interactive)
    check_for_vm(cfg)
    return cfg, vm_resources(cfg)


def _new_state(cfg, store, pid: int = 0):
    """The container's state directory, recorded as a VM's (isolation "vm"), with its root disk built."""
    from pykvm.container.image.rootdisk import build_disk
    from pykvm.container.runtime.state import ContainerState, process_start_time

    state = ContainerState(id=cfg.id, name=cfg.id, bundle=cfg.bundle, rootfs=cfg.rootfs, command=list(cfg.args),
                           created=time.time(), annotations=cfg.annotations, isolation="vm",
                           pid=pid, pid_start=process_start_time(pid) if pid else 0)
    store.create(state)
    try:
        build_disk(cfg.rootfs, os.path.join(store.dir(cfg.id), ROOT_DISK))
    except BaseException:
        store.remove(cfg.id)
        raise
    return state


def oci_create_vm(cid: str, bundle: str, store=None, guest=None):
    """`create` with VM isolation: status "created", the background pykvm process waiting for
    `start` (its pid is the state's).  `guest`: (kernel, initramfs), linux_guest()'s by default.
    Returns the ContainerState."""
    from pykvm.commands.container.isolation import boot_root_disk, linux_guest, start_background
    from pykvm.container.runtime.state import StateStore

    cfg, (ram, cpus) = _load(cid, bundle, interactive=False)
    guest = guest or linux_guest()
    store = store or StateStore()
    state = _new_state(cfg, store)
    directory = store.dir(cid)
    fifo, disk = os.path.join(directory, "exec.fifo"), os.path.join(directory, ROOT_DISK)
    try:
        os.mkfifo(fifo, 0o600)
        start_background(store, state, lambda: boot_root_disk(disk, cfg, ram, guest, cpus), exec_fifo=fifo)
    except BaseException:
        store.remove(cid)
        raise
    return state


def oci_run_vm(cid: str, bundle: str, store=None) -> int:
    """`run` with VM isolation: this process is the container's (`state` says running, `kill`
    reaches the command through it); returns the command's exit status, the state removed."""
    from pykvm.commands.container.isolation import boot_root_disk, linux_guest
    from pykvm.container.runtime.state import StateStore

    cfg, (ram, cpus) = _load(cid, bundle, interactive=True)
    guest = linux_guest()
    store = store or StateStore()
    _new_state(cfg, store, pid=os.getpid())
    try:
        return boot_root_disk(os.path.join(store.dir(cid), ROOT_DISK), cfg, ram, guest, cpus)
    finally:
        store.remove(cid)
