"""Benchmark: launching `true` in a busybox container, pykvm vs runc, same bundle.

    python tests/bench/bench_container_launch.py [RUNS]      (root; default 20 runs)

Three rows, each min / median / max over RUNS launches, wall clock:
  runc run              `runc run` on the bundle (a Go binary: its startup included)
  pykvm in-process      pykvm.container.runtime.oci_run(): library call to exit, same bundle
  pykvm CLI             `python -m pykvm container oci run`: Python startup + imports + launch
  python -c pass        Python's own startup, the floor under any Python CLI
and the ratios the issue sets as goals: in-process / runc (goal <= 0.5) and
CLI - python startup (goal <= 15 ms).
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

def make_bundle(where: Path) -> Path:
    """`runc spec` + a busybox rootfs (`busybox --install -s`) running `true`."""
    from pykvm.container.rootfs import make_busybox_rootfs
    bundle = where / "bundle"
    make_busybox_rootfs(bundle / "rootfs")
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["true"]
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


def timed(fn, runs: int) -> list[float]:
    out = []
    for i in range(runs):
        t = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t) * 1000)
    return out


def row(name: str, ms: list[float]) -> float:
    med = statistics.median(ms)
    print(f"{name:<22}{min(ms):9.1f}{med:9.1f}{max(ms):9.1f}")
    return med


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    if os.geteuid() != 0 or not shutil.which("runc"):
        sys.exit("needs root and runc (Debian package runc)")
    from pykvm.container.runtime import oci_run
    from pykvm.container.state import StateStore

    with tempfile.TemporaryDirectory(prefix="pykvm-bench-") as tmp:
        tmp = Path(tmp)
        bundle = make_bundle(tmp)
        store = StateStore(tmp / "state")
        env = {**os.environ, "PYKVM_STATE_ROOT": str(tmp / "state-cli")}

        def runc(i):
            subprocess.run(["runc", "--root", str(tmp / "runc"), "run", "-b", str(bundle), f"r{i}"],
                           check=True, stdin=subprocess.DEVNULL)

        def inproc(i):
            assert oci_run(f"p{i}", str(bundle), store).exit_code == 0

        def cli(i):
            subprocess.run([sys.executable, "-m", "pykvm", "container", "oci", "run", "-b", str(bundle),
                            f"c{i}"], check=True, env=env, stdin=subprocess.DEVNULL)

        def python(_):
            subprocess.run([sys.executable, "-c", "pass"], check=True)

        for fn in (runc, inproc, cli, python):          # one warm-up each (page cache, pyc files)
            fn(runs + 1)
        print(f"launch `true` in a busybox container, {runs} runs, milliseconds")
        print(f"{'':<22}{'min':>9}{'median':>9}{'max':>9}")
        t_runc = row("runc run", timed(runc, runs))
        t_in = row("pykvm in-process", timed(inproc, runs))
        t_cli = row("pykvm CLI", timed(cli, runs))
        t_py = row("python -c pass", timed(python, runs))
        print(f"in-process / runc      {t_in / t_runc:.2f}x   (goal <= 0.5x)")
        print(f"CLI / runc             {t_cli / t_runc:.2f}x")
        print(f"CLI - python startup   {t_cli - t_py:+.1f} ms (goal <= +15 ms)")


if __name__ == "__main__":
    main()
