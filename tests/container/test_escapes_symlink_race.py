"""Symlink races on mount targets, as runc's CVE-2019-19921 and CVE-2021-30465 taught them.

A container that shares a volume with the bundle's rootfs can swap a mount
target for a symlink to "/" between the runtime's check of the path and its
mount(2) on it.  Here a helper process keeps exchanging a directory in the
rootfs with a symlink to "/" (renameat2 RENAME_EXCHANGE, atomic, as the
CVE-2021-30465 exploit does) while pykvm starts containers whose config
bind-mounts a volume there.  Whatever each start ends in (success, or one
clean refusal), nothing is mounted or created on the host outside the rootfs,
and inside the container the target never shows the host's root.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest


STARTS = 30                     # containers started while the helper flips the target
FLIP_SECONDS = 300              # the helper's own bound, should the test die before stopping it

FLIPPER = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
first, second, stop, seconds = sys.argv[1].encode(), sys.argv[2].encode(), sys.argv[3], float(sys.argv[4])
AT_FDCWD, RENAME_EXCHANGE = -100, 2
end, swaps = time.monotonic() + seconds, 0
print("flipping", flush=True)
while not (swaps % 256 == 0 and (os.path.exists(stop) or time.monotonic() > end)):
    if libc.renameat2(AT_FDCWD, first, AT_FDCWD, second, RENAME_EXCHANGE) != 0:
        sys.exit("renameat2: " + os.strerror(ctypes.get_errno()))
    swaps += 1
print(swaps, flush=True)
"""


def host_mounts(*near: str) -> list[str]:
    """The host's mount points at "/" or under `near` (the machine's other mounts come and go)."""
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return sorted(p for p in points if p == "/" or any(p.startswith(n) for n in near))


@pytest.mark.root
@pytest.mark.parametrize("flipped", ["target", "parent"])
def test_mount_target_swapped_for_a_symlink_to_root(pykvm, runc_bundle, tmp_path, state_root, flipped):
    """`target`: the mount target itself flips (dest /NAME); `parent`: a directory above it (/NAME/NAME-in)."""
    name = f"pykvm-race-{secrets.token_hex(4)}"          # unique: must never appear at the host's /
    rootfs = runc_bundle / "rootfs"
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "in-volume").write_text("volume")
    (rootfs / name).mkdir()
    dest = f"/{name}" if flipped == "target" else f"/{name}/{name}-in"   # /NAME-in: also never on the host
    if flipped == "parent":
        (rootfs / name / f"{name}-in").mkdir()
    (rootfs / f"{name}-link").symlink_to("/")
    host_marker = tmp_path / "host-marker"
    host_marker.write_text("host")
    script = (f"for p in {dest} {dest}{host_marker} {host_marker}; do "
              f"[ -e $p/host-marker ] || [ -e $p ] && [ $p != {dest} ] && echo SAW-HOST $p; done; "
              f"[ -e {dest}{tmp_path} ] && echo SAW-HOST-TREE; echo done")
    config = json.loads((runc_bundle / "config.json").read_text())
    config["process"]["args"] = ["sh", "-c", script]
    config["process"]["terminal"] = False
    config["mounts"].append({"destination": dest, "type": "bind", "source": str(volume), "options": ["rbind"]})
    (runc_bundle / "config.json").write_text(json.dumps(config))

    before = host_mounts(str(tmp_path), f"/{name}")
    stop = tmp_path / "stop"
    flipper = subprocess.Popen([sys.executable, "-c", FLIPPER, str(rootfs / name), str(rootfs / f"{name}-link"),
                                str(stop), str(FLIP_SECONDS)], stdout=subprocess.PIPE, text=True)
    outcomes: dict[str, int] = {}
    try:
        assert flipper.stdout.readline() == "flipping\n"
        for i in range(STARTS):
            r = pykvm("container", "oci", "run", "--bundle", runc_bundle, f"race-{i}", timeout=120)
            assert "Traceback" not in r.stderr, r.stderr
            assert "SAW-HOST" not in r.stdout, r.stdout
            if r.returncode == 0:
                assert r.stdout.endswith("done\n"), (r.stdout, r.stderr)
                outcomes["ran"] = outcomes.get("ran", 0) + 1
            else:
                lines = r.stderr.strip().splitlines()
                assert lines and lines[-1].startswith("pykvm: error: "), r.stderr
                outcomes["refused"] = outcomes.get("refused", 0) + 1
            pykvm("container", "oci", "delete", "--force", f"race-{i}")
    finally:
        stop.touch()
        out, _ = flipper.communicate(timeout=60)
    swaps = int(out.split()[-1])
    print(f"{flipped}: {STARTS} starts {outcomes}, {swaps} swaps")
    assert swaps > STARTS, "the helper did not race the starts"
    assert host_mounts(str(tmp_path), f"/{name}") == before, "a mount appeared on the host"
    assert not os.path.lexists(f"/{name}"), f"/{name} was created on the host"
    assert not os.path.lexists(f"/{name}-in"), f"/{name}-in was created on the host"
    assert sorted(os.listdir(volume)) == ["in-volume"]
