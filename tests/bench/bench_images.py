#!/usr/bin/env python3
"""Benchmarks for images and registries (a plain script, never a timed test).

    1. build time of the bundled images (guests/containers/hello, busybox):
       cold (empty store) and cached (second build, every layer from the cache)
    2. push and pull of an image with one 100 MB layer against a local
       docker-registry: pykvm vs skopeo (same registry, same blobs), ratio

Each figure is min/median/max over --repeat runs.  Run as:

    .venv/bin/python tests/bench/bench_images.py [--repeat N] [--size-mb 100]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "container"))

from image_fixtures import GUESTS, start_registry, stop_registry  # noqa: E402

from pykvm.container.image.build import BuildOptions, build_image  # noqa: E402
from pykvm.container.image.store import ImageStore  # noqa: E402
from pykvm.container.image.registry import pull, push  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def summary(label: str, samples: list[float]) -> float:
    med = statistics.median(samples)
    print(f"{label:<38} min {min(samples):8.3f}s  median {med:8.3f}s  max {max(samples):8.3f}s  (n={len(samples)})")
    return med


def bench_builds(work: Path, repeat: int) -> None:
    subprocess.run(["make", "-s", "-C", str(GUESTS)], check=True)
    for name in ("hello", "busybox"):
        cold, cached = [], []
        for i in range(repeat):
            store = ImageStore(work / f"build-{name}-{i}")
            options = BuildOptions(str(GUESTS / name), name)
            cold.append(timed(lambda: build_image(store, options)))
            cached.append(timed(lambda: build_image(store, options)))
            shutil.rmtree(store.root)
        c = summary(f"build {name} cold", cold)
        w = summary(f"build {name} cached", cached)
        print(f"{'':<38} cached/cold ratio {w / c:.2f}")


def big_image(store: ImageStore, work: Path, size_mb: int) -> None:
    ctx = work / "big-ctx"
    ctx.mkdir()
    with open(ctx / "blob.bin", "wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(1 << 20))          # incompressible: the layer stays ~size_mb
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY blob.bin /blob.bin\n")
    build_image(store, BuildOptions(str(ctx), "big:1"))


def bench_registry(work: Path, repeat: int, size_mb: int) -> None:
    """Each push goes to a registry of its own (fresh storage), so neither tool can skip or
    cross-mount the blob; both pulls read the same pushed image into an empty destination."""
    skopeo = shutil.which("skopeo")
    store = ImageStore(work / "store")
    big_image(store, work, size_mb)
    layer = store.get("big:1").layers[0]
    print(f"image big:1: one layer of {layer['size'] / 1e6:.1f} MB (gzip of random bytes)")
    results: dict[str, list[float]] = {k: [] for k in ("push pykvm", "push skopeo", "pull pykvm", "pull skopeo")}
    for i in range(repeat):
        for tool in ("pykvm", "skopeo") if skopeo else ("pykvm",):
            regdir = work / f"reg-{tool}-{i}"
            regdir.mkdir()
            proc, registry = start_registry(regdir)
            try:
                remote = f"{registry.host}/big:1"
                if tool == "pykvm":
                    results["push pykvm"].append(timed(lambda: push(store, "big:1", remote)))
                else:
                    results["push skopeo"].append(timed(lambda: subprocess.run(
                        [skopeo, "--insecure-policy", "copy", "-q", "--dest-tls-verify=false",
                         f"oci:{store.layout}:big:1", f"docker://{remote}"], check=True)))
                fresh = ImageStore(work / f"pull-{tool}-{i}")
                results["pull pykvm"].append(timed(lambda: pull(fresh, remote)))
                shutil.rmtree(fresh.root)
                if skopeo:
                    dest = work / f"skopeo-pull-{tool}-{i}"
                    results["pull skopeo"].append(timed(lambda: subprocess.run(
                        [skopeo, "--insecure-policy", "copy", "-q", "--src-tls-verify=false",
                         f"docker://{remote}", f"oci:{dest}:big"], check=True)))
                    shutil.rmtree(dest)
            finally:
                stop_registry(proc)
            shutil.rmtree(registry.storage, ignore_errors=True)
    for op in ("push", "pull"):
        a = summary(f"{op} {size_mb} MB layer: pykvm", results[f"{op} pykvm"])
        if results[f"{op} skopeo"]:
            b = summary(f"{op} {size_mb} MB layer: skopeo", results[f"{op} skopeo"])
            print(f"{'':<38} pykvm/skopeo ratio {a / b:.2f}")
    if not skopeo:
        print("skopeo not installed: no peer figures (apt-get install skopeo)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--skip-registry", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pykvm-bench-images-") as tmp:
        work = Path(tmp)
        bench_builds(work, args.repeat)
        if not args.skip_registry:
            bench_registry(work, max(1, args.repeat), args.size_mb)


if __name__ == "__main__":
    main()
