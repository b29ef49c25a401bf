"""Where a container launch spends its time: each step of oci_run(), timed in every process.

    python tests/bench/profile_container_launch.py [RUNS [BUNDLE]]   (root; default 25 runs)

The companion of bench_container_launch.py (same bundle: `runc spec`, busybox, `true`;
or give your own BUNDLE directory).
Wraps the runtime's steps with a timer (launcher, monitor and init each write their
own lines to one inherited file descriptor, so the timer survives pivot_root), runs
RUNS launches, and prints for every step its median duration and its median start,
in milliseconds from the oci_run() call, in the order they happen.  Steps overlap:
the launcher's `_follow_setup` spans the children's setup, and `wait` spans the
command, init's exit and the monitor's report.
"""
from __future__ import annotations

import functools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_container_launch import make_bundle  # noqa: E402

from pykvm.container.runtime import bundle as bundle_module  # noqa: E402
from pykvm.container.runtime import capabilities, cgroups, command, init, launcher, lifecycle, monitor  # noqa: E402
from pykvm.container.runtime import namespaces, rootfs  # noqa: E402
from pykvm.container.runtime.state import StateStore  # noqa: E402

# (owner, attribute) of every step worth a line; owners are modules or classes.  A function
# is wrapped where its caller looks it up: init.exec_command is command.py's, called by init.
STEPS = [
    (bundle_module, "load_bundle"), (StateStore, "create"), (StateStore, "save"),
    (launcher.Container, "_make_cgroup"), (cgroups.Cgroup, "join_files"),
    (launcher.Container, "_follow_setup"), (monitor, "join_user_and_pid"),
    (init, "join"), (init, "enter_namespaces"), (namespaces, "loopback_up"),
    (init, "build_root"), (rootfs, "mount_all"), (rootfs, "populate_dev"),
    (rootfs, "mount_cgroupfs"), (rootfs, "mask_paths"), (rootfs, "readonly_paths"),
    (rootfs, "pivot_into"), (init, "exec_command"), (command, "drop_privileges"),
    (capabilities, "drop_bounding"), (launcher.Container, "wait"), (cgroups.CgroupV1, "oom_kills"),
    (StateStore, "exit_info"), (launcher.Container, "cleanup"), (cgroups.Cgroup, "destroy"),
    (StateStore, "remove"),
]


def instrument(log_fd: int) -> None:
    """Replace every step by a wrapper that logs `name start_ns duration_ns` to log_fd.

    init and the command close every descriptor they do not keep
    (process.close_other_fds), which would close log_fd too and leave their
    steps untimed: where they look that function up, it keeps log_fd open."""
    for owner, attr in STEPS:
        name = f"{getattr(owner, '__name__', '?').rpartition('.')[2]}.{attr}"
        setattr(owner, attr, _timed(getattr(owner, attr), name, log_fd))
    for module in (init, command):
        close_others = module.close_other_fds
        module.close_other_fds = lambda keep, *args, close_others=close_others, **kwargs: \
            close_others({*keep, log_fd}, *args, **kwargs)


def _timed(fn, name: str, log_fd: int):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter_ns()      # CLOCK_MONOTONIC: comparable across processes
        try:
            return fn(*args, **kwargs)
        finally:
            try:
                os.write(log_fd, f"{name} {start} {time.perf_counter_ns() - start}\n".encode())
            except OSError:             # a step after its process closed every fd (init's last
                pass                    # privilege drop): not timed
    return wrapper


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 25
    if os.geteuid() != 0:
        sys.exit("needs root")
    with tempfile.TemporaryDirectory(prefix="pykvm-profile-") as tmp:
        tmp = Path(tmp)
        bundle = sys.argv[2] if len(sys.argv) > 2 else str(make_bundle(tmp))
        store = StateStore(tmp / "state")
        log_path = tmp / "steps.log"
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        instrument(log_fd)
        lifecycle.oci_run("warm-up", bundle, store)
        os.ftruncate(log_fd, 0)
        totals = []
        for i in range(runs):
            start = time.perf_counter_ns()
            os.write(log_fd, f"--- {start} 0\n".encode())
            lifecycle.oci_run(f"p{i}", bundle, store)
            totals.append((time.perf_counter_ns() - start) / 1e6)
            time.sleep(0.02)                # let the previous container's teardown settle
        report(log_path.read_text(), totals)


def report(log: str, totals: list[float]) -> None:
    durations, starts, t0 = {}, {}, 0
    for line in log.splitlines():
        name, start, duration = line.split()
        if name == "---":
            t0 = int(start)
            continue
        durations.setdefault(name, []).append(int(duration) / 1e6)
        starts.setdefault(name, []).append((int(start) - t0) / 1e6)
    print(f"oci_run() of `true`, {len(totals)} runs: min {min(totals):.1f}  "
          f"median {statistics.median(totals):.1f}  max {max(totals):.1f} ms")
    print(f"{'step':<34}{'calls':>6}{'start':>9}{'median':>9}{'min':>9}   (ms)")
    for name in sorted(durations, key=lambda n: statistics.median(starts[n])):
        calls = len(durations[name]) / len(totals)
        print(f"{name:<34}{calls:6.0f}{statistics.median(starts[name]):9.2f}"
              f"{statistics.median(durations[name]):9.3f}{min(durations[name]):9.3f}")


if __name__ == "__main__":
    main()
