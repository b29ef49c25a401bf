"""`make bench`: run every benchmark script in tests/bench/ (bench_*.py), one after another.

Each script measures pykvm side by side with its peer (a C KVM client, QEMU,
runc, skopeo) in the same run and prints min/median/max and ratios.
Benchmarks report; they never fail on a number.

    python tests/bench/run.py [NAME ...] [-- SCRIPT_ARGS]

NAME picks the scripts whose file name contains it; the words after -- go to each
script picked (e.g. `run.py vm_network -- --guest linux --runs 10`).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    only, script_args = split_at_dashes(sys.argv[1:])
    failed = 0
    for script in scripts:
        if only and not any(name in script.name for name in only):
            continue
        print(f"\n=== {script.name}", flush=True)
        result = subprocess.run([sys.executable, str(script), *script_args])
        failed += result.returncode != 0
    return 1 if failed else 0


def split_at_dashes(argv: list[str]) -> tuple[list[str], list[str]]:
    """(names, the script's arguments): the words before and after the first --."""
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


if __name__ == "__main__":
    sys.exit(main())
