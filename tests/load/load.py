#!/usr/bin/env python3
"""Load: many `container run --rm --network none busybox sh -c 'exit N'` at once, then one
after another, with every exit status checked and the host's resources counted before and
after; the same with runc beside it (`runc run`, one bundle per N sharing one rootfs).

    tests/load/load.py [--concurrent 100] [--sequential 1000] [--seconds 1500] [--runtimes pykvm,runc]

For each runtime and phase: runs done, wrong exit statuses, wall time, per-run time
(sequential: min/median/max), and the peak of the summed PSS of every process of ours
(/proc/PID/smaps_rollup, sampled every 100 ms: a page shared by k processes counts 1/k in
each, so the sum is what they cost the host).  Before and after each runtime's runs: our open fds, the mounts
under the work directory, the container cgroups under our own cgroup, our descendant
processes, and the state directories left; they must be equal.  Exit status 1 if a status
was wrong or anything leaked.  Bounded: a run may take CLI_TIMEOUT s, the whole
sequential phase stops starting runs after --seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT / "tests" / "chaos")]
from probes import PrivateCgroup, become_subreaper, descendants, mounts_under, open_fds, reap_zombies  # noqa: E402

BUSYBOX_CONTEXT = ROOT / "guests" / "containers" / "busybox"
CLI_TIMEOUT = 300
SAMPLE_EVERY = 0.1           # s, between two memory samples


def status_of(run: int) -> int:
    """The exit status run number `run` asks for: every value 0-255 comes up."""
    return (run * 37) % 256


@dataclass
class Phase:
    runs: int = 0
    wrong: list[str] = field(default_factory=list)
    seconds: float = 0.0
    per_run: list[float] = field(default_factory=list)
    peak_pss_kib: int = 0


class Runtime:
    """How to start one container that exits with N, and what it leaves to count."""

    name = ""

    def __init__(self, workdir: Path, cgroup: PrivateCgroup):
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True)
        self.cgroup = cgroup

    def argv(self, run: int) -> list[str]:
        raise NotImplementedError

    def start(self, run: int) -> subprocess.Popen:
        return subprocess.Popen(self.argv(run), env=self.env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                preexec_fn=self.cgroup.enter)

    def env(self) -> dict:
        return dict(os.environ)

    def state_dirs(self) -> list[str]:
        return []

    def resources(self) -> dict:
        return {"fds": open_fds(), "mounts": len(mounts_under(self.workdir)),
                "cgroups": len(self.cgroup.containers()), "processes": len(descendants()),
                "state dirs": len(self.state_dirs())}


class Pykvm(Runtime):
    name = "pykvm"

    def prepare(self) -> None:
        subprocess.run(["make", "-s", "-C", str(BUSYBOX_CONTEXT.parent)], check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "pykvm", "container", "build", "-q", "-t", "busybox",
                        str(BUSYBOX_CONTEXT)], env=self.env(), check=True, capture_output=True)

    def env(self) -> dict:
        return {**os.environ, "PYKVM_STORE": str(self.workdir / "store"),
                "PYKVM_STATE_ROOT": str(self.workdir / "state")}

    def argv(self, run):
        return [sys.executable, "-m", "pykvm", "container", "run", "--rm", "--network", "none",
                "busybox", "sh", "-c", f"exit {status_of(run)}"]

    def state_dirs(self):
        state = self.workdir / "state"
        return [n for n in os.listdir(state) if n != ".cache"] if state.is_dir() else []


class Runc(Runtime):
    name = "runc"

    def prepare(self) -> None:
        from pykvm.container.runtime.rootfs import make_busybox_rootfs
        rootfs = make_busybox_rootfs(self.workdir / "rootfs")
        subprocess.run(["runc", "spec"], cwd=self.workdir, check=True)
        spec = json.loads((self.workdir / "config.json").read_text())
        spec["root"] = {"path": str(rootfs), "readonly": True}
        for n in range(256):                       # one bundle per exit status, one shared rootfs
            spec["process"].update(terminal=False, args=["sh", "-c", f"exit {n}"])
            bundle = self.workdir / "bundles" / str(n)
            bundle.mkdir(parents=True)
            (bundle / "config.json").write_text(json.dumps(spec))

    def argv(self, run):
        return ["runc", "--root", str(self.workdir / "state"), "run", "--bundle",
                str(self.workdir / "bundles" / str(status_of(run))), f"load-{run}"]

    def state_dirs(self):
        state = self.workdir / "state"
        return [n for n in os.listdir(state) if n != ".cache"] if state.is_dir() else []


class PssSampler(threading.Thread):
    """The peak, over time, of the summed PSS of all our descendants."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = 0
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(SAMPLE_EVERY):
            self.peak = max(self.peak, sum(_pss_kib(pid) for pid in descendants()))

    def stop(self) -> int:
        self.done.set()
        self.join()
        return self.peak


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def finish(proc: subprocess.Popen, run: int, phase: Phase) -> None:
    _, err = proc.communicate(timeout=CLI_TIMEOUT)
    phase.runs += 1
    if proc.returncode != status_of(run) or b"Traceback" in err:
        phase.wrong.append(f"run {run}: exit {proc.returncode}, want {status_of(run)}: {err.decode()[-300:]}")


def concurrent(runtime: Runtime, count: int) -> Phase:
    phase, sampler = Phase(), PssSampler()
    sampler.start()
    start = time.monotonic()
    procs = [runtime.start(run) for run in range(count)]
    for run, proc in enumerate(procs):
        finish(proc, run, phase)
    phase.seconds = time.monotonic() - start
    phase.peak_pss_kib = sampler.stop()
    return phase


def sequential(runtime: Runtime, count: int, deadline: float) -> Phase:
    phase, sampler = Phase(), PssSampler()
    sampler.start()
    start = time.monotonic()
    for run in range(count):
        if time.monotonic() > deadline:
            break
        began = time.monotonic()
        finish(runtime.start(run), run, phase)
        phase.per_run.append(time.monotonic() - began)
    phase.seconds = time.monotonic() - start
    phase.peak_pss_kib = sampler.stop()
    return phase


def settled_resources(runtime: Runtime, before: dict, wait: float = 10.0) -> dict:
    """The resources again, once what may still be finishing has (bounded)."""
    deadline = time.monotonic() + wait
    while True:
        reap_zombies()
        after = runtime.resources()
        if after == before or time.monotonic() > deadline:
            return after
        time.sleep(0.05)


def measure(runtime: Runtime, args, deadline: float) -> dict:
    runtime.prepare()
    before = runtime.resources()
    phases = {"concurrent": concurrent(runtime, args.concurrent),
              "sequential": sequential(runtime, args.sequential, deadline)}
    after = settled_resources(runtime, before)
    return {"before": before, "after": after, "phases": phases}


def report(results: dict) -> list[str]:
    lines, problems = [], []
    lines.append(f"{'runtime':<7} {'phase':<11} {'runs':>5} {'wrong':>5} {'total s':>8} "
                 f"{'per run s min/median/max':>26} {'peak PSS MiB':>13}")
    for name, r in results.items():
        for phase_name, p in r["phases"].items():
            spread = (f"{min(p.per_run):.3f}/{statistics.median(p.per_run):.3f}/{max(p.per_run):.3f}"
                      if p.per_run else "-")
            lines.append(f"{name:<7} {phase_name:<11} {p.runs:>5} {len(p.wrong):>5} {p.seconds:>8.1f} "
                         f"{spread:>26} {p.peak_pss_kib / 1024:>13.1f}")
            problems += [f"{name} {phase_name}: {w}" for w in p.wrong[:5]]
        lines.append(f"{name:<7} before {r['before']}")
        lines.append(f"{name:<7} after  {r['after']}")
        if r["before"] != r["after"]:
            problems.append(f"{name}: resources before {r['before']} != after {r['after']}")
    return lines + [f"PROBLEM {p}" for p in problems]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrent", type=int, default=100)
    parser.add_argument("--sequential", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=1500, help="stop starting sequential runs after this")
    parser.add_argument("--runtimes", default="pykvm,runc")
    parser.add_argument("--summary", default=str(ROOT / ".cache" / "load" / "summary.json"))
    args = parser.parse_args(argv)
    classes = {c.name: c for c in (Pykvm, Runc)}
    names = [n for n in args.runtimes.split(",") if n]
    if unknown := set(names) - set(classes):
        parser.error(f"unknown runtime(s): {', '.join(sorted(unknown))}")
    if os.geteuid() != 0:
        print("load: needs root", file=sys.stderr)
        return 2
    if "runc" in names and not shutil.which("runc"):
        print("load: runc is not installed; `--runtimes pykvm` runs without it", file=sys.stderr)
        return 2
    become_subreaper()
    deadline = time.monotonic() + args.seconds
    workdir = Path(tempfile.mkdtemp(prefix="pykvm-load-"))
    cgroup = PrivateCgroup(f"pykvm-load-{os.getpid()}")
    results = {}
    try:
        for name in names:
            results[name] = measure(classes[name](workdir, cgroup), args, deadline)
    finally:
        left = cgroup.remove()
        shutil.rmtree(workdir, ignore_errors=True)
    lines = report(results) + ([f"PROBLEM our cgroup could not be removed: {left}"] if left else [])
    print("\n".join(lines))
    write_summary(Path(args.summary), results, lines)
    return 1 if any(line.startswith("PROBLEM") for line in lines) else 0


def write_summary(path: Path, results: dict, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        name: {"before": r["before"], "after": r["after"],
               "phases": {k: {"runs": p.runs, "wrong": p.wrong, "seconds": round(p.seconds, 2),
                              "per_run": [round(t, 4) for t in p.per_run],
                              "peak_pss_kib": p.peak_pss_kib} for k, p in r["phases"].items()}}
        for name, r in results.items()} | {"report": lines}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
