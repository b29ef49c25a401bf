"""A full disk during a pull or a build: one error line, a store that stays consistent
(`system check` finds nothing) and nothing half-written visible (`images` lists nothing new).

The store is an 8 MiB tmpfs; the image has a 12 MiB layer of random bytes (gzip cannot
shrink it), so the disk fills in the middle of the layer's download or creation.
"""
from __future__ import annotations

import os
import random
import subprocess

import pytest

from image_fixtures import registry, run_pykvm  # noqa: F401  (registry: a fixture)

pytestmark = [pytest.mark.root, pytest.mark.slow]

SMALL = "8m"                 # the store's tmpfs
BIG = 12 << 20               # bytes in the image's one layer


@pytest.fixture
def small_store(tmp_path):
    path = tmp_path / "small"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL}", "pykvm-test", str(path)], check=True)
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def big_context(tmp_path):
    context = tmp_path / "context"
    context.mkdir()
    (context / "big").write_bytes(random.Random(7).randbytes(BIG))
    (context / "Dockerfile").write_text("FROM scratch\nCOPY big /big\n")
    return context


def assert_one_line_and_consistent(status: int, err: str, env: dict) -> None:
    assert status == 1, err
    lines = err.splitlines()            # a pull's progress lines, then the error: the last line
    assert lines[-1].startswith("pykvm: error: no space left on device"), err
    assert err.count("pykvm: error:") == 1 and "Traceback" not in err, err
    status, out, err = run_pykvm("container", "system", "check", env=env)
    assert (status, out) == (0, "no problems found\n"), out + err
    assert run_pykvm("container", "images", "-q", env=env)[1] == ""


def test_a_pull_that_fills_the_disk_ends_in_one_line_and_keeps_the_store_consistent(
        registry, small_store, big_context, tmp_path):
    remote = f"{registry.host}/big:1"
    seed = {"PYKVM_STORE": str(tmp_path / "seed"), "PYKVM_STATE_ROOT": str(tmp_path / "state")}
    assert run_pykvm("container", "build", "-q", "-t", remote, str(big_context), env=seed)[0] == 0
    assert run_pykvm("container", "push", remote, env=seed)[0] == 0
    env = {**seed, "PYKVM_STORE": str(small_store)}
    status, _, err = run_pykvm("container", "pull", remote, env=env)
    assert_one_line_and_consistent(status, err, env)
    assert os.listdir(small_store / "tmp") == []             # the partial download went with the error


def test_a_build_that_fills_the_disk_ends_in_one_line_and_keeps_the_store_consistent(
        small_store, big_context, tmp_path):
    env = {"PYKVM_STORE": str(small_store), "PYKVM_STATE_ROOT": str(tmp_path / "state")}
    status, _, err = run_pykvm("container", "build", "-t", "big:1", str(big_context), env=env)
    assert_one_line_and_consistent(status, err, env)
    assert os.listdir(small_store / "tmp") == []
