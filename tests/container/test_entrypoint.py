"""`pykvm container run --entrypoint`: Docker's rules, on an image built with ENTRYPOINT and CMD."""
from __future__ import annotations

import pytest
from image_fixtures import bundled_context, run_pykvm, store  # noqa: F401  (fixtures)

pytestmark = pytest.mark.root


def test_entrypoint_replaces_the_image_s_and_drops_its_cmd(store, tmp_path, state_root):
    assert run_pykvm("container", "build", "-q", "-t", "busybox", str(bundled_context(tmp_path, "busybox")))[0] == 0
    ctx = tmp_path / "ep"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text('FROM busybox\nENTRYPOINT ["echo", "ep:"]\nCMD ["cmd-default"]\n')
    assert run_pykvm("container", "build", "-q", "-t", "ep", str(ctx))[0] == 0

    def run(*opts):
        status, out, err = run_pykvm("container", "run", "--rm", *opts)
        return status, out, err.strip()
    assert run("ep") == (0, "ep: cmd-default\n", "")
    assert run("ep", "given") == (0, "ep: given\n", "")
    assert run("--entrypoint", "hostname", "--hostname", "h1", "ep") == (0, "h1\n", ""), \
        "the image's CMD is not passed to a new entrypoint"
    assert run("--entrypoint", "echo", "ep", "a", "b") == (0, "a b\n", "")
    status, out, err = run("--entrypoint", "", "ep")
    assert (status, out) == (127, "") and err.startswith("pykvm: error: cmd-default: command not found"), \
        "\"\" clears ENTRYPOINT only: the image's CMD is the command"
    assert run("--entrypoint", "", "ep", "echo", "no-ep") == (0, "no-ep\n", "")
    status, _, err = run("--entrypoint", "no-such-prog", "ep")
    assert status == 127 and err.startswith("pykvm: error: no-such-prog: command not found"), err
    assert run_pykvm("container", "ps", "-a", "-q")[1] == ""


def test_entrypoint_with_a_rootfs(pykvm, busybox_rootfs):
    r = pykvm("container", "run", "--rm", "--entrypoint", "echo", "--rootfs", busybox_rootfs, "x", "y")
    assert (r.returncode, r.stdout) == (0, "x y\n"), r.stderr
