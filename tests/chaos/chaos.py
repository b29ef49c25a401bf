#!/usr/bin/env python3
"""Chaos: kill -9 pykvm at a random moment of an operation, then check that nothing leaked.

For each operation (pull, push, build, rmi, run, exec, oci-create, oci-start, oci-delete, boot):

 1. run it once to the end and time it (it must succeed: the harness tests itself);
 2. COUNT times: set it up, start it, SIGKILL it after a random delay within that time,
    alternately the one process (as `kill -9 PID`) and its whole process group (as a
    terminal's or a service manager's kill of a job does), then the oracle:
      - `container ps -a` works; `container system check` says what the crash left;
      - `container rm -f` of every container works;
      - `container system check --repair` ends with status 0, and a second check finds
        nothing (that is: every blob verifies, every tag leads to a complete image);
      - and, counted by the harness itself, not by pykvm: no process of ours is left,
        no container cgroup, no mount under the work directory, no state directory, no
        file in the store's tmp/, no veth on the bridge, no address lease;
      - no command printed a Python traceback;
      - the operation, run again, succeeds (the store is usable, not only consistent).

Each operation has its own PYKVM_STATE_ROOT and PYKVM_STORE under the work directory,
talks to its own docker-registry on 127.0.0.1, runs in a network namespace of the
harness's own (its bridge, veths and nft table are nobody else's), and in a cgroup of the
harness's own (the containers' cgroups are found under it).  The harness is a child
subreaper: a monitor whose launcher was killed is still counted as its descendant.

    tests/chaos/chaos.py [--count 20] [--seconds 1500] [--seed 1] [--ops pull,run]

Summary: .cache/chaos/summary.json; a finding names the operation, the run and the delay,
so `--ops OP --seed S` replays it.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT / "tests" / "container")]
from image_fixtures import REGISTRY_BIN, start_registry, stop_registry  # noqa: E402
from probes import (OrphanReaper, PrivateCgroup, become_subreaper, descendants,  # noqa: E402
                    mounts_under, reap_zombies)

TRACEBACK = "Traceback (most recent call last)"
BUSYBOX_CONTEXT = ROOT / "guests" / "containers" / "busybox"
CLI_TIMEOUT = 120            # seconds any one pykvm command may take
SEED_DATA = 8 << 20          # bytes of random data in the image's top layer
SETTLE = 15.0                # seconds for a killed launcher's monitor to finish its cleanup
OPERATIONS = ("pull", "push", "build", "rmi", "run", "exec", "oci-create", "oci-start", "oci-delete", "boot")


@dataclass
class Result:
    """One operation's runs: what the kills left (repaired by system check) and what leaked."""

    runs: int = 0
    finished_first: int = 0          # the operation ended before the kill came
    duration: float = 0.0            # s, the unkilled run
    left_by_crash: Counter = field(default_factory=Counter)   # system check's findings, by kind
    findings: list[str] = field(default_factory=list)         # leaks and failures: bugs


class Lab:
    """The work directory, the registry, the network namespace and the cgroup of one chaos run."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.netns = f"pykvm-chaos-{os.getpid()}"
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True)
        self.cgroup = PrivateCgroup(f"pykvm-chaos-{os.getpid()}")
        self.registry_proc, server = start_registry(workdir)
        self.registry = server.host
        self.running: list[subprocess.Popen] = [self.registry_proc]
        self.reaper = OrphanReaper(lambda: {p.pid for p in self.running if p.returncode is None})
        self.reaper.start()
        self.image = f"{self.registry}/chaos/busybox:1"

    def close(self) -> list[str]:
        self.reaper.stop()
        for pid in descendants(exclude={self.registry_proc.pid}):     # after a finding: what is left
            os.kill(pid, signal.SIGKILL)
        reap_zombies()
        stop_registry(self.registry_proc)
        subprocess.run(["ip", "netns", "del", self.netns], check=False)
        return self.cgroup.remove()

    def env(self, op: str) -> dict:
        return {**os.environ, "PYKVM_STATE_ROOT": str(self.workdir / op / "state"),
                "PYKVM_STORE": str(self.workdir / op / "store")}

    def argv(self, args, netns: bool) -> list[str]:
        """`pykvm ARGS`, in our network namespace if asked (it cannot reach the registry)."""
        enter = ["nsenter", f"--net=/run/netns/{self.netns}", "--"] if netns else []
        return [*enter, sys.executable, "-m", "pykvm", *map(str, args)]

    def spawn(self, op: str, args, netns: bool = False) -> subprocess.Popen:
        """Start `pykvm ARGS` in its own process group, in our cgroup (and namespace).
        Its stderr goes to a file (proc.stderr): a pipe would stay open as long as a
        container it created (`oci create` gives its own stdio to the container)."""
        out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        proc = subprocess.Popen(self.argv(args, netns), env=self.env(op), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, start_new_session=True,
                                preexec_fn=self.cgroup.enter)
        proc.stdout_file, proc.stderr = out, err
        self.running = [p for p in self.running if p.returncode is None] + [proc]
        return proc

    def pykvm(self, op: str, *args, findings: list[str] | None = None, want: tuple = (0,),
              netns: bool = False):
        """Run `pykvm ARGS` to the end; a traceback or an unwanted status is a finding
        (or an exception, when `findings` is None: set-up steps must work)."""
        proc = self.spawn(op, args, netns)
        proc.wait(timeout=CLI_TIMEOUT)
        p = subprocess.CompletedProcess(proc.args, proc.returncode, _read(proc.stdout_file), _read(proc.stderr))
        problem = None
        if TRACEBACK in p.stderr:
            problem = f"`pykvm {' '.join(map(str, args))}` printed a traceback: {p.stderr[-600:]}"
        elif p.returncode not in want:
            problem = f"`pykvm {' '.join(map(str, args))}` ended with {p.returncode}: {(p.stdout + p.stderr)[-400:]}"
        if problem and findings is None:
            raise RuntimeError(problem)
        if problem:
            findings.append(problem)
        return p


def _read(f) -> str:
    f.seek(0)
    text = f.read().decode(errors="replace")
    f.close()
    return text


# --- the operations: set-up (unkilled), and the command that is killed -----------------

class Operation:
    name = ""
    in_netns = False         # runs in the lab's network namespace (its containers' network)

    def __init__(self, lab: Lab):
        self.lab = lab
        self.dir = lab.workdir / self.name
        self.dir.mkdir(parents=True, exist_ok=True)

    def pykvm(self, *args, **kw):
        return self.lab.pykvm(self.name, *args, netns=self.in_netns, **kw)

    def spawn(self, args) -> subprocess.Popen:
        return self.lab.spawn(self.name, args, self.in_netns)

    def prepare_once(self) -> None:
        """What every run needs (the base image in the store)."""
        self.lab.pykvm(self.name, "container", "pull", self.lab.image)
        self.lab.pykvm(self.name, "container", "tag", self.lab.image, "busybox")

    def prepare(self, run: int) -> None:
        """What run number `run` needs just before it."""

    def command(self, run: int) -> list[str]:
        raise NotImplementedError

    def leftovers(self, run) -> list[str]:
        """What this operation may leave that `rm -f` would hide (checked before it runs)."""
        return []


class Pull(Operation):
    name = "pull"

    def prepare_once(self) -> None:
        pass

    def prepare(self, run):
        shutil.rmtree(self.dir / "store", ignore_errors=True)      # every pull downloads everything

    def command(self, run):
        return ["container", "pull", self.lab.image]


class Push(Operation):
    name = "push"

    def prepare(self, run):
        self.pykvm("container", "tag", self.lab.image, f"{self.lab.registry}/chaos/pushed:{run}")

    def command(self, run):
        return ["container", "push", f"{self.lab.registry}/chaos/pushed:{run}"]


class Build(Operation):
    name = "build"

    def prepare_once(self):
        super().prepare_once()
        context = self.dir / "context"
        context.mkdir(exist_ok=True)
        (context / "data").write_bytes(random.Random(1).randbytes(4 << 20))
        (context / "Dockerfile").write_text("FROM busybox\nRUN echo built > /built\nCOPY data /data\n")

    def command(self, run):
        return ["container", "build", "--no-cache", "-q", "-t", f"chaos/built:{run}", self.dir / "context"]


class Rmi(Operation):
    name = "rmi"

    def prepare(self, run):
        self.pykvm("container", "tag", "busybox", f"chaos/rmi:{run}")

    def command(self, run):
        return ["container", "rmi", f"chaos/rmi:{run}"]


class Run(Operation):
    name = "run"
    in_netns = True

    def command(self, run):
        return ["container", "run", "--rm", "--network", "bridge", "busybox", "sh", "-c", "echo hi; sleep 0.3"]


class Exec(Operation):
    name = "exec"

    def prepare(self, run):
        self.pykvm("container", "run", "-d", "--network", "none", "--name", f"e{run}", "busybox", "sleep", "600")

    def command(self, run):
        return ["container", "exec", f"e{run}", "sh", "-c", "echo hi; sleep 0.3"]

    def leftovers(self, run):
        """The exec'd command must not outlive a killed `pykvm container exec`: once things
        settle, the container holds its init and `sleep 600` only."""
        states = [json.loads(p.read_text()) for p in (self.dir / "state").glob("*/state.json")]
        state = next((s for s in states if s["name"] == f"e{run}"), None)
        if state is None:
            return [f"container e{run} is gone after the kill of an exec into it"]
        pids = Path(state["cgroup"]["dirs"][0]) / "cgroup.procs"     # every hierarchy holds the same
        deadline = time.monotonic() + SETTLE
        try:
            while len(procs := pids.read_text().split()) > 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        except FileNotFoundError:
            exit_file = self.dir / "state" / state["id"] / "exit.json"
            return [f"container e{run} stopped during the kill of an exec into it "
                    f"(exit.json: {exit_file.read_text() if exit_file.exists() else 'none'})"]
        return [] if len(procs) <= 2 else [f"the exec'd command outlived its pykvm: {[_comm(int(p)) for p in procs]}"]


class OciCreate(Operation):
    name = "oci-create"

    def prepare_once(self):
        bundle = self.dir / "bundle"
        if bundle.exists():
            return
        from pykvm.container.runtime.rootfs import make_busybox_rootfs
        bundle.mkdir()
        subprocess.run(["runc", "spec"], cwd=bundle, check=True)
        config = json.loads((bundle / "config.json").read_text())
        config["process"].update(terminal=False, args=["sh", "-c", "sleep 0.2"])
        (bundle / "config.json").write_text(json.dumps(config))
        make_busybox_rootfs(bundle / "rootfs")

    def command(self, run):
        return ["container", "oci", "create", f"c{run}", "-b", self.dir / "bundle"]


class OciStart(OciCreate):
    name = "oci-start"

    def prepare(self, run):
        self.pykvm("container", "oci", "create", f"c{run}", "-b", self.dir / "bundle")

    def command(self, run):
        return ["container", "oci", "start", f"c{run}"]


class OciDelete(OciCreate):
    name = "oci-delete"

    def prepare(self, run):
        self.pykvm("container", "oci", "create", f"c{run}", "-b", self.dir / "bundle")
        self.pykvm("container", "oci", "start", f"c{run}")
        deadline = time.monotonic() + 10
        while '"stopped"' not in self.pykvm("container", "oci", "state", f"c{run}").stdout:
            if time.monotonic() > deadline:
                raise RuntimeError(f"oci container c{run} did not stop")
            time.sleep(0.05)

    def command(self, run):
        return ["container", "oci", "delete", f"c{run}"]


class Boot(Operation):
    name = "boot"

    def prepare_once(self):
        pass

    def command(self, run):
        return ["boot", "--cmdline", "run=info;poweroff"]


CLASSES = {c.name: c for c in (Pull, Push, Build, Rmi, Run, Exec, OciCreate, OciStart, OciDelete, Boot)}


# --- one run: start, kill, check ----------------------------------------------------

def timed_run(op: Operation, run: int) -> float:
    """The operation, unkilled: it must succeed; returns its wall time."""
    op.prepare(run)
    start = time.monotonic()
    proc = op.spawn(op.command(run))
    proc.wait(timeout=CLI_TIMEOUT)
    took = time.monotonic() - start
    err = _read(proc.stderr)
    if proc.returncode != 0 or TRACEBACK in err:
        raise RuntimeError(f"{op.name}: `pykvm {' '.join(map(str, op.command(run)))}` failed "
                           f"({proc.returncode}): {err[-600:]}")
    return took


def killed_run(op: Operation, run: int, delay: float, group: bool) -> bool:
    """Start the operation and SIGKILL it (or its process group) after `delay` s; True
    if it had already ended by then."""
    op.prepare(run)
    proc = op.spawn(op.command(run))
    try:
        proc.wait(timeout=delay)
        finished = True
    except subprocess.TimeoutExpired:
        finished = False
    try:
        os.killpg(proc.pid, signal.SIGKILL) if group else os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=CLI_TIMEOUT)
    return finished


def oracle(op: Operation, result: Result, run, label: str) -> None:
    """Everything the module docstring promises after a kill; problems go to result.findings."""
    findings = []
    op.pykvm("container", "ps", "-a", findings=findings)
    findings += op.leftovers(run)
    check = op.pykvm("container", "system", "check", findings=findings, want=(0, 1))
    for line in check.stdout.splitlines()[:-1]:
        result.left_by_crash[_kind(line)] += 1
    for cid in op.pykvm("container", "ps", "-a", "-q", findings=findings).stdout.split():
        op.pykvm("container", "rm", "-f", cid, findings=findings)
    op.pykvm("container", "system", "check", "--repair", findings=findings)
    again = op.pykvm("container", "system", "check", findings=findings)
    if "no problems found" not in again.stdout:
        findings.append(f"a second system check still finds: {again.stdout.strip()}")
    findings += leaks(op)
    try:
        timed_run(op, f"{run}-again")
    except RuntimeError as e:
        findings.append(f"the operation, run again, failed: {e}")
    for cid in op.pykvm("container", "ps", "-a", "-q", findings=findings).stdout.split():
        op.pykvm("container", "rm", "-f", cid, findings=findings)
    result.findings += [f"{op.name} {label}: {f}" for f in findings]


def leaks(op: Operation) -> list[str]:
    """What the harness itself sees left on the host: processes, cgroups, mounts, state,
    store leftovers, veths and leases."""
    lab = op.lab
    registry = {lab.registry_proc.pid}
    deadline = time.monotonic() + SETTLE
    while descendants(exclude=registry) and time.monotonic() < deadline:
        reap_zombies()
        time.sleep(0.05)
    reap_zombies()
    found = []
    if procs := descendants(exclude=registry):
        found.append(f"processes left: {[_comm(p) for p in procs]}")
    if cgroups := lab.cgroup.containers():
        found.append(f"container cgroups left: {cgroups}")
    if procs := lab.cgroup.processes():
        found.append(f"processes left in our cgroup: {[_comm(p) for p in procs]}")
    if mounts := mounts_under(lab.workdir):
        found.append(f"mounts left: {mounts}")
    state = op.dir / "state"
    if state.is_dir() and (dirs := sorted(p.name for p in state.iterdir() if p.name != ".cache")):
        found.append(f"state directories left: {dirs}")
    tmp = op.dir / "store" / "tmp"
    if tmp.is_dir() and (files := sorted(p.name for p in tmp.iterdir())):
        found.append(f"store tmp/ not empty: {files}")
    links = subprocess.run(["ip", "-n", lab.netns, "-o", "link", "show"], capture_output=True, text=True).stdout
    if veths := [w.rstrip(":").split("@")[0] for w in links.split() if w.startswith("pkv")]:
        found.append(f"veths left: {veths}")
    leases = op.dir / "network" / "leases.json"
    if leases.exists() and json.loads(leases.read_text() or "{}").get("leases", {}):
        found.append(f"leases left: {leases.read_text()[:200]}")
    return found


def _comm(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return str(pid)
    return f"{pid} {cmdline.decode(errors='replace')[:80]}"


def _kind(line: str) -> str:
    """A system check line without its names and numbers: "tmp: is a leftover ..."."""
    where, _, problem = line.partition(": ")
    problem = re.sub(r"\b[0-9a-f]{12,64}\b|\b\d+\.\d+\.\d+\.\d+\b", "X", problem.split(":")[0])
    return f"{where.split()[0].split('/')[0]}: {problem}"


def run_operation(op: Operation, count: int, rng: random.Random, deadline: float, log) -> Result:
    result = Result()
    op.prepare_once()
    result.duration = timed_run(op, "timed")
    oracle_result = Result()
    oracle(op, oracle_result, "timed", "timed")
    result.findings += oracle_result.findings
    for run in range(count):
        if time.monotonic() > deadline:
            log(f"  {op.name}: time is up after {run} runs")
            break
        delay = rng.uniform(0, result.duration)
        group = run % 2 == 1
        label = f"run {run} ({'group' if group else 'process'} kill at {delay:.3f} s)"
        result.finished_first += killed_run(op, run, delay, group)
        oracle(op, result, run, label)
        result.runs += 1
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20, help="kills per operation")
    parser.add_argument("--seconds", type=float, default=1500, help="stop starting runs after this")
    parser.add_argument("--seed", default="1")
    parser.add_argument("--ops", default=",".join(OPERATIONS))
    parser.add_argument("--summary", default=str(ROOT / ".cache" / "chaos" / "summary.json"))
    args = parser.parse_args(argv)
    ops = [o for o in args.ops.split(",") if o]
    if unknown := set(ops) - set(CLASSES):
        parser.error(f"unknown operation(s): {', '.join(sorted(unknown))} (have: {', '.join(OPERATIONS)})")
    if os.geteuid() != 0 or not os.path.exists(REGISTRY_BIN) or not shutil.which("runc"):
        print("chaos: needs root, docker-registry and runc", file=sys.stderr)
        return 2
    become_subreaper()
    rng = random.Random(args.seed)
    deadline = time.monotonic() + args.seconds
    started = time.monotonic()
    results: dict[str, Result] = {}
    workdir = Path(tempfile.mkdtemp(prefix="pykvm-chaos-"))
    lab = Lab(workdir)
    try:
        seed_image(lab)
        for name in ops:
            results[name] = run_operation(CLASSES[name](lab), args.count, rng, deadline, print)
            report_line(name, results[name])
    finally:
        left = lab.close()
        shutil.rmtree(workdir, ignore_errors=True)
    findings = [f for r in results.values() for f in r.findings]
    if left:
        findings.append(f"the harness's cgroup could not be removed: {left}")
    write_summary(Path(args.summary), results, findings, time.monotonic() - started, args)
    print(f"{sum(r.runs for r in results.values())} kills in {time.monotonic() - started:.0f} s, "
          f"{len(findings)} findings")
    for f in findings:
        print(f"  FINDING {f}")
    return 1 if findings else 0


def seed_image(lab: Lab) -> None:
    """The image every operation uses: guests/containers/busybox and a layer of SEED_DATA
    random bytes on top (so that a pull, a push or an unpack lasts long enough for a kill
    to land in the middle of it, not only in Python's start-up), pushed to the registry."""
    subprocess.run(["make", "-s", "-C", str(BUSYBOX_CONTEXT.parent)], check=True, capture_output=True)
    lab.pykvm("seed", "container", "build", "-q", "-t", "busybox-base", BUSYBOX_CONTEXT)
    context = lab.workdir / "seed" / "context"
    context.mkdir(parents=True)
    (context / "data").write_bytes(random.Random(2).randbytes(SEED_DATA))
    (context / "Dockerfile").write_text("FROM busybox-base\nCOPY data /data\n")
    lab.pykvm("seed", "container", "build", "-q", "-t", lab.image, context)
    lab.pykvm("seed", "container", "push", lab.image)


def report_line(name: str, r: Result) -> None:
    left = ", ".join(f"{k} x{n}" for k, n in sorted(r.left_by_crash.items())) or "nothing"
    print(f"{name:<11} {r.runs:>3} kills ({r.finished_first} after it ended), unkilled {r.duration:.2f} s; "
          f"left by the crash (repaired): {left}; findings: {len(r.findings)}", flush=True)


def write_summary(path: Path, results: dict[str, Result], findings: list[str], seconds: float, args) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "seed": args.seed, "count": args.count, "seconds": round(seconds, 1),
        "operations": {name: {"kills": r.runs, "ended_before_kill": r.finished_first,
                              "unkilled_seconds": round(r.duration, 3),
                              "left_by_crash": dict(r.left_by_crash), "findings": r.findings}
                       for name, r in results.items()},
        "findings": findings,
    }, indent=1))


if __name__ == "__main__":
    sys.exit(main())
