"""Run both sides N times and put the seed's table together, as a plain dict (the --json output).

    1. check the options (a bad one fails before anything runs)
    2. read the host's facts
    3. find the guest's files and the image's layers (building a bundled image if it is missing);
       with --guest image, the VM boots the image itself: Linux, and the image's root disk
    4. run VM, container and the baseline (`pykvm --version`) in turn, N rounds, interleaved
       so a slow moment of the machine falls on both sides alike
    5. one function per property turns the runs into the report
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path

from pykvm.comparison import properties as prop
from pykvm.comparison import workload as wl
from pykvm.comparison.measure import run_once
from pykvm.errors import ConfigError, ContainerError, PyKvmError

__all__ = ["GUEST_CHOICES", "PLOT_FORMATS", "REPORT_VERSION", "check_options", "compare",
           "vm_workload", "image_vm_workload", "linux_files", "prepare_image"]

GUEST_CHOICES = ("tiny", "linux", "image")   # image: the --image, run with --isolation vm
PLOT_FORMATS = (".svg", ".png")   # PNG: the SVG rasterized by rsvg-convert (plot.py)
REPORT_VERSION = 1                  # bumped when a field of the --json output changes meaning
RUN_TIMEOUT_S = 120.0               # per run, of silence: a booting guest prints as it goes


def check_options(runs: int, guest: str, plot: str | None) -> None:
    """Refuse bad options with one line each, before anything is run."""
    if runs < 1:
        raise ConfigError(f"--runs {runs}: need at least one run of each side")
    if guest not in GUEST_CHOICES:
        raise ConfigError(f"--guest {guest!r}: choose one of {', '.join(GUEST_CHOICES)}")
    if plot is not None:
        suffix = Path(plot).suffix.lower()
        if suffix not in PLOT_FORMATS:
            raise ConfigError(f"--plot {plot}: unknown format {suffix or '(no suffix)'}; "
                              "use FILE.svg or FILE.png")
        if suffix == ".png":
            from pykvm.comparison.plot import find_rasterizer
            find_rasterizer(plot)
        folder = Path(plot).parent
        if not folder.is_dir():
            raise ConfigError(f"--plot {plot}: folder {folder} does not exist")


def linux_files(guest: str) -> dict[str, Path]:
    """The Linux guest's kernel and initramfs, where one can boot; else ConfigError saying why."""
    from pykvm.vm.guests import find_guest, hardware_kvm_problem

    if problem := hardware_kvm_problem():
        raise ConfigError(f"--guest {guest}: {problem}; here, use --guest tiny")
    bundled = find_guest("linux")
    return {"kernel": bundled.kernel, "initrd": bundled.initrd}


def vm_workload(guest: str, memory: str) -> tuple[wl.Workload, dict[str, Path]]:
    """The VM side and the files it boots (tiny or linux; --guest image is image_vm_workload's)."""
    from pykvm.vm.guests import find_guest

    if guest == "linux":
        return wl.linux_vm(memory), linux_files(guest)
    bundled = find_guest(guest)
    return wl.tiny_vm(memory), {"kernel": bundled.kernel}


def prepare_image(name: str, log=None):
    """(image, unpacked layer dirs) for `name`, building a bundled image (guests/containers/) if missing."""
    from pykvm.container.image.store import ImageStore, resolve_for_run

    store = ImageStore()
    try:
        image = store.get(name)
    except ContainerError:
        image = _build_bundled(store, name, log)
    return image, resolve_for_run(name, store).layers


def _build_bundled(store, name: str, log):
    from pykvm.container.image.build import BuildOptions, build_image
    from pykvm.vm.guests import GUESTS_DIR

    context = GUESTS_DIR / "containers" / name
    if not (context / "Dockerfile").is_file():
        raise ContainerError(f"--image {name}: not in the image store and not a bundled image "
                             f"(guests/containers/); build or pull it first")
    if log:
        log(f"building the bundled image {name} from {context}")
    try:
        return build_image(store, BuildOptions(str(context), tag=name))
    except PyKvmError as e:
        raise ContainerError(f"--image {name}: cannot build it ({e}); run `make guests` first") from None


def container_workload(name: str, image, layer_dirs: list[str]) -> wl.Workload:
    """The script through the image's shell; else the probe its label names; else its own command."""
    if _has_shell(layer_dirs):
        return wl.shell_container(name)
    labels = image.config.get("config", {}).get("Labels") or {}
    if probe := labels.get(wl.PROBE_LABEL):
        return wl.probe_container(name, shlex.split(probe))
    return wl.plain_container(name)


def image_vm_workload(image, box: wl.Workload, memory: str, files: dict[str, Path], log=None):
    """--guest image: the container's workload `box` under --isolation vm, and the files that VM
    boots: Linux's (`files`) and the image's root disk, built now if it is not cached yet (so the
    runs measure a cached start, as the container's do with unpacked layers)."""
    from pykvm.container.image.rootdisk import disk_path, root_disk
    from pykvm.container.image.store import ImageStore

    store = ImageStore()
    if log and not disk_path(store, image.id).exists():
        log(f"building the root disk of {box.name}")
    return wl.image_vm(box, memory), {**files, "root disk": root_disk(store, image)}


def _has_shell(layer_dirs: list[str]) -> bool:
    return any(os.path.lexists(os.path.join(d, "bin", "sh")) for d in layer_dirs)


def compare(runs: int, guest: str, image: str, memory: str = "128M", log=None) -> dict:
    """Measure, and return the report (see docs/30-vm-vs-container.md for every field)."""
    from pykvm.sizes import parse_size

    check_options(runs, guest, None)
    memory_bytes = parse_size(memory, what="--mem", default_unit="M")
    host = prop.host_facts()
    if guest == "image":
        linux = linux_files(guest)              # refused before any image is built
    else:
        vm, vm_files = vm_workload(guest, memory)
    image_obj, layers = prepare_image(image, log)
    box = container_workload(image, image_obj, layers)
    if guest == "image":
        vm, vm_files = image_vm_workload(image_obj, box, memory, linux, log)
    baseline = wl.baseline()
    samples = _run_rounds([vm, box, baseline], runs, log)
    return {
        "version": REPORT_VERSION,
        "runs": runs,
        "host": host,
        "vm": _side(vm, samples[0], host, prop.vm_size(vm_files, memory_bytes, vm, samples[0][-1].lines)),
        "container": _side(box, samples[1], host,
                           prop.image_size(image_obj, layers, box, samples[1][-1].lines, host)),
        "baseline": {"command": wl.display_command(baseline.argv), "startup": prop.startup(samples[2]),
                     "resources": prop.resources(samples[2])},
    }


def _run_rounds(workloads: list[wl.Workload], runs: int, log) -> list[list]:
    """Each workload `runs` times, round-robin; returns the samples per workload."""
    samples = [[] for _ in workloads]
    for round_no in range(1, runs + 1):
        for work, bucket in zip(workloads, samples):
            if log:
                log(f"run {round_no}/{runs}: {work.side} ({work.name})")
            bucket.append(run_once(work.argv, first_line=work.first_line, reply_after=work.reply_after,
                                   reply=work.reply, timeout=RUN_TIMEOUT_S,
                                   label=f"the {work.side} run (`{wl.display_command(work.argv)[:50]}...`)"))
    return samples


def _side(work: wl.Workload, samples: list, host: dict, size: dict) -> dict:
    """The five properties of one side; the output-derived ones read the last run's output."""
    lines = samples[-1].lines
    return {
        "name": work.name,
        "command": wl.display_command(work.argv),
        "os": prop.os_requirement(work, lines, host),
        "size": size,
        "startup": prop.startup(samples),
        "isolation": prop.isolation(work, lines, host),
        "resources": prop.resources(samples),
    }
