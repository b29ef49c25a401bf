#!/usr/bin/env python3
"""Benchmark: host memory a running container costs outside its command, pykvm vs runc.

    python tests/bench/bench_container_memory.py [--containers 5]      (root)

Starts N detached containers of one busybox rootfs running `sleep`, each the
way its runtime's user would: `pykvm container run -d --rootfs DIR sleep 600`
and `runc run --detach` on a bundle of the same rootfs.  While they run, every
process of the container's process tree that is not the command itself is
the runtime's cost: pykvm keeps its monitor (the command's parent outside the
PID namespace) and its init (PID 1 inside, the command's parent); runc keeps
nothing (the command is PID 1, its parent is whoever ran runc), which is why
the engines above runc add a supervisor of their own (Podman's conmon,
containerd's shim).  Reports PSS per container (smaps_rollup; shared pages are
split among the processes that map them, so N containers share the
interpreter's code) and the processes counted.  Goal: <= 10 MB PSS per
container for pykvm.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
from hostmem import KIB, pss_kib  # noqa: E402  (tests/hostmem.py)

SLEEP = "600"
SETTLE_S = 10.0


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def supervisors(sleeper: int) -> list[int]:
    """The pykvm processes between the command and the host: its parents named pykvm-*."""
    chain, pid = [], sleeper
    while True:
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        if parent <= 1 or not Path(f"/proc/{parent}/comm").read_text().startswith(("pykvm", "python")):
            return chain
        chain.append(parent)
        pid = parent


def running_sleepers() -> set[int]:
    return {p for p in (int(d) for d in os.listdir("/proc") if d.isdigit())
            if command_line(p) == f"sleep {SLEEP}"}


def pykvm_row(rootfs: Path, n: int, env: dict) -> tuple[list[float], list[str]]:
    ids, before = [], running_sleepers()        # a stray `sleep 600` of someone else's is not ours
    try:
        for i in range(n):
            done = subprocess.run([sys.executable, "-m", "pykvm", "container", "run", "-d",
                                   "--network", "none", "--rootfs", str(rootfs), "sleep", SLEEP],
                                  env=env, capture_output=True, text=True, timeout=60, check=True)
            ids.append(done.stdout.strip())
        deadline = time.monotonic() + SETTLE_S
        sleepers = []
        while time.monotonic() < deadline and len(sleepers) < n:
            sleepers = sorted(running_sleepers() - before)
            time.sleep(0.2)
        per_container, names = [], set()
        for sleeper in sleepers:
            chain = supervisors(sleeper)
            names.update(Path(f"/proc/{p}/comm").read_text().strip() for p in chain)
            per_container.append(sum(pss_kib(p) for p in chain) / KIB)
        return per_container, sorted(names)
    finally:
        for cid in ids:
            subprocess.run([sys.executable, "-m", "pykvm", "container", "rm", "-f", cid], env=env,
                           capture_output=True, timeout=60)


def runc_row(bundle: Path, n: int, root: Path) -> tuple[list[float], list[str]]:
    names = [f"bench-mem-{os.getpid()}-{i}" for i in range(n)]
    started = []
    try:
        for name in names:
            subprocess.run(["runc", "--root", str(root), "run", "--detach", "--bundle", str(bundle), name],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=60, check=True)
            started.append(name)
        per_container = []
        for name in names:
            state = json.loads(subprocess.run(["runc", "--root", str(root), "state", name],
                                              capture_output=True, text=True, check=True).stdout)
            per_container.append(sum(pss_kib(p) for p in supervisors(state["pid"])) / KIB)
        return per_container, []
    finally:
        for name in started:
            subprocess.run(["runc", "--root", str(root), "delete", "--force", name], capture_output=True,
                           timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (namespaces, mounts, cgroups)")
    from bench_container_launch import byte_compile_pykvm, make_bundle

    byte_compile_pykvm()
    with tempfile.TemporaryDirectory(prefix="pykvm-bench-mem-") as tmp:
        tmp = Path(tmp)
        bundle = make_bundle(tmp)
        spec = json.loads((bundle / "config.json").read_text())
        spec["process"]["args"] = ["sleep", SLEEP]
        (bundle / "config.json").write_text(json.dumps(spec))
        env = {**os.environ, "PYKVM_STATE_ROOT": str(tmp / "state")}
        rows = {"pykvm container run -d": pykvm_row(bundle / "rootfs", args.containers, env),
                "runc run --detach": runc_row(bundle, args.containers, tmp / "runc")}
    print(f"host memory per running container outside its command, {args.containers} containers "
          "each, PSS MiB (min / median / max)")
    for name, (values, processes) in rows.items():
        if not values:
            print(f"{name:<24} no container found running")
            continue
        print(f"{name:<24} {min(values):6.2f} {statistics.median(values):6.2f} {max(values):6.2f}"
              f"   processes: {', '.join(processes) or 'none (the command is PID 1 under its caller)'}")
    print("goal for pykvm: <= 10 MB PSS per container")


if __name__ == "__main__":
    main()
