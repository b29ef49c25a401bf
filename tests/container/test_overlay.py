"""Image-style runs: layers stacked with overlayfs, a throw-away upper layer, and the
Dockerfile RUN entry point (marker `root`)."""
from __future__ import annotations

import os

import pytest
from clitools import containers_in

from pykvm.container.image.runconfig import run_build_step
from pykvm.container.runtime.config import RunConfig
from pykvm.container.runtime.launcher import launch
from pykvm.container.runtime.state import StateStore

pytestmark = pytest.mark.root


@pytest.fixture
def layers(tmp_path, rootfs_factory):
    base = rootfs_factory(tmp_path / "base")
    top = tmp_path / "top"
    (top / "etc").mkdir(parents=True)
    (top / "etc" / "motd").write_text("from the top layer\n")
    return base, top


def test_overlay_of_layers_with_a_private_upper(layers, state_root, capfd):
    base, top = layers
    store = StateStore(state_root)
    cfg = RunConfig(args=["sh", "-c", "cat /etc/motd; echo new > /etc/motd; echo made > /new; cat /etc/motd"],
                    lower_dirs=[str(top), str(base)], remove=False)
    container = launch(cfg, store=store)
    result = container.wait()
    assert result.exit_code == 0
    assert capfd.readouterr().out == "from the top layer\nnew\n"
    assert (top / "etc" / "motd").read_text() == "from the top layer\n", "lower layers are never written"
    assert not (base / "new").exists()
    upper = state_root / container.id / "upper"
    assert (upper / "new").read_text() == "made\n" and (upper / "etc" / "motd").read_text() == "new\n"
    mounts = open("/proc/self/mountinfo").read()
    assert str(state_root) not in mounts, "the overlay lived and died in the container's mount namespace"
    store.remove(container.id)


def test_missing_layer_is_an_error(tmp_path):
    from pykvm.errors import ContainerError
    with pytest.raises(ContainerError, match="image layer .* does not exist"):
        launch(RunConfig(args=["true"], lower_dirs=[str(tmp_path / "gone")]))


def test_run_build_step_writes_into_the_rootfs(fresh_rootfs, state_root, capfd):
    assert run_build_step(str(fresh_rootfs), ["sh", "-c", "echo built > /tmp/artifact; id -u"],
                          env=["PATH=/bin"], cwd="/tmp", user="user") == 0
    assert (fresh_rootfs / "tmp" / "artifact").read_text() == "built\n"
    assert capfd.readouterr().out == "1000\n"
    assert run_build_step(str(fresh_rootfs), ["sh", "-c", "exit 4"]) == 4
    assert containers_in(state_root) == []
