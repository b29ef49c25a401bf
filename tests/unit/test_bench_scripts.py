"""Every benchmark script in tests/bench/ at least imports: `make bench` runs them by path,
outside pytest's sys.path, so a helper they cannot find shows up only there."""
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(BENCH.glob("bench_*.py")) + sorted(BENCH.glob("profile_*.py"))
# Run as `make bench` runs them, with the module body but not main(): imports resolve or fail.
LOAD = ("import runpy, sys; sys.path.insert(0, {here!r}); "
        "runpy.run_path({script!r}, run_name='bench_import_check')")


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_the_script_imports_outside_pytest(script):
    code = LOAD.format(here=str(BENCH), script=str(script))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=BENCH.parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
