"""Ctrl-C while `pykvm` is still starting: one line and status 130, as at any later moment.

Found by the guest fuzzer's CLI samples (tests/fuzz/guest_fuzz.py): on a loaded
host, importing click takes long enough that a Ctrl-C lands inside an import,
and Python printed the KeyboardInterrupt's traceback.  Here an import hook
raises KeyboardInterrupt exactly where the signal would, so the test does not
depend on timing.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

CTRL_C_DURING_IMPORT = """
import builtins, runpy, sys
real_import = builtins.__import__
def ctrl_c_on(name, *args, **kwargs):
    if name == {module!r}:
        raise KeyboardInterrupt
    return real_import(name, *args, **kwargs)
builtins.__import__ = ctrl_c_on
sys.argv = ["pykvm", "--version"]
{start}
"""
STARTS = {
    "python -m pykvm": "runpy.run_module('pykvm', run_name='__main__')",
    "the pykvm script": "from pykvm.__main__ import run; run()",
}


@pytest.mark.parametrize("module", ["click", "pykvm.commands.lazy"])
@pytest.mark.parametrize("start", STARTS.values(), ids=STARTS.keys())
def test_ctrl_c_while_importing_the_cli_is_one_line(module, start):
    code = CTRL_C_DURING_IMPORT.format(module=module, start=start)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in done.stderr, done.stderr
    assert (done.returncode, done.stderr) == (130, "pykvm: interrupted\n"), done
