"""`pykvm container system check`, the runtime's half: what a killed pykvm leaves behind.

The process tree cleans up after itself (launcher.py): a foreground launcher that dies
takes its container with it (the monitor's PR_SET_PDEATHSIG), and a monitor that dies
takes init (init's).  What nobody is left to do when *both* are killed at once (a kill -9
of the process group, an OOM kill, a power cut of a tmpfs-less /run) is found here:

    a state directory without state.json   a launcher killed between mkdir and its first write
    a stopped container with no exit.json  its monitor was killed: the status is unknown;
                                           repair records 255 (Docker's "unknown") and
                                           removes it if it was run with --rm
    a stopped container whose cgroup stays nobody destroyed it: repair does (not for one
                                           `oci create`d: its cgroup is `oci delete`'s)
    a running container without monitor   no one will reap it or record its end: repair kills it
    a cgroup under pykvm/ without state    repair removes it when it is empty (only for the
                                           default state root: see check_cgroups)
    a mount under the state or store root  repair detaches it (umount2 MNT_DETACH)
    a network lease, DNAT entry or veth    network.sweep (`network prune`) gives it back
    of a container that is gone

A container still being created (its launcher alive, init not yet known) or cleaned up
(its monitor or launcher alive) is left alone.  Repair does what `rm` and `network
prune` do, in the same functions.
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

from pykvm.container.runtime.cgroups import Cgroup, open_cgroup
from pykvm.container.runtime.state import STATE_ROOT_ENV, ContainerState, StateStore, pid_alive
from pykvm.container.runtime.syscalls import umount
from pykvm.errors import ContainerError

__all__ = ["Finding", "check_containers", "check_cgroups", "check_mounts", "check_network",
           "UNKNOWN_EXIT", "MNT_DETACH"]

UNKNOWN_EXIT = 255          # exit.json of a container whose monitor was killed (Docker's "unknown")
MNT_DETACH = 2              # <sys/mount.h>: umount2(2) lazily, even while busy


@dataclass
class Finding:
    """One problem: where, what, and what repair did about it ("" if nothing yet)."""

    where: str
    problem: str
    repaired: str = ""

    def line(self) -> str:
        return f"{self.where}: {self.problem}" + (f": {self.repaired}" if self.repaired else "")


def check_containers(store: StateStore, repair: bool = False) -> list[Finding]:
    """Every state directory: readable, and looked after by a launcher or monitor or stopped cleanly."""
    root = Path(store.root)
    if not root.is_dir():
        return []
    findings = []
    for path in sorted(root.iterdir()):
        if path.name.startswith("."):          # the runtime's .cache: no container's id starts so
            continue
        try:
            state = store.load(path.name)
        except (ContainerError, ValueError, TypeError):
            finding = Finding(f"container {path.name}", "has no readable state.json")
            if repair:
                store.remove(path.name)
                finding.repaired = "removed"
            findings.append(finding)
            continue
        finding = _check_container(store, state, repair)
        if finding:
            findings.append(finding)
    return findings


def _check_container(store: StateStore, state: ContainerState, repair: bool) -> Finding | None:
    if pid_alive(state.launcher_pid, state.launcher_start) or pid_alive(state.monitor_pid):
        return None                          # being created, run, or cleaned up by its own
    where = f"container {state.id}"
    if store.status(state) != "stopped":
        finding = Finding(where, f"is {store.status(state)} but its monitor is gone")
        if repair:
            try:
                os.kill(state.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            finding.repaired = "killed; " + _tidy_stopped(store, state)
        return finding
    problems = _stopped_problems(store, state)
    if not problems:
        return None
    finding = Finding(where, "; ".join(problems))
    if repair:
        finding.repaired = _tidy_stopped(store, state)
    return finding


def _stopped_problems(store: StateStore, state: ContainerState) -> list[str]:
    problems = []
    if store.exit_info(state.id) is None:
        problems.append("its exit status was never recorded (its monitor was killed)")
    if _cgroup_of(state) is not None and not _awaits_delete(state):
        problems.append("its cgroup is left")
    if state.auto_remove:
        problems.append("it was run with --rm but is still here")
    return problems


def _awaits_delete(state: ContainerState) -> bool:
    """An `oci create`d container keeps its cgroup until `oci delete` (runtime.md "delete")."""
    return bool(state.bundle) and not state.auto_remove


def _tidy_stopped(store: StateStore, state: ContainerState) -> str:
    """What `rm` does for a --rm container; for the others, exit.json and the cgroup."""
    from pykvm.container.runtime.lifecycle import remove_container, wait_stopped
    wait_stopped(state, store, 5.0)
    if state.auto_remove:
        remove_container(state.id, force=True, store=store)
        return "removed (it was run with --rm)"
    done = []
    if store.exit_info(state.id) is None:
        store.record_exit(state.id, UNKNOWN_EXIT, False)
        done.append(f"marked stopped (exit status {UNKNOWN_EXIT}: unknown)")
    cgroup = _cgroup_of(state)
    if cgroup is not None and not _awaits_delete(state):
        cgroup.destroy()
        done.append("cgroup removed")
    return ", ".join(done)


def _cgroup_of(state: ContainerState) -> Cgroup | None:
    """The container's cgroup, if its directories still exist."""
    if not state.cgroup:
        return None
    cgroup = Cgroup.from_dirs(state.cgroup.get("version", "?"), state.cgroup.get("dirs", []))
    return cgroup if cgroup.exists() else None


def check_cgroups(store: StateStore, repair: bool = False) -> list[Finding]:
    """Cgroups under <our cgroup>/pykvm/ that no container of this state root has.

    Only for the default state root: with PYKVM_STATE_ROOT set (tests, several users of one
    cgroup tree), a cgroup without a state directory here may be another root's container."""
    probe = open_cgroup("probe") if not os.environ.get(STATE_ROOT_ENV) else None
    if probe is None:
        return []
    root = Path(store.root)
    known = {p.name for p in root.iterdir()} if root.is_dir() else set()
    findings = []
    for parent in sorted({Path(d).parent for d in probe.dirs()}):
        if not parent.is_dir():
            continue
        for cgroup in sorted(p for p in parent.iterdir() if p.is_dir() and p.name not in known):
            finding = Finding(f"cgroup {cgroup}", "belongs to no container")
            if (cgroup / "cgroup.procs").read_text().strip():
                finding.problem += " and still holds processes (left alone: pykvm did not start them here)"
            elif repair:
                cgroup.rmdir()
                finding.repaired = "removed"
            findings.append(finding)
    return findings


def check_mounts(roots: list[Path], repair: bool = False) -> list[Finding]:
    """Mounts in our namespace under pykvm's own directories: a container's mounts live in
    its own mount namespace, so any found here are left over."""
    prefixes = [str(Path(r).resolve()) + "/" for r in roots]
    findings = []
    for target in reversed(_mount_points()):           # the deepest first
        if not any(target.startswith(p) for p in prefixes):    # under a root; not the root itself
            continue
        finding = Finding(f"mount {target}", "is left over")
        if repair:
            umount(target, MNT_DETACH)
            finding.repaired = "unmounted"
        findings.append(finding)
    return findings


def _mount_points() -> list[str]:
    """Field 5 of each /proc/self/mountinfo line (proc(5)), octal escapes undone."""
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4].encode().decode("unicode_escape") for line in f]


def check_network(repair: bool = False) -> list[Finding]:
    """The bridge network's leases, DNAT entries and veths of containers that are gone."""
    from pykvm.container.runtime.network import sweep
    findings = [Finding("network", line) for line in sweep(dry_run=True)]
    if repair and findings:
        sweep()
        for finding in findings:
            finding.repaired = "released"
    return findings
