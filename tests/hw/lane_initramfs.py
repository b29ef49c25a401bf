"""The L1's initramfs: a cpio "newc" archive with busybox, kernel modules and /init.

The Linux kernel unpacks an initramfs from the "new ASCII" (newc) cpio format
(Documentation/driver-api/early-userspace/buffer-format.rst).  Each member is

    header  "070701" + 13 fields of 8 hex digits (ino, mode, uid, gid, nlink,
            mtime, filesize, devmajor, devminor, rdevmajor, rdevminor,
            namesize including the NUL, check = 0)
    name    NUL-terminated, padded with NULs so header + name is a multiple of 4
    data    filesize bytes, padded with NULs to a multiple of 4

and the archive ends with a member named "TRAILER!!!".  An uncompressed archive
is accepted as is, so the lane needs no compressor.  The writer is pykvm's own
(pykvm/vm/boot/cpio.py, the one `pykvm initramfs` uses).

The archive holds only what runs before the shares are mounted: a static
busybox, the modules that give virtio-fs and KVM, and the /init script written
by lane.py.  Python, pytest and the checkout arrive later over virtio-fs.
"""
from __future__ import annotations

import shlex
import struct

from pykvm.vm.boot.cpio import CpioWriter

__all__ = ["PROGRESS", "is_static_elf", "init_script", "build"]

# ELF64 (System V gABI, "ELF Header" and "Program Header"): where the program
# headers are, and the segment type that names a dynamic loader.
ELF_MAGIC = b"\x7fELF"
E_PHOFF = 0x20                  # u64: file offset of the program header table
E_PHENTSIZE = 0x36              # u16: size of one program header
E_PHNUM = 0x38                  # u16: number of program headers
PT_INTERP = 3                   # segment naming the interpreter (ld.so): dynamic


def is_static_elf(image: bytes) -> bool:
    """True for an ELF64 executable with no PT_INTERP, i.e. one that runs without ld.so."""
    if image[:4] != ELF_MAGIC:
        return False
    (phoff,) = struct.unpack_from("<Q", image, E_PHOFF)
    phentsize, phnum = struct.unpack_from("<HH", image, E_PHENTSIZE)
    types = (struct.unpack_from("<I", image, phoff + i * phentsize)[0] for i in range(phnum))
    return PT_INTERP not in types


# --- the L1's /init ---------------------------------------------------------
#
# Progress goes to the serial console as lines "@@lane <event>", which the
# host reads to time each stage and to name the one that failed.
PROGRESS = "@@lane"
LANE_DIR = "lane"                  # /lane: busybox, its applet links, modules
BUSYBOX = f"/{LANE_DIR}/busybox"
NEWROOT = "newroot"                # the tmpfs that becomes / (switch_root)
SWITCHED = ".switched"             # present once / is that tmpfs
BEAT = 5                           # seconds between heartbeat dots on ttyS1
MERGED_USR = ("bin", "sbin", "lib", "lib64")   # symlinks into /usr on Debian 12

INIT_TEMPLATE = """#!{busybox} sh
# pykvm L1 lane: mount, load modules, mount the shares, run the tests, power off.
if [ ! -e /{switched} ]; then
    # pivot_root(2) refuses the initramfs (rootfs) as the old root, and container
    # runtimes in L1 need it: copy the few files to a tmpfs and switch_root there.
    {busybox} mount -t tmpfs -o mode=0755 root /{newroot} || exit 1
    for entry in /*; do [ "$entry" = /{newroot} ] || {busybox} cp -a "$entry" /{newroot}/; done
    {busybox} touch /{newroot}/{switched}
    exec {busybox} switch_root /{newroot} /init
fi
{busybox} mkdir -p /{lane}/bin && {busybox} --install -s /{lane}/bin
export PATH=/{lane}/bin
fail() {{ echo "{progress} failed $*"; sync; poweroff -f; }}
echo "{progress} init"
# / is a writable tmpfs: /tmp and /root need no mount; /run only its folder (ip netns keeps
# its namespaces there).
mkdir -p /run && mount -t proc proc /proc && mount -t sysfs sysfs /sys && mount -t devtmpfs devtmpfs /dev \\
    && mkdir /dev/shm && mount -t tmpfs tmpfs /dev/shm \\
    && mkdir /dev/pts && mount -t devpts -o ptmxmode=0666 devpts /dev/pts \\
    && mount -t cgroup2 cgroup2 /sys/fs/cgroup \\
    || fail "mounting /proc /sys /dev"
# Each CPU's timer (its clock event device's state): "periodic", as L1's command line asks
# (nohz=off highres=off), or "oneshot".
echo "{progress} tick=$(awk '/^Per CPU device:/ {{cpu = 1}}
    cpu && /^ mode:/ {{printf "%s%s", s, ($2 == 2 ? "periodic" : $2 == 3 ? "oneshot" : "state-" $2)
                      s = ","; cpu = 0}}' /proc/timer_list)"
# Loopback, as any system has it: tests talk to servers they start on 127.0.0.1 (the gdb stub).
ip link set lo up || fail "bringing up lo"
# Heartbeat on COM2: the host fails the run when it stops (L1 hung).
(while :; do echo -n .; sleep {beat}; done) >/dev/ttyS1 2>/dev/null &
for m in {modules}; do
    insmod /{lane}/modules/$m.ko || fail "insmod $m"
done
[ -c /dev/kvm ] || fail "no /dev/kvm after loading the KVM modules"
echo "{progress} modules-loaded"
dmesg -n 1      # keep kernel messages off the console while pytest prints there
{mounts}
echo "{progress} shares-mounted"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/{lane}/bin
export HOME=/root USER=root LOGNAME=root PYTHONDONTWRITEBYTECODE=1 TERM=dumb
cd {workdir} || fail cd {workdir}
{command}
echo "{progress} tests-done status=$?"
dmesg           # for the serial log only: the host stops echoing at tests-done
sync
poweroff -f
"""


def init_script(modules: list[str], shares: list[tuple[str, str, bool]],
                workdir: str, command: str) -> str:
    """/init for the L1: `shares` are (virtio-fs tag, mount point, read-only)."""
    q = shlex.quote
    mounts = "\n".join(
        f"mount -t virtiofs {'-o ro ' if ro else ''}{tag} {q(path)} || fail mount {q(path)}"
        for tag, path, ro in shares)
    return INIT_TEMPLATE.format(busybox=BUSYBOX, lane=LANE_DIR, progress=PROGRESS, beat=BEAT,
                                newroot=NEWROOT, switched=SWITCHED,
                                modules=" ".join(modules), mounts=mounts,
                                workdir=q(workdir), command=command)


def _add_parents(archive: CpioWriter, path: str, made: set[str]) -> None:
    """Add every directory on the way to `path` (itself included) once."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        directory = "/".join(parts[:i])
        if directory not in made:
            archive.directory(directory)
            made.add(directory)


def build(busybox: bytes, modules: dict[str, bytes], init: str,
          mount_points: list[str], etc: dict[str, bytes],
          etc_links: dict[str, str] | None = None) -> bytes:
    """The initramfs: /init, /lane/busybox, /lane/modules/*.ko, mount points, /etc.

    /bin, /sbin, /lib and /lib64 point into /usr, as on the host (merged /usr),
    so that once the host's /usr is mounted its programs find their loader.
    """
    archive = CpioWriter()
    made: set[str] = set()
    for directory in ("proc", "sys", "dev", "tmp", "root", "usr", "etc", NEWROOT,
                      f"{LANE_DIR}/modules", *mount_points):
        _add_parents(archive, directory, made)
    for link in MERGED_USR:
        archive.symlink(link, f"usr/{link}")
    archive.file("init", init.encode(), 0o755)
    archive.file(BUSYBOX, busybox, 0o755)
    for name, image in modules.items():
        archive.file(f"{LANE_DIR}/modules/{name}.ko", image)
    for name, data in etc.items():
        archive.file(f"etc/{name}", data)
    for name, target in (etc_links or {}).items():     # e.g. alternatives/iptables -> /usr/...
        _add_parents(archive, f"etc/{name}".rsplit("/", 1)[0], made)
        archive.symlink(f"etc/{name}", target)
    return archive.finish()
