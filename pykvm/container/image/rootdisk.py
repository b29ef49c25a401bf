"""An image's root filesystem as a disk: what a VM boots instead of an overlayfs stack.

A container stacks the image's layer directories with overlayfs on the host's kernel.
A VM has its own kernel and sees no host directory: it gets the same files as a block
device.  This module makes that device, once per image:

    1. flatten   apply every layer, lowest first, to one empty directory; whiteouts
                 delete what lower layers had (layer.apply_layer, overlay=False)
    2. size      count the blocks and inodes the tree needs, plus room for ext4's own
                 metadata (a read-only disk never grows, so a little slack is enough)
    3. format    `mkfs.ext4 -d TREE FILE` copies the tree into a new file system
                 (e2fsprogs, mke2fs(8) "-d root-directory"): no mount, no root needed
    4. publish   fsync, chmod 0444 and rename(2) into <store>/disks/<image id>.ext4, so
                 a reader sees either no disk or a whole one, never a half-written file

The disk is read-only: the guest mounts it read-only and puts a tmpfs overlay on top
for what the command writes (which is gone when the VM ends, as a container's upper
layer is with --rm).  The image ID (the config's digest) names it, so the same image
gives the same disk and a changed image a new one.

Ownership: as root, files keep their owners from the layers; without root, extraction
cannot chown and mkfs copies the caller's ids instead (the disk is still usable, the
owners are not the image's).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from pykvm.container.image.store import DISKS_DIR, check_digest
from pykvm.errors import ContainerError

__all__ = ["root_disk", "disk_path", "build_disk", "disk_size", "find_mkfs"]

BLOCK_SIZE = 4096                       # mkfs.ext4 -b: one file's data is rounded up to this
INODE_SIZE = 256                        # mkfs.ext4 -I (its default)
METADATA_SLACK = 1.25                   # superblocks, group descriptors, bitmaps, directories
MINIMUM_SIZE = 8 << 20                  # below this, mkfs.ext4 picks a 1K-block "small" layout
SBIN_PATH = "/usr/sbin:/sbin"           # where e2fsprogs lives, also for a non-root PATH


def find_mkfs() -> str:
    """mkfs.ext4's path, or a ContainerError saying which package has it."""
    path = shutil.which("mkfs.ext4", path=f"{os.environ.get('PATH', '')}:{SBIN_PATH}")
    if path is None:
        raise ContainerError("mkfs.ext4 not found: a VM's root disk needs e2fsprogs "
                             "(apt-get install e2fsprogs)")
    return path


def disk_path(store, image_id: str) -> Path:
    """Where the disk of the image with this ID (sha256:HEX) is kept: <store>/disks/HEX.ext4."""
    return store.root / DISKS_DIR / (check_digest(image_id).split(":", 1)[1] + ".ext4")


def root_disk(store, image) -> Path:
    """The read-only ext4 disk of `image` (a store Image), built on first use and kept."""
    final = disk_path(store, image.id)
    if final.exists():
        return final
    final.parent.mkdir(exist_ok=True)
    tree = store.temp_dir(prefix="rootfs-")
    try:
        flatten(store, image, tree)
        fd, temp = store.temp_file(suffix=".ext4")
        os.close(fd)
        try:
            build_disk(tree, Path(temp))
            os.chmod(temp, 0o444)
            os.replace(temp, final)                     # atomic: all of it or nothing
        except BaseException:
            os.unlink(temp)
            raise
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return final


def flatten(store, image, tree: str) -> None:
    """Step 1: every layer of `image`, lowest first, applied to the directory `tree`."""
    from pykvm.container.image.layer import apply_layer

    for descriptor in image.layers:
        if not store.has_blob(descriptor["digest"]):
            raise ContainerError(f"layer {descriptor['digest']} is missing from the store "
                                 f"{store.layout} (pull or load the image again)")
        with open(store.blob_path(descriptor["digest"]), "rb") as blob:
            apply_layer(blob, tree)


def disk_size(tree: str) -> tuple[int, int]:
    """Step 2: (bytes, inodes) for a file system holding `tree`: every file's data rounded
    up to whole blocks, one block per directory, one inode per entry, then some slack."""
    blocks, inodes = 1, 1
    for parent, dirs, files in os.walk(tree):
        inodes += len(dirs) + len(files)
        blocks += len(dirs)
        for name in files:
            size = os.lstat(os.path.join(parent, name)).st_size
            blocks += -(-size // BLOCK_SIZE)
    inodes = inodes + inodes // 4 + 64                 # lost+found, the journal-less reserve
    data = (blocks * BLOCK_SIZE + inodes * INODE_SIZE) * METADATA_SLACK
    size = max(MINIMUM_SIZE, int(data))
    return -(-size // BLOCK_SIZE) * BLOCK_SIZE, inodes


def build_disk(tree: str, output: Path) -> None:
    """Step 3: `mkfs.ext4 -d tree` into `output` (created or overwritten), sized by disk_size.

    No journal (-O ^has_journal): nothing ever writes to this disk, so there is
    nothing to replay.  -F: the output is a file, not a device."""
    size, inodes = disk_size(tree)
    with open(output, "wb") as f:
        f.truncate(size)                                # sparse: mkfs writes only metadata
    argv = [find_mkfs(), "-q", "-F", "-t", "ext4", "-b", str(BLOCK_SIZE), "-I", str(INODE_SIZE),
            "-N", str(inodes), "-O", "^has_journal", "-L", "pykvm-root", "-d", tree, str(output)]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ContainerError(f"mkfs.ext4 could not make the root disk: "
                             f"{(proc.stderr or proc.stdout).strip()[-300:]}")
    with open(output, "rb+") as f:
        os.fsync(f.fileno())
