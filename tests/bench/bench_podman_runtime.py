"""Benchmark: `podman run --rm busybox true` with pykvm-runc, runc and crun as the runtime.

    python tests/bench/bench_podman_runtime.py [RUNS] [NAME=PROGRAM ...]    (root; default 20 runs)

NAME=PROGRAM adds a row: another runtime program, such as the pykvm-runc of another
checkout's venv, so that two versions are compared in one interleaved run (its .pyc files
are not written here: `python -m compileall -q ITS_CHECKOUT/pykvm` first).

Rows, each min / median / max over RUNS runs, wall clock, milliseconds: the whole
`podman run --rm` (Podman's own work, conmon, and the runtime's create, start and delete),
so the runtime's share is what differs between rows.  Goal: pykvm-runc / runc <= 1.2.

Fair play:
  * One Podman configuration for everyone, in a temporary directory (vfs storage, cgroupfs,
    no network, no events log), and one image: the bundled busybox, built by pykvm and
    loaded with `podman load`.
  * Every row runs in a private mount namespace with /sys/fs/cgroup/unified unmounted:
    crun refuses this machine's hybrid cgroups (v1 controllers plus an empty cgroup2) and
    accepts plain v1; runc and pykvm-runc use v1 either way, and the namespace costs every
    row the same `unshare` and `umount`.
  * Every row gets Podman's default seccomp profile, as a plain `podman run` does (each
    runtime compiles it with libseccomp; pykvm-runc and crun keep the compiled program for
    the next container, runc compiles it every time), and the same --ulimit values (the
    host's hard RLIMIT_NOFILE is below Podman's default).
  * Rows are interleaved, the starting row rotating every round, after two untimed runs of
    each.  pykvm's modules are byte-compiled first (PYTHONDONTWRITEBYTECODE may be set, and
    an installed package has its .pyc files).

Measured 2026-12-03 on this 2-core machine, the hardware lane running beside it (load
average 2-3), 20 interleaved runs each (min / median / max, ms), in two runs minutes apart.
`before` is the build before start and delete left out json, re and signal and before
compiled seccomp filters were kept (another checkout, through a shell wrapper that calls
its main(); `after` is this build through the same wrapper):

    runc                   263 /  349 /  425        409 /  487 /  752
    pykvm-runc             330 /  397 /  563        426 /  529 /  632
    crun                   247 /  303 /  460        351 /  415 /  559
    python -c pass          16 /   18 /   26         11 /   17 /   26
    before                 329 /  456 /  583        487 /  582 /  692
    after                                           441 /  531 /  619
    pykvm-runc / runc      1.14x: goal <= 1.2x met  1.09x: met
    before / runc          1.31x                    1.19x

Each call by hand on the same machine, idle (wall ms, 5 runs; runc's under Podman through
a logging wrapper): create 89-95 -> 76-86 with Podman's profile (64-69 without one),
start 28-30 -> 17-23, delete 29-33 -> 21-25; runc's create ~47, start ~11, delete ~9.
What is left is three Python starts (~16 ms each, `python -c pass`), and in `create` the
json, re, dataclasses and inspect it imports (~20 ms together) and the launch.
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WARMUP = 2
GOAL_RATIO = 1.2              # pykvm-runc / runc
IMAGE = "localhost/busybox:bench"
RUN_OPTS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "container"))
from engine_fixtures import podman_config  # noqa: E402  (tests/container/engine_fixtures.py)

from bench_container_launch import byte_compile_pykvm, interleaved  # noqa: E402
PYTHON_ROW = "python -c pass"  # not a runtime: Python's own start, paid by each pykvm-runc call
CALLS_PER_RUN = 3             # podman run --rm calls the runtime 3 times: create, start, delete


def load_image(tmp: Path, env: dict) -> None:
    """Build guests/containers/busybox with pykvm, save it, `podman load` it."""
    subprocess.run(["make", "-s", "-C", str(ROOT / "guests" / "containers")], check=True)
    pykvm_env = {**os.environ, "PYKVM_STORE": str(tmp / "store")}
    name = IMAGE.removeprefix("localhost/")
    subprocess.run([sys.executable, "-m", "pykvm", "container", "build", "-q", "-t", name,
                    str(ROOT / "guests" / "containers" / "busybox")], env=pykvm_env, check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "pykvm", "container", "save", "-o", str(tmp / "bb.tar"), name],
                   env=pykvm_env, check=True)
    subprocess.run(["podman", "load", "-q", "-i", str(tmp / "bb.tar")], env=env, check=True,
                   stdout=subprocess.DEVNULL)


def runtimes() -> dict[str, str]:
    found = {"runc": shutil.which("runc"), "pykvm-runc": str(Path(sys.executable).with_name("pykvm-runc")),
             "crun": shutil.which("crun")}
    rows = {name: path for name, path in found.items() if path and os.path.exists(path)}
    return rows | {PYTHON_ROW: PYTHON_ROW}


def run_once(runtime: str, env: dict) -> None:
    if runtime == PYTHON_ROW:
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        return
    podman = " ".join(["podman", "--runtime", runtime, "run", "--rm", *RUN_OPTS, IMAGE, "true"])
    subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                    f"umount /sys/fs/cgroup/unified 2>/dev/null; exec {podman}"],
                   env=env, check=True, stdin=subprocess.DEVNULL)


def report(times: dict[str, list[float]]) -> None:
    runs = len(next(iter(times.values())))
    print(f"podman run --rm busybox true, {runs} interleaved runs, milliseconds")
    print(f"{'':<16}{'min':>9}{'median':>9}{'max':>9}")
    med = {}
    for name, ms in times.items():
        med[name] = statistics.median(ms)
        print(f"{name:<16}{min(ms):9.1f}{med[name]:9.1f}{max(ms):9.1f}")
    for name in med.keys() - {"runc", "pykvm-runc", "crun", PYTHON_ROW}:
        if "runc" in med:
            print(f"{name} / runc   {med[name] / med['runc']:5.2f}x")
    if "runc" in med and "pykvm-runc" in med:
        ratio = med["pykvm-runc"] / med["runc"]
        print(f"pykvm-runc / runc   {ratio:5.2f}x   goal <= {GOAL_RATIO}x  "
              f"{'met' if ratio <= GOAL_RATIO else 'NOT met'}")
    if "crun" in med and "runc" in med:
        print(f"crun / runc         {med['crun'] / med['runc']:5.2f}x")
    if "runc" in med and "pykvm-runc" in med:
        print(f"pykvm-runc - runc   {med['pykvm-runc'] - med['runc']:+7.1f} ms, of which Python's start "
              f"({CALLS_PER_RUN} calls x {med[PYTHON_ROW]:.1f}) {CALLS_PER_RUN * med[PYTHON_ROW]:.1f} ms")


def main() -> None:
    extra_rows = dict(arg.split("=", 1) for arg in sys.argv[1:] if "=" in arg)    # NAME=PROGRAM
    numbers = [arg for arg in sys.argv[1:] if "=" not in arg]
    runs = int(numbers[0]) if numbers else 20
    if os.geteuid() != 0 or not shutil.which("podman"):
        sys.exit("needs root and Podman (Debian packages podman, conmon)")
    rows = runtimes() | extra_rows
    byte_compile_pykvm()          # pykvm-runc with its .pyc files, as an installed package has them
    with tempfile.TemporaryDirectory(prefix="pykvm-bench-podman-") as tmp:
        tmp = Path(tmp)
        env = podman_config(tmp)
        load_image(tmp, env)
        for _ in range(WARMUP):
            for runtime in rows.values():
                run_once(runtime, env)
        report(interleaved({name: lambda i, r=runtime: run_once(r, env) for name, runtime in rows.items()},
                           runs))


if __name__ == "__main__":
    main()
