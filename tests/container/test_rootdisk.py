"""An image's layers as a read-only ext4 disk (pykvm.container.image.rootdisk): what a VM boots.

The disk is read back with e2fsprogs' debugfs, which reads an ext4 image without mounting
it, so these tests need neither root nor a VM.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from image_fixtures import store  # noqa: F401  (fixture)
from test_image_layout import simple_image

from pykvm.container.image.rootdisk import build_disk, disk_path, disk_size, root_disk

SBIN_PATH = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"


def debugfs(image, request: str) -> str:
    tool = shutil.which("debugfs", path=SBIN_PATH)
    if tool is None:
        pytest.skip("needs debugfs (apt-get install e2fsprogs)")
    proc = subprocess.run([tool, "-R", request, str(image)], capture_output=True, text=True, check=True)
    return proc.stdout


def names(image, directory: str) -> set[str]:
    """The entries of `directory` in the ext4 image, without . and .."""
    lines = debugfs(image, f"ls -p {directory}").split()        # /INODE/MODE/UID/GID/NAME/SIZE/
    return {line.split("/")[5] for line in lines} - {".", ".."}


def test_layers_are_stacked_and_whiteouts_delete(store):
    image = simple_image(store, "stack:1", layers=[
        [("dir", "etc", None), ("file", "etc/kept", b"lower\n"), ("file", "etc/gone", b"x\n"),
         ("dir", "opaque", None), ("file", "opaque/old", b"old\n")],
        [("file", "etc/kept", b"upper\n"), ("file", "etc/.wh.gone", b""),
         ("file", "opaque/.wh..wh..opq", b""), ("file", "opaque/new", b"new\n")],
    ])
    disk = root_disk(store, image)
    assert debugfs(disk, "cat /etc/kept") == "upper\n"
    assert names(disk, "/etc") == {"kept"}
    assert names(disk, "/opaque") == {"new"}
    assert "pykvm-root" in debugfs(disk, "stats")


def test_disk_is_cached_per_image_id_and_read_only(store):
    image = simple_image(store, "cached:1")
    disk = root_disk(store, image)
    assert disk == disk_path(store, image.id)
    assert disk.name == image.id.split(":")[1] + ".ext4"
    assert disk.stat().st_mode & 0o777 == 0o444
    inode = disk.stat().st_ino
    assert root_disk(store, image).stat().st_ino == inode, "built again instead of reused"
    other = simple_image(store, "other:1", layers=[[("file", "other.txt", b"2\n")]])
    assert root_disk(store, other) != disk
    assert debugfs(root_disk(store, other), "cat /other.txt") == "2\n"


def test_no_work_files_are_left_behind(store):
    root_disk(store, simple_image(store))
    assert list(store.tmp.iterdir()) == []


def test_a_failed_build_leaves_no_disk(store, monkeypatch):
    """mkfs failing (here: a size too small to hold the tree) publishes nothing."""
    import pykvm.container.image.rootdisk as rootdisk
    from pykvm.errors import ContainerError

    big = os.urandom(64 << 10)
    image = simple_image(store, "big:1", layers=[[("file", f"f{i}", big) for i in range(200)]])
    monkeypatch.setattr(rootdisk, "disk_size", lambda tree: (1 << 20, 64))
    with pytest.raises(ContainerError, match="mkfs.ext4 could not make the root disk"):
        root_disk(store, image)
    assert not disk_path(store, image.id).exists()
    assert list(store.tmp.iterdir()) == []


def test_size_holds_the_tree_with_room_for_metadata(tmp_path):
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "a").write_bytes(b"x" * 10_000)           # 3 blocks
    (tree / "b").write_bytes(b"")
    size, inodes = disk_size(str(tree))
    assert size % 4096 == 0 and size >= 8 << 20
    assert inodes >= 4
    for i in range(3000):                                   # more entries: more inodes and blocks
        (tree / f"f{i}").write_bytes(b"y" * 5000)
    bigger, more = disk_size(str(tree))
    assert more > 3000 and bigger > 3000 * 2 * 4096
    build_disk(str(tree), tmp_path / "disk.ext4")           # and mkfs agrees that it fits
    assert debugfs(tmp_path / "disk.ext4", "cat /f2999") == "y" * 5000


def test_gc_removes_the_disks_of_removed_images_only(store):
    kept, dropped = simple_image(store, "kept:1"), simple_image(store, "dropped:1", layers=[[("file", "d", b"d\n")]])
    kept_disk, dropped_disk = root_disk(store, kept), root_disk(store, dropped)
    store.remove(["dropped:1"])
    store.gc()
    assert kept_disk.exists() and not dropped_disk.exists()
