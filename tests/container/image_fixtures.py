"""Fixtures and helpers shared by the image, build and registry tests.

Imported explicitly by those test modules (not a conftest.py, so the
runtime's tests keep their own).

    store      an empty ImageStore in a temp dir, also exported as $PYKVM_STORE for the CLI
    registry   Debian's docker-registry on 127.0.0.1:<free port>, storage in a temp dir
    make_tar   a tar archive (bytes) from a list of entries, for layer tests
    run_pykvm  run the CLI in a subprocess: (exit status, stdout, stderr)
"""
from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REGISTRY_BIN = "/usr/bin/docker-registry"
GUESTS = ROOT / "guests" / "containers"


@pytest.fixture
def store(tmp_path, monkeypatch):
    from pykvm.container.image.store import ImageStore
    path = tmp_path / "store"
    monkeypatch.setenv("PYKVM_STORE", str(path))
    return ImageStore(path)


@dataclass
class RegistryServer:
    host: str          # "127.0.0.1:PORT"
    storage: Path      # its filesystem storage root

    def blob_data(self, digest: str) -> Path:
        """Where docker-registry keeps a blob (distribution's filesystem layout)."""
        hexpart = digest.split(":")[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_registry(workdir: Path) -> tuple[subprocess.Popen, RegistryServer]:
    """Start docker-registry on 127.0.0.1:<free port> with storage under workdir; wait until it answers."""
    port = free_port()
    storage = workdir / "registry"
    config = workdir / "registry.yml"
    config.write_text(f"""version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
""")
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(f"http://127.0.0.1:{port}/v2/", proc)
    except BaseException:
        stop_registry(proc)
        raise
    return proc, RegistryServer(f"127.0.0.1:{port}", storage)


def stop_registry(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def registry(tmp_path):
    """A real OCI registry (docker/distribution 2.x from Debian) for one test."""
    if not os.path.exists(REGISTRY_BIN):
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    proc, server = start_registry(tmp_path)
    try:
        yield server
    finally:
        stop_registry(proc)


def _wait_for(url: str, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {proc.stderr.read().decode()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"docker-registry did not answer on {url}")


def make_tar(entries, gz: bool = False) -> bytes:
    """entries: (kind, name, arg) with kind file (arg: bytes), dir, symlink/hardlink (arg: target), chr."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, arg in entries:
            info = tarfile.TarInfo(name)
            info.mode = 0o755 if kind == "dir" else 0o644
            data = None
            if kind == "file":
                info.size = len(arg)
                data = io.BytesIO(arg)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, arg
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, arg
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            else:
                raise ValueError(kind)
            tar.addfile(info, data)
    return buf.getvalue()


def run_pykvm(*args, env: dict | None = None, input: bytes | None = None, timeout: float = 120):
    """Run `python -m pykvm ARGS` as a user would; returns (status, stdout, stderr) as text."""
    full_env = {**os.environ, **(env or {})}
    p = subprocess.run([sys.executable, "-m", "pykvm", *args], capture_output=True, env=full_env,
                       input=input, timeout=timeout)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def bundled_context(tmp_path: Path, name: str) -> Path:
    """guests/containers/NAME, its build products made first (`make -C guests/containers`)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the bundled images")
    subprocess.run(["make", "-s", "-C", str(GUESTS)], check=True, capture_output=True)
    return GUESTS / name
