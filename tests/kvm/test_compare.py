"""`pykvm compare` end to end: a real VM and a real container, measured, as a user runs it.

Two invocations share a private image store (the bundled busybox image is
built into it on first use) and differ in --runs and --mem, so the tests can
tell figures that came from the runs from figures that could have been typed in.
"""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from clitools import one_error_line, pykvm

MIB = 1 << 20
SVG_NS = "{http://www.w3.org/2000/svg}"


def container_problem() -> str | None:
    """Why images cannot run as containers here (no overlayfs, no cgroup filesystem), or None.

    Everything runs on the project's machines; the L1 lane (`make test-hw`) boots
    a bare kernel with neither, so there the container half of `pykvm compare`
    cannot start, and its tests say so.
    """
    from pykvm.container.runtime.cgroups import detect

    def listed():
        return "overlay" in Path("/proc/filesystems").read_text().split()
    if not (listed() or (subprocess.run(["modprobe", "-q", "overlay"], capture_output=True).returncode == 0
                         and listed())):
        return "no overlayfs in this kernel (modprobe overlay failed): images cannot be mounted"
    if detect() is None:
        return "no cgroup filesystem at /sys/fs/cgroup: containers cannot be started"
    return None


CONTAINER_PROBLEM = container_problem()
needs_containers = pytest.mark.skipif(CONTAINER_PROBLEM is not None, reason=str(CONTAINER_PROBLEM))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """A private image store and container state root for this module."""
    root = tmp_path_factory.mktemp("compare")
    return {"PYKVM_STORE": str(root / "store"), "PYKVM_STATE_ROOT": str(root / "state")}


def _compare(store, *args) -> dict:
    result = pykvm("compare", "--json", *args, env=store, timeout=600)
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def two_runs(store, tmp_path_factory):
    """Report A: 2 runs, a 64 MiB VM, with a plot.  Report B: 3 runs, a 96 MiB VM."""
    plot = tmp_path_factory.mktemp("plot") / "compare.svg"
    a = _compare(store, "--runs", "2", "--mem", "64M", "--plot", str(plot))
    b = _compare(store, "--runs", "3", "--mem", "96M")
    return a, b, plot


def _stats(node):
    return node["median"], node["min"], node["max"], node["samples"]


REQUIRED = {
    "os": {"kernel", "same_as_host", "measured", "how"},
    "size": {"bytes", "parts", "memory_given_bytes", "memory_seen_bytes", "how"},
    "startup": {"first_line_s", "exit_s", "how"},
    "isolation": {"processes", "interfaces", "mounts", "hostname", "boundary"},
    "resources": {"peak_rss_bytes", "cpu_s", "floor_rss_bytes", "how"},
}


@pytest.mark.kvm
@pytest.mark.root
@needs_containers
def test_report_has_every_field(two_runs):
    a, _, _ = two_runs
    assert {"version", "runs", "host", "vm", "container", "baseline"} <= set(a)
    for side in ("vm", "container"):
        assert {"name", "command", *REQUIRED} <= set(a[side]), a[side].keys()
        for prop, fields in REQUIRED.items():
            missing = fields - set(a[side][prop])
            assert not missing, f"{side}.{prop} lacks {missing}"
        for name, item in a[side]["isolation"].items():
            assert {"measured", "how"} <= set(item), f"{side}.isolation.{name}: {item}"
    assert {"kernel", "hostname", "processes", "interfaces", "mounts", "memory_bytes", "namespaces",
            "kvm"} <= set(a["host"])


@pytest.mark.kvm
@pytest.mark.root
@needs_containers
def test_vm_runs_its_own_kernel_and_the_container_the_hosts(two_runs):
    a, _, _ = two_runs
    host = f"{os.uname().sysname} {os.uname().release}"
    assert a["host"]["kernel"] == host
    assert a["vm"]["os"]["kernel"] and a["vm"]["os"]["kernel"] != host, a["vm"]["os"]
    assert a["vm"]["os"]["same_as_host"] is False and a["vm"]["os"]["measured"] is True
    assert a["container"]["os"]["kernel"] == host, a["container"]["os"]
    assert a["container"]["os"]["same_as_host"] is True and a["container"]["os"]["measured"] is True
    # Not only the same version: the same running kernel (random(4): one boot_id per boot).
    with open("/proc/sys/kernel/random/boot_id") as f:
        assert a["container"]["os"]["boot_id"] == f.read().strip()


@pytest.mark.kvm
@pytest.mark.root
@needs_containers
def test_numbers_are_positive_and_agree_with_their_min_and_max(two_runs):
    for report in two_runs[:2]:
        for side in ("vm", "container", "baseline"):
            nodes = [report[side]["startup"]["first_line_s"], report[side]["startup"]["exit_s"],
                     report[side]["resources"]["peak_rss_bytes"], report[side]["resources"]["cpu_s"]]
            for node in nodes:
                median, low, high, samples = _stats(node)
                assert len(samples) == report["runs"], node
                assert all(s > 0 for s in samples), node
                assert (low, median, high) == (min(samples), statistics.median(samples), max(samples))
            first, exit_ = (report[side]["startup"][k]["samples"] for k in ("first_line_s", "exit_s"))
            assert all(f <= e for f, e in zip(first, exit_)), (first, exit_)
            peaks = report[side]["resources"]["peak_rss_bytes"]["samples"]
            floors = report[side]["resources"]["floor_rss_bytes"]["samples"]
            assert all(p >= f > 0 for p, f in zip(peaks, floors)), (peaks, floors)
        for side in ("vm", "container"):
            assert report[side]["size"]["bytes"] > 0


@pytest.mark.kvm
@pytest.mark.root
@needs_containers
def test_figures_come_from_this_invocations_runs(two_runs):
    a, b, _ = two_runs
    assert (a["runs"], b["runs"]) == (2, 3)
    # The guest reports the RAM it found; the invocations gave it 64 and 96 MiB.
    assert a["vm"]["size"]["memory_given_bytes"] == 64 * MIB
    assert b["vm"]["size"]["memory_given_bytes"] == 96 * MIB
    for report, given in ((a, 64), (b, 96)):
        seen = report["vm"]["size"]["memory_seen_bytes"]
        assert (given - 2) * MIB <= seen <= given * MIB, (given, seen)
    # Each container gets a fresh id as its hostname.
    names = [r["container"]["isolation"]["hostname"]["inside"] for r in (a, b)]
    assert all(re.fullmatch(r"[0-9a-f]{12}", n) for n in names) and names[0] != names[1], names
    # Wall-clock samples from separate runs do not repeat.
    times = a["vm"]["startup"]["exit_s"]["samples"] + b["vm"]["startup"]["exit_s"]["samples"]
    assert len(set(times)) == len(times), times
    # The size is the guest ELF's and the image's files, read now.
    from pykvm.vm.guests import find_guest
    assert a["vm"]["size"]["bytes"] == find_guest("tiny").kernel.stat().st_size


@pytest.mark.kvm
@pytest.mark.root
@needs_containers
def test_isolation_as_seen_from_inside(two_runs):
    a, _, _ = two_runs
    vm, box, host = a["vm"]["isolation"], a["container"]["isolation"], a["host"]
    assert vm["processes"]["measured"] and 1 <= vm["processes"]["inside"] < host["processes"]
    assert box["processes"]["measured"] and 1 <= box["processes"]["inside"] < host["processes"]
    assert box["interfaces"]["inside"] == ["lo"], box["interfaces"]
    assert box["mounts"]["inside"]["root_type"] == "overlay", box["mounts"]
    assert box["hostname"]["inside"] != host["hostname"]
    assert {"mnt", "net", "pid", "uts", "ipc"} <= set(box["boundary"]["namespaces_own"]), box["boundary"]
    # What the tiny guest cannot look at is marked so, with the reason.
    for name in ("interfaces", "mounts", "hostname"):
        assert vm[name]["measured"] is False and vm[name]["how"], vm[name]
    assert vm["boundary"]["hypervisor"], vm["boundary"]


@pytest.mark.kvm
@pytest.mark.root
@needs_containers
def test_plot_is_an_svg_with_a_bar_per_side(two_runs):
    _, _, plot = two_runs
    root = ET.parse(plot).getroot()
    assert root.tag == f"{SVG_NS}svg"
    titles = [t.text for t in root.iter(f"{SVG_NS}title")]
    # startup: first line and exit for 3 sides, memory: 3 sides
    assert len(titles) == 9, titles
    assert sum(t.startswith("vm:") for t in titles) == 3


@pytest.mark.kvm
@pytest.mark.root
@needs_containers
def test_plot_as_png_is_the_svg_rasterized(store, tmp_path, two_runs):
    """FILE.png: the same drawing, through rsvg-convert: a PNG as large as the SVG says."""
    import struct
    _, _, svg_plot = two_runs
    root = ET.parse(svg_plot).getroot()
    png = tmp_path / "compare.png"
    result = pykvm("compare", "--runs", "1", "--plot", str(png), env=store, timeout=600)
    assert result.returncode == 0, result.stderr.decode()
    assert f"pykvm compare: plot written to {png}\n" in result.stderr.decode(), result.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", data[:16]
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (int(root.get("width")), int(root.get("height")))


def test_png_without_rsvg_convert_is_one_line_naming_the_package(tmp_path):
    line = one_error_line(pykvm("compare", "--plot", str(tmp_path / "x.png"),
                                env={"PATH": str(tmp_path)}))     # no rsvg-convert there
    assert "rsvg-convert" in line and "librsvg2-bin" in line, line
    assert not (tmp_path / "x.png").exists()


@pytest.mark.kvm
@pytest.mark.root
@needs_containers
def test_text_table_and_explain(store):
    result = pykvm("compare", "--runs", "1", "--explain", env=store, timeout=600)
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    for row in ("OS requirement", "Size", "Startup", "Isolation", "Resources", "How each number"):
        assert row in out, out
    assert os.uname().release in out


@pytest.mark.kvm
@pytest.mark.root
@needs_containers
def test_markdown_table(store):
    result = pykvm("compare", "--runs", "1", "--markdown", env=store, timeout=600)
    assert result.returncode == 0, result.stderr.decode()
    table = [line for line in result.stdout.decode().splitlines() if line.startswith("|")]
    assert table[1] == "|---|---|---|" and len(table) == 2 + 13, table
    assert all(line.count(" | ") == 2 for line in table if line != table[1]), table


@pytest.mark.kvm
@pytest.mark.root
@needs_containers
def test_hello_image_reports_only_what_its_probe_can_and_says_so(store):
    """No shell: `/hello --probe` (its label) gives the kernel, boot_id and hostname, no more."""
    report = _compare(store, "--runs", "1", "--image", "hello")
    box, host = report["container"], report["host"]
    assert box["command"].endswith("container run --rm --network none hello /hello --probe"), box["command"]
    assert box["os"]["measured"] is True
    assert box["os"]["kernel"] == host["kernel"] and box["os"]["boot_id"] == host["boot_id"]
    assert box["os"]["same_as_host"] is True
    assert box["isolation"]["hostname"]["measured"] is True
    assert box["isolation"]["hostname"]["inside"] not in (None, host["hostname"])
    unseen = [name for name, item in box["isolation"].items()
              if name != "boundary" and item["measured"] is False]
    assert sorted(unseen) == ["interfaces", "mounts", "processes"], unseen
    assert all("--probe" in box["isolation"][name]["how"] for name in unseen)
    assert box["startup"]["first_line_s"]["median"] > 0


@pytest.mark.parametrize("args, words", [
    (("--runs", "0"), "--runs 0"),
    (("--runs", "many"), "--runs"),
    (("--guest", "nonsense"), "--guest"),
    (("--plot", "x.gif"), ".svg or FILE.png"),
    (("--plot", "/no/such/folder/x.svg"), "does not exist"),
    (("--json", "--markdown"), "choose one"),
])
def test_bad_input_is_one_line(args, words):
    line = one_error_line(pykvm("compare", *args))
    assert line.startswith("pykvm: error:") and words in line, line


@pytest.mark.kvm
def test_bad_mem_and_unknown_image_are_one_line(store):
    assert "--mem" in one_error_line(pykvm("compare", "--mem", "lots", env=store))
    line = one_error_line(pykvm("compare", "--image", "no-such-image", env=store))
    assert "no-such-image" in line, line


@pytest.mark.kvm
@pytest.mark.root
@needs_containers
def test_a_failing_run_is_one_line_naming_the_side(store):
    # More RAM than the host has: compare accepts the size, `pykvm boot` refuses it.
    line = one_error_line(pykvm("compare", "--runs", "1", "--mem", "100000G", env=store))
    assert "the vm run" in line and "more than this host's" in line, line


@pytest.mark.skipif(not Path("/sys/module/kvm_pvm").exists(), reason="only PVM refuses a Linux guest")
@pytest.mark.parametrize("guest", ["linux", "image"])
def test_linux_guest_on_pvm_says_why_not(guest, tmp_path):
    """Refused before anything is built: the private store stays empty."""
    store = {"PYKVM_STORE": str(tmp_path / "store"), "PYKVM_STATE_ROOT": str(tmp_path / "state")}
    line = one_error_line(pykvm("compare", "--guest", guest, env=store))
    assert "PVM" in line and f"--guest {guest}" in line and "--guest tiny" in line, line
    assert not (tmp_path / "store").exists()


@pytest.mark.linux
@needs_containers
def test_linux_guest_reports_its_own_kernel(store):
    report = _compare(store, "--runs", "1", "--guest", "linux", "--mem", "256M")
    vm = report["vm"]
    # The guest may run the host's kernel *version* (the L1 lane does): the boot_id tells them apart.
    assert vm["os"]["kernel"].startswith("Linux ") and vm["os"]["same_as_host"] is False, vm["os"]
    assert vm["os"]["boot_id"] and vm["os"]["boot_id"] != vm["os"]["host_boot_id"], vm["os"]
    assert vm["isolation"]["processes"]["measured"] and vm["isolation"]["interfaces"]["measured"]
    assert "eth0" not in vm["isolation"]["interfaces"]["inside"], vm["isolation"]["interfaces"]
    assert vm["size"]["parts"]["initrd"] > 0 and vm["size"]["memory_given_bytes"] == 256 * MIB
