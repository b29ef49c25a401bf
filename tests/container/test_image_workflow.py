"""The seed's container workflow end to end: Describe -> Package -> Share -> Run.

Dockerfile with a RUN step -> `pykvm container build` -> `push` to a real
registry -> `rmi` -> `pull` -> `run` -> the expected output.  All through the
CLI, as a user would type it.  Needs the runtime for RUN and run;
`state_root` (the runtime's conftest) keeps its container state private.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest
from image_fixtures import bundled_context, registry, run_pykvm, store  # noqa: F401  (fixtures)

pytestmark = pytest.mark.root


def test_build_push_rmi_pull_run(store, registry, tmp_path, state_root):
    assert run_pykvm("container", "build", "-q", "-t", "busybox", str(bundled_context(tmp_path, "busybox")))[0] == 0
    ctx = tmp_path / "app"
    ctx.mkdir()
    (ctx / "greet.sh").write_text('echo "$GREETING from $(cat /etc/built-by), cwd $(pwd)"\n')
    (ctx / "Dockerfile").write_text("""FROM busybox
ENV GREETING="Hello, seed"
COPY greet.sh /app/greet.sh
RUN echo "a RUN step" > /etc/built-by && chmod +x /app/greet.sh
WORKDIR /app
CMD ["/bin/sh", "/app/greet.sh"]
""")
    status, _, err = run_pykvm("container", "build", "-t", "seed:1", str(ctx))
    assert status == 0, err
    remote = f"{registry.host}/seed/app:1"
    status, _, err = run_pykvm("container", "push", "seed:1", remote)
    assert status == 0, err
    assert run_pykvm("container", "rmi", "seed:1", "busybox")[0] == 0
    assert run_pykvm("container", "images", "-q")[1] == "", "nothing left locally"
    status, out, err = run_pykvm("container", "pull", remote)
    assert status == 0, err
    status, out, err = run_pykvm("container", "run", "--rm", remote)
    assert status == 0, err
    assert out == "Hello, seed from a RUN step, cwd /app\n"


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_we_run_an_image_skopeo_pushed(store, registry, tmp_path, state_root):
    assert run_pykvm("container", "build", "-q", "-t", "hello", str(bundled_context(tmp_path, "hello")))[0] == 0
    remote = f"{registry.host}/sk/hello:v1"
    copy = subprocess.run(["skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false", "--format", "v2s2",
                           f"oci:{store.layout}:hello:latest", f"docker://{remote}"], capture_output=True, text=True)
    assert copy.returncode == 0, copy.stderr
    assert run_pykvm("container", "rmi", "hello")[0] == 0
    status, _, err = run_pykvm("container", "pull", remote)
    assert status == 0, err
    status, out, err = run_pykvm("container", "run", "--rm", remote)
    assert status == 0, err
    assert out.startswith("Hello from pykvm!\n")


def test_rmi_refuses_an_image_a_container_uses(store, tmp_path, state_root):
    """Docker's conflict: the last tag of a container's image stays unless --force, and even
    then gc keeps the unpacked layers the container's overlay is standing on."""
    assert run_pykvm("container", "build", "-q", "-t", "busybox", str(bundled_context(tmp_path, "busybox")))[0] == 0
    status, cid, err = run_pykvm("container", "run", "-d", "busybox", "sleep", "30")
    assert status == 0, err
    cid = cid.strip()
    layers = sorted(p.name for p in store.layers_dir.iterdir())
    try:
        status, out, err = run_pykvm("container", "rmi", "busybox")
        assert status == 1 and err.count("\n") == 1, err
        assert err.startswith('pykvm: error: conflict: unable to remove repository reference "busybox" '
                              f"(must force) - container {cid} is using its referenced image"), err
        assert run_pykvm("container", "images", "-q")[1] != "", "the tag is still there"
        assert run_pykvm("container", "tag", "busybox", "bb:2")[0] == 0
        assert run_pykvm("container", "rmi", "bb:2")[0] == 0, "another tag: only untagged"
        assert run_pykvm("container", "stop", "-t", "0", cid)[0] == 0
        status, _, err = run_pykvm("container", "rmi", "busybox")
        assert status == 1 and "conflict" in err, "a stopped container counts too (Docker)"
        status, out, err = run_pykvm("container", "rmi", "-f", "busybox")
        assert status == 0 and out.startswith("Untagged: busybox:latest"), err
        assert sorted(p.name for p in store.layers_dir.iterdir()) == layers, "gc kept the container's layers"
    finally:
        run_pykvm("container", "rm", "-f", cid)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "Dockerfile").write_text("FROM scratch\nLABEL a=b\n")
    assert run_pykvm("container", "build", "-q", "-t", "x", str(tmp_path / "x"))[0] == 0
    assert run_pykvm("container", "rmi", "x")[0] == 0
    assert list(store.layers_dir.iterdir()) == [], "once the container is gone, gc frees its layers"
