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
  * Every row asks for no seccomp filter (pykvm-runc refuses linux.seccomp where it cannot
    apply it) and for the same --ulimit values (the host's hard RLIMIT_NOFILE is below
    Podman's default).
  * Rows are interleaved, the starting row rotating every round, after two untimed runs of
    each.  pykvm's modules are byte-compiled first (PYTHONDONTWRITEBYTECODE may be set, and
    an installed package has its .pyc files).

Measured 2026-12-02 on this 2-core machine at load average 7-9 (other jobs), 20
interleaved runs each (min / median / max, ms).  This benchmark:

    runc                   478 / 1175 / 2815
    pykvm-runc             855 / 1488 / 2923     1.27x runc: goal <= 1.2x NOT met
    crun                   538 /  904 / 2064     0.77x runc
    python -c pass          16 /   43 /  198

and, minutes later, the same Podman runs through a logging wrapper around each runtime,
with a fourth row by hand: pykvm-runc as it was before its calls left out dataclasses,
pathlib, threading and the editable install's import finder (a second venv):

    runc                   659 / 1018 / 1808
    pykvm-runc             886 / 1332 / 2949     1.31x runc
    pykvm-runc, before    1172 / 1473 / 3407     1.45x runc
    crun                   609 /  881 / 1757     0.87x runc

At that load each runnable process gets about a quarter of a CPU, so a call's wall clock
is about four times its CPU time, and the rows differ by the runtime's CPU.  Per call under
Podman, wall ms / CPU ms (user+sys, in the 10 ms steps of /usr/bin/time), medians:

                  create        start         delete
    runc          76 / 10       20 /  0       16 /  0
    pykvm-runc   214 / 60       78 / 20      118 / 30
    before       276 / 65      162 / 40      146 / 45

Measured 2026-12-03 at load average 2-4, 20 interleaved runs, with a row for the build
before cgroups.py left pathlib (`pykvm-runc-before=OTHER_CHECKOUT/.venv/bin/pykvm-runc`):

    runc                   233 /  266 /  319
    pykvm-runc             295 /  361 /  414     1.36x runc: goal <= 1.2x NOT met
    pykvm-runc-before      295 /  346 /  444     1.30x runc
    crun                   211 /  250 /  377     0.94x runc
    python -c pass          11 /   13 /   18

and, minutes later, at load average 5-7:

    runc                   564 /  987 / 1835
    pykvm-runc             636 / 1303 / 1990     1.32x runc: goal <= 1.2x NOT met
    pykvm-runc-before      834 / 1180 / 2128     1.19x runc
    crun                   494 /  926 / 1789     0.94x runc
    python -c pass          12 /   25 /  110

At low load Podman's own part shrinks more than Python's starts, and the ratio is worse
than at load 8.  The two pykvm-runc rows differ by less than 20 runs resolve (here
`before` came out ahead both times, by 4% and 10%, at the same minimum once): the cut is
~4 ms of CPU in `create` and in `delete` (min of 21 runs, each call's modules imported).
Under Podman at load 5, 12 interleaved runs, CPU ms per call (bash's `times` in a logging
wrapper), median: create 70.5 before -> 62.5, delete 39 -> 35, and start, whose code did
not change, 28.5 -> 33.5: the noise is as large as the cut.
The gap to runc, ~95 ms, is per call under Podman (wall ms, median of 8 at this load):
create 65 against runc's 20, start 20 against 0-5, delete 20 against 0-5; of it ~38 ms is
three Python starts, ~20-25 three imports of json (with re and enum), ~13 create's
dataclasses, and the rest pykvm's own modules and create's launch (its two forks, ~15 ms).

What a pykvm-runc call still costs before it does any work, CPU ms (python -X importtime,
minimum of 9 runs at that load): Python's own start ~8 and site.py ~3.5 (~15 while the
editable install was an import finder, which imported pathlib and importlib.util); json,
with the re and enum it imports, ~9: every call reads state.json.  `start` and `state` are
at that floor.  `delete` adds the cffi binding (~1; and added pathlib, ~5, while
cgroups.py worked on Path).  `create` adds dataclasses (~10 to import, inspect included,
and ~4 to build RunConfig, Mount and DeviceNode), pykvm's runtime modules and the launch
(and added pathlib).  So
~25 ms of each call is Python's start and json, three calls per container, against runc's
5-15 ms of CPU per call: 1.2x is not met at this load.
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
RUN_OPTS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
            "--security-opt", "seccomp=unconfined"]
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
