"""The seed's container workflow end to end: Describe -> Package -> Share -> Run.

Dockerfile with a RUN step -> `pykvm container build` -> `push` to a real
registry -> `rmi` -> `pull` -> `run` -> the expected output.  All through the
CLI, as a user would type it.  Needs the runtime (issue 6) for RUN and run;
`state_root` (the runtime's conftest) keeps its container state private.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest
from image_fixtures import bundled_context, registry, run_pykvm, store  # noqa: F401  (fixtures)

pytestmark = pytest.mark.root


def runtime_or_skip():
    return pytest.importorskip("pykvm.container.runtime", reason="the container runtime (issue 6) is not merged")


def test_build_push_rmi_pull_run(store, registry, tmp_path, state_root):
    runtime_or_skip()
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
    runtime_or_skip()
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
