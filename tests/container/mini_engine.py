"""A very small engine: what conmon and containerd-shim do around a runtime program, in a
process of its own (so that it can be a subreaper without adopting the test runner's orphans).

    python mini_engine.py RUNTIME ROOT BUNDLE ID SIGNAL|-     (our files go in ROOT.engine/)

1. prctl(PR_SET_CHILD_SUBREAPER): the container's process, orphaned when `create` exits,
   becomes our child;
2. RUNTIME --root ROOT create --bundle BUNDLE --pid-file PIDFILE ID, then `state`;
3. `start`, `state`; with SIGNAL, `kill ID SIGNAL`;
4. waitpid(the PID from PIDFILE): the exit status that only a parent can read; `state`;
5. `delete`, then `state` once more (an error now).

Prints one JSON object: every step's exit status, the states, the PID file and the wait
status, for the test to compare between runtimes.
"""
from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36        # <linux/prctl.h>


def main() -> None:
    runtime, root, bundle, cid, sig = sys.argv[1:6]
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit(f"prctl: {os.strerror(ctypes.get_errno())}")
    work = root + ".engine"
    os.makedirs(work, exist_ok=True)
    pid_file = os.path.join(work, f"{cid}.pid")
    log = os.path.join(work, f"{cid}.log")

    def call(*args) -> dict:
        """Output to files, not pipes: the container inherits create's stdio and holds it
        open, so a pipe's reader would wait for the container's end (conmon reads its
        pipes as they come, and does not wait for their end)."""
        with open(f"{log}.out", "w+") as out, open(f"{log}.err", "w+") as err:
            r = subprocess.run([runtime, "--root", root, "--log", log, "--log-format", "json", *args],
                               stdout=out, stderr=err, timeout=60, stdin=subprocess.DEVNULL)
            out.seek(0)
            err.seek(0)
            return {"status": r.returncode, "stdout": out.read(), "stderr": err.read()}

    def state() -> dict:
        r = call("state", cid)
        return json.loads(r["stdout"]) if r["status"] == 0 else r

    out = {"create": call("create", "--bundle", bundle, "--pid-file", pid_file, cid)}
    with open(pid_file) as f:
        out["pid_file"] = f.read()
    pid = int(out["pid_file"])
    out["created"] = state()
    out["adopted"] = _parent(pid) == os.getpid()          # not the runtime's, not a monitor's
    out["start"] = call("start", cid)
    out["running"] = state()
    if sig != "-":
        out["kill"] = call("kill", cid, sig)
    _, status = os.waitpid(pid, 0)
    out["wait"] = 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    out["stopped"] = state()
    out["kill_stopped"] = call("kill", cid, "KILL")
    out["delete"] = call("delete", cid)
    out["deleted"] = state()
    with open(log) as f:
        out["log"] = [json.loads(line) for line in f]
    print(json.dumps(out))


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[1])


if __name__ == "__main__":
    main()
