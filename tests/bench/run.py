"""`make bench`: run every benchmark script in tests/bench/ (bench_*.py), one after another.

Each script measures pykvm side by side with its peer (a C KVM client, QEMU,
runc, skopeo) in the same run and prints min/median/max and ratios.
Benchmarks report; they never fail on a number.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    only = sys.argv[1:]
    failed = 0
    for script in scripts:
        if only and not any(name in script.name for name in only):
            continue
        print(f"\n=== {script.name}", flush=True)
        result = subprocess.run([sys.executable, str(script)])
        failed += result.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
