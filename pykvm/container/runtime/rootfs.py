"""The container's root filesystem: mount it, fill it, pivot_root into it.

All of this runs in the container's init process, inside its own mount
namespace, so every mount made here disappears with the namespace: nothing
to unmount on the host afterwards.  The recipe, top-down:

    1. make_private()        "/" and below MS_PRIVATE: our mounts do not propagate to the host
    2. mount_root()          overlay (image layers + a writable upper dir) or a bind of a prepared dir
    3. mount_all()           /proc, /dev (tmpfs + device nodes + pts + shm + mqueue), /sys ro, config mounts
       make_device_nodes()   config.json's linux.devices, in /dev
    4. mask_paths()          runc's default masked paths: /dev/null over files, empty ro tmpfs over dirs
       readonly_paths()      runc's default read-only paths: bind onto itself, remount ro
    5. pivot_into()          pivot_root(2) ("." ".") then detach the old root: the host is gone
       or move_into()        runc's --no-pivot: the host's proc and sysfs unmounted, the root
                             moved onto "/" (MS_MOVE), then chroot(2) into it
       mount_console()       with a terminal (terminal.py): its pty slave bound onto /dev/console
    6. remount_root_readonly()  for `--read-only` / root.readonly

Mount targets are resolved *inside* the rootfs, with symlinks followed as if
the rootfs were "/" (`secure_join`), then walked again one component at a
time, each opened O_PATH|O_NOFOLLOW relative to its parent's fd (`open_target`),
and mounted on through /proc/self/fd/N.  A rootfs whose /proc or /dev is a
symlink to a host path, or a container that swaps a mount target for one while
we mount, therefore cannot make us create or mount anything on the host (the
lessons of CVE-2019-19921 and CVE-2021-30465).
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass, field

from pykvm.container.runtime.syscalls import lib, mount, pivot_root, umount
from pykvm.errors import ContainerError, SyscallError

__all__ = ["Mount", "DEFAULT_MOUNTS", "MASKED_PATHS", "READONLY_PATHS", "DEVICES", "DEV_LINKS",
           "secure_join", "make_private", "mount_root", "mount_all", "mask_paths",
           "readonly_paths", "pivot_into", "move_into", "host_views", "MountInfo", "read_mountinfo",
           "mount_console", "remount_root_readonly", "parse_options",
           "make_busybox_rootfs", "DeviceNode", "NODE_TYPES", "make_device_nodes"]

MAX_SYMLINKS = 40          # path_resolution(7): the kernel's own limit

# runc's default masked and read-only paths (`runc spec`, config-linux.md "Masked Paths").
MASKED_PATHS = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi"]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

# The minimal /dev (runtime-spec config-linux.md "Default Devices"), bound from the host's nodes.
DEVICES = ["null", "zero", "full", "random", "urandom", "tty"]
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx", "core": "/proc/kcore"}

# mount(8) option words -> (flags to set, flags to clear).
FLAG_OPTIONS = {
    "ro": (lib.MS_RDONLY, 0), "rw": (0, lib.MS_RDONLY),
    "nosuid": (lib.MS_NOSUID, 0), "suid": (0, lib.MS_NOSUID),
    "nodev": (lib.MS_NODEV, 0), "dev": (0, lib.MS_NODEV),
    "noexec": (lib.MS_NOEXEC, 0), "exec": (0, lib.MS_NOEXEC),
    "sync": (lib.MS_SYNCHRONOUS, 0), "async": (0, lib.MS_SYNCHRONOUS),
    "dirsync": (lib.MS_DIRSYNC, 0), "noatime": (lib.MS_NOATIME, 0),
    "nodiratime": (lib.MS_NODIRATIME, 0), "relatime": (lib.MS_RELATIME, 0),
    "strictatime": (lib.MS_STRICTATIME, 0), "bind": (lib.MS_BIND, 0),
    "rbind": (lib.MS_BIND | lib.MS_REC, 0), "private": (lib.MS_PRIVATE, 0),
    "rprivate": (lib.MS_PRIVATE | lib.MS_REC, 0), "slave": (lib.MS_SLAVE, 0),
    "rslave": (lib.MS_SLAVE | lib.MS_REC, 0), "shared": (lib.MS_SHARED, 0),
    "rshared": (lib.MS_SHARED | lib.MS_REC, 0), "unbindable": (lib.MS_UNBINDABLE, 0),
    "runbindable": (lib.MS_UNBINDABLE | lib.MS_REC, 0),
}
PROPAGATION = lib.MS_PRIVATE | lib.MS_SLAVE | lib.MS_SHARED | lib.MS_UNBINDABLE
# Flags a remount must keep: in a user namespace the kernel "locks" them on
# mounts inherited from the host, and a remount that drops one fails EPERM.
LOCKED_FLAGS = lib.MS_NOSUID | lib.MS_NODEV | lib.MS_NOEXEC | lib.MS_RDONLY | lib.MS_NOATIME \
    | lib.MS_NODIRATIME | lib.MS_RELATIME


@dataclass(frozen=True)
class DeviceNode:
    """One config-linux.md "Devices" entry: a node the container finds in its /dev."""

    path: str                 # absolute, under /dev
    type: str                 # a NODE_TYPES key
    major: int = 0
    minor: int = 0
    mode: int = 0o666         # fileMode: permission bits
    uid: int = 0
    gid: int = 0


# config-linux.md "Devices": c (char), u (char, unbuffered: the same node), b (block), p (FIFO)
NODE_TYPES = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}


@dataclass
class Mount:
    """One entry of config.json "mounts" (runtime-spec config.md "Mounts")."""

    destination: str
    type: str = "bind"
    source: str = ""
    options: list[str] = field(default_factory=list)

    @property
    def is_bind(self) -> bool:
        return self.type == "bind" or any(o in ("bind", "rbind") for o in self.options)


DEFAULT_MOUNTS = [
    Mount("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
    Mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
    Mount("/dev/pts", "devpts", "devpts", ["nosuid", "noexec", "newinstance", "ptmxmode=0666",
                                           "mode=0620"]),
    Mount("/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
    Mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
    Mount("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
    Mount("/sys/fs/cgroup", "cgroup", "cgroup", ["nosuid", "noexec", "nodev", "relatime", "ro"]),
]


def parse_options(options: list[str]) -> tuple[int, str]:
    """mount(8) options -> (MS_* flags, the data string passed to the filesystem)."""
    flags, data = 0, []
    for opt in options:
        if opt in FLAG_OPTIONS:
            set_, clear = FLAG_OPTIONS[opt]
            flags = (flags | set_) & ~clear
        else:
            data.append(opt)
    return flags, ",".join(data)


# --- resolving paths inside the rootfs ---------------------------------------

def secure_join(root: str, unsafe: str) -> str:
    """`unsafe` inside `root`, symlinks resolved as if `root` were "/" (runc's securejoin).

    ".." never climbs above root, and an absolute symlink restarts at root, so
    the result is always root or below it (as long as nobody changes the tree
    while we look, which `open_target` checks afterwards).
    """
    pending = [p for p in unsafe.split("/") if p not in ("", ".")]
    done: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        here = os.path.join(root, *done, part)
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            done.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise ContainerError(f"too many symbolic links resolving {unsafe} in {root}")
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            pending = [p for p in target.split("/") if p not in ("", ".")] + pending
            continue
        done.append(part)
    return os.path.join(root, *done)


def open_target(root: str, dest: str, directory: bool = True) -> int:
    """Create (if needed) and open the mount target `dest` inside `root`: an O_PATH fd.

    `secure_join` gives the path; it is then walked again one component at a
    time, each opened O_PATH|O_NOFOLLOW relative to the fd of the one before
    (created there, with mkdirat, when missing).  A component that another
    process swapped for a symlink meanwhile is refused, not followed, so no
    lookup ever leaves the rootfs: nothing is created or mounted on the host
    (CVE-2019-19921, CVE-2021-30465).  Mount onto f"/proc/self/fd/{fd}" so
    that nothing is looked up again by name.
    """
    parts = [p for p in os.path.relpath(secure_join(root, dest), root).split("/") if p != "."]
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            parent, fd = fd, -1                       # _open_component closes the parent
            fd = _open_component(parent, part, create_directory=directory or not last, walk_into=not last,
                                 root=root, dest=dest)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    real = os.readlink(f"/proc/self/fd/{fd}")
    if real != root and not real.startswith(root.rstrip("/") + "/"):
        os.close(fd)
        raise ContainerError(f"mount target {dest} resolves to {real}, outside the rootfs {root}: refused")
    return fd


def _open_component(parent: int, name: str, create_directory: bool, walk_into: bool, root: str, dest: str) -> int:
    """Open `name` in the directory `parent` (an O_PATH fd, closed here), creating it when missing
    (a directory, or an empty file); never a symlink, and a directory when we `walk_into` it."""
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            fd = os.open(name, flags, dir_fd=parent)
        except FileNotFoundError:
            if create_directory:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=parent)
            else:
                os.close(os.open(name, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                                 dir_fd=parent))
            fd = os.open(name, flags, dir_fd=parent)
    except OSError as e:
        raise ContainerError(f"cannot open mount target {dest} in {root}: {e.strerror} ({name})") from None
    finally:
        os.close(parent)
    mode = os.fstat(fd).st_mode
    if stat.S_ISLNK(mode) or (walk_into and not stat.S_ISDIR(mode)):
        os.close(fd)
        raise ContainerError(f"mount target {dest} in {root} changed while being mounted on "
                             f"({name} is now {'a symlink' if stat.S_ISLNK(mode) else 'not a directory'}): refused")
    return fd


def _mount_on(root: str, dest: str, source: str | None, fstype: str | None,
              flags: int, data: str | None, directory: bool = True) -> None:
    fd = open_target(root, dest, directory)
    try:
        mount(source, f"/proc/self/fd/{fd}", fstype, flags, data)
    finally:
        os.close(fd)


def _remount(root: str, dest: str, flags: int) -> None:
    """Remount a bind mount with new flags, keeping the locked ones it already has."""
    fd = open_target(root, dest, os.path.isdir(secure_join(root, dest)))
    try:
        target = f"/proc/self/fd/{fd}"
        current = os.statvfs(target).f_flag & LOCKED_FLAGS     # ST_* == MS_* for these bits
        mount(None, target, None, lib.MS_BIND | lib.MS_REMOUNT | current | flags, None)
    finally:
        os.close(fd)


# --- the recipe ----------------------------------------------------------------

def make_private() -> None:
    """Step 1: stop mount propagation to and from the host (mount_namespaces(7))."""
    mount(None, "/", None, lib.MS_REC | lib.MS_PRIVATE, None)


def mount_root(target: str, rootfs: str | None = None, lower: list[str] | None = None,
               upper: str | None = None, work: str | None = None) -> str:
    """Step 2: make `target` a mount point holding the container's root; return its real path.

    Either an overlay (lower = image layers, top first; upper/work = the
    container's writable layer, Documentation/filesystems/overlayfs.rst), or a
    bind of a prepared directory onto itself (pivot_root needs a mount point).
    """
    if lower:
        data = f"lowerdir={':'.join(lower)},upperdir={upper},workdir={work}"
        mount("overlay", target, "overlay", 0, data)
        return os.path.realpath(target)
    real = os.path.realpath(rootfs)
    mount(real, real, None, lib.MS_BIND | lib.MS_REC, None)
    return real


def mount_all(root: str, mounts: list[Mount], host_sys: bool = False, cgroupns: bool = True) -> None:
    """Step 3: the config's mounts in order; /dev gets its nodes right after its tmpfs.

    `cgroupns`: whether we are in a cgroup namespace of our own (see mount_cgroupfs).
    """
    for m in mounts:
        if m.type == "sysfs" and host_sys:
            # sysfs can only be mounted by the owner of the network namespace;
            # with the host's network in a user namespace, bind the host's /sys.
            m = Mount(m.destination, "bind", "/sys", ["rbind", "nosuid", "noexec", "nodev", "ro"])
        if m.type == "cgroup":
            mount_cgroupfs(root, m.destination, parse_options(m.options)[0], cgroupns)
            continue
        mount_one(root, m)
        if m.destination == "/dev" and m.type == "tmpfs":
            populate_dev(root)


def mount_one(root: str, m: Mount) -> None:
    """Mount one config entry (a bind is made, then remounted if it asks for flags)."""
    flags, data = parse_options(m.options)
    if m.type == "cgroup":
        return mount_cgroupfs(root, m.destination, flags)
    if m.is_bind:
        source = m.source if os.path.isabs(m.source) else os.path.abspath(m.source)
        if not os.path.exists(source):
            raise ContainerError(f"bind mount source {m.source} does not exist")
        _mount_on(root, m.destination, source, None, lib.MS_BIND | (flags & lib.MS_REC), None,
                  directory=os.path.isdir(source))
        extra = flags & ~(lib.MS_BIND | lib.MS_REC | PROPAGATION)
        if extra:
            _remount(root, m.destination, extra)
    else:
        _mount_on(root, m.destination, m.source or m.type, m.type,
                  flags & ~PROPAGATION, data or None)
    if flags & PROPAGATION:
        _mount_on(root, m.destination, None, None, flags & (PROPAGATION | lib.MS_REC), None)


def mount_cgroupfs(root: str, dest: str, flags: int, cgroupns: bool = True) -> None:
    """A cgroup mount, as runc makes it, showing only the container's own cgroups.

    In our own cgroup namespace a new cgroup mount shows our cgroup as "/"
    (cgroup_namespaces(7)).  cgroup v2: one cgroup2 mount.  v1: a tmpfs with one
    cgroup mount per host hierarchy (memory, pids, cpu, name=systemd ...), then the
    tmpfs remounted read-only (runc's libcontainer/rootfs_linux.go).  Without a
    cgroup namespace a new mount would show the host's whole tree, so each of our
    cgroup directories is bound there instead, as runc binds them.
    """
    from pykvm.container.runtime.cgroups import detect
    ro = flags & lib.MS_RDONLY
    base = lib.MS_NOSUID | lib.MS_NODEV | lib.MS_NOEXEC
    if detect() == "v2":
        if cgroupns:
            _mount_on(root, dest, "cgroup", "cgroup2", base | ro, None)
        else:
            _bind_own_cgroup(root, dest, "/sys/fs/cgroup", "", base | ro)
        return
    _mount_on(root, dest, "tmpfs", "tmpfs", base, "mode=755")
    # Speed: the tmpfs is ours and brand new (no link in it to resolve), so each
    # hierarchy's directory is made and mounted on relative to one checked fd of
    # it, not looked up from the rootfs again: ~0.5 ms of a ~13 ms launch.
    tmpfs = open_target(root, dest)
    try:
        for name, options, mount_point in host_cgroup_v1_hierarchies():
            try:
                os.mkdir(name, 0o755, dir_fd=tmpfs)
            except FileExistsError:         # listed twice: the host's /sys is bound in (rootless)
                pass
            try:
                if not cgroupns:
                    _bind_own_cgroup(root, f"{dest}/{name}", mount_point, options, base | ro)
                    continue
                mount("cgroup", f"/proc/self/fd/{tmpfs}/{name}", "cgroup", base | ro, options)
            except SyscallError as e:
                if e.errno not in (errno.EPERM, errno.EBUSY):   # where a user namespace may not mount
                    raise                                        # a v1 hierarchy, the tree stays empty
                break
    finally:
        os.close(tmpfs)
    if ro:
        _remount(root, dest, lib.MS_RDONLY | base)


def _bind_own_cgroup(root: str, dest: str, mount_point: str, options: str, flags: int) -> None:
    """Bind our cgroup in one hierarchy (the line of /proc/self/cgroup whose controllers are
    `options`'s; "" for v2) from its host mount point onto `dest`, then remount it with `flags`."""
    wanted = {o for o in options.split(",") if o} - {"rw", "ro"}
    for line in open("/proc/self/cgroup").read().splitlines():
        _, names, path = line.split(":", 2)
        if set(names.split(",") if names else []) == wanted:
            _mount_on(root, dest, mount_point + path.rstrip("/"), None, lib.MS_BIND, None)
            _remount(root, dest, flags)
            return


def host_cgroup_v1_hierarchies() -> list[tuple[str, str, str]]:
    """(directory name, mount options, mount point) of each v1 hierarchy in this mount namespace."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] != "cgroup":
                continue
            opts = [o for o in fields[sep + 3].split(",") if o not in ("rw", "ro")]
            out.append((os.path.basename(fields[4]), ",".join(opts), fields[4]))
    return out


def populate_dev(root: str) -> None:
    """The minimal /dev: device nodes like the host's, plus the usual symlinks.

    As root we mknod(2) them, as runc does; in a user namespace mknod is not
    allowed, so we bind-mount the host's nodes instead.
    """
    dev = secure_join(root, "/dev")           # our fresh tmpfs: nothing in it can be a link yet
    for name in DEVICES:
        host = os.stat(f"/dev/{name}")
        try:
            os.mknod(os.path.join(dev, name), stat.S_IMODE(host.st_mode) | stat.S_IFCHR, host.st_rdev)
            os.chmod(os.path.join(dev, name), stat.S_IMODE(host.st_mode))     # not cut by the umask
            os.chown(os.path.join(dev, name), host.st_uid, host.st_gid)
        except PermissionError:
            _mount_on(root, f"/dev/{name}", f"/dev/{name}", None, lib.MS_BIND, None, directory=False)
    for name, target in DEV_LINKS.items():
        if name == "core" and not os.path.exists("/proc/kcore"):
            continue
        try:
            os.symlink(target, os.path.join(dev, name))
        except FileExistsError:
            pass


def make_device_nodes(root: str, nodes: list[DeviceNode]) -> None:
    """Step 3b: linux.devices, made as runc makes them: mknod(2), then the mode (not cut by
    the umask) and owner; in a user namespace, where mknod is refused, the host's node at
    the same path is bound instead.  A node already there must be the same device (the
    spec: "MUST generate an error" otherwise); /dev/null listed again is fine."""
    dev = secure_join(root, "/dev")
    for node in nodes:
        path = secure_join(root, node.path)
        if not path.startswith(dev + "/"):
            raise ContainerError(f"linux.devices: {node.path} resolves to {path}, outside the container's /dev")
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        try:
            os.mknod(path, node.mode | NODE_TYPES[node.type], os.makedev(node.major, node.minor))
        except FileExistsError:
            _check_same_node(path, node)
            continue
        except PermissionError:
            _mount_on(root, node.path, node.path, None, lib.MS_BIND, None, directory=False)
            continue
        os.chmod(path, node.mode)
        os.chown(path, node.uid, node.gid)


def _check_same_node(path: str, node: DeviceNode) -> None:
    st = os.lstat(path)
    same = stat.S_IFMT(st.st_mode) == NODE_TYPES[node.type] and \
        (node.type == "p" or st.st_rdev == os.makedev(node.major, node.minor))
    if not same:
        raise ContainerError(f"linux.devices: {node.path} already exists and is not "
                             f"{node.type} {node.major}:{node.minor}")


def mask_paths(root: str, paths: list[str]) -> None:
    """Step 4a: hide paths: /dev/null over a file, an empty read-only tmpfs over a directory."""
    for path in paths:
        real = secure_join(root, path)
        if not os.path.lexists(real):
            continue
        if os.path.isdir(real):
            _mount_on(root, path, "tmpfs", "tmpfs", lib.MS_RDONLY, None)
        else:
            _mount_on(root, path, "/dev/null", None, lib.MS_BIND, None, directory=False)


def readonly_paths(root: str, paths: list[str]) -> None:
    """Step 4b: make paths read-only: bind each onto itself, then remount it ro."""
    for path in paths:
        real = secure_join(root, path)
        if not os.path.lexists(real):
            continue
        _mount_on(root, path, real, None, lib.MS_BIND | lib.MS_REC, None,
                  directory=os.path.isdir(real))
        _remount(root, path, lib.MS_RDONLY | lib.MS_NOSUID | lib.MS_NODEV | lib.MS_NOEXEC)


def pivot_into(root: str) -> None:
    """Step 5: make `root` the root of this mount namespace and drop the host's tree.

    pivot_root(".", ".") stacks the old root on top of the new one (runc's
    trick: no put_old directory needed); unmounting "." with MNT_DETACH then
    removes the old root, and with it every host path, from our view.
    """
    os.chdir(root)
    pivot_root(".", ".")
    umount(".", lib.MNT_DETACH)
    os.chdir("/")


def move_into(root: str) -> None:
    """Step 5 without pivot_root (runc's --no-pivot, its msMoveRoot), for a root that
    pivot_root(2) refuses: one on the initial ramfs, which is the root of the first mount
    namespace and can never be unmounted, so it cannot be put under another root either.

    The root mount is moved onto "/" (MS_MOVE) and chroot(2) makes it ours.  The host's tree
    stays in this mount namespace, under the container's root, out of every path's reach:
    ".." at our root stays there; a walk that climbs out of a chroot made inside reaches the
    old "/" and steps down into the mount on top of it, which is ours again; setns(2) into
    this namespace does the same (its root, then down the mounts stacked on it).  What does
    not need a path is the kernel's own census of mounts: hide_host_views first.
    """
    hide_host_views(root)
    os.chdir(root)
    mount(root, "/", None, lib.MS_MOVE, None)
    os.chroot(".")
    os.chdir("/")


@dataclass(frozen=True)
class MountInfo:
    """The fields of a /proc/self/mountinfo line that pykvm reads (proc(5))."""

    root: str                 # field 4: the directory of the filesystem mounted here ("/": all of it)
    mount_point: str          # field 5, as our root sees it
    fstype: str               # the first field after the " - " separator


def read_mountinfo(path: str = "/proc/self/mountinfo") -> list[MountInfo]:
    """This mount namespace's mounts that our root can reach, octal escapes (\\040) undone."""
    def unescape(text: str) -> str:
        return text.encode().decode("unicode_escape")
    mounts = []
    with open(path) as f:
        for line in f:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            mounts.append(MountInfo(unescape(fields[3]), unescape(fields[4]), fstype))
    return mounts


# The filesystems whose host mounts move_into takes away (runc's msMoveRoot).
HOST_VIEW_TYPES = ("proc", "sysfs")


def host_views(mounts: list[MountInfo], root: str) -> list[str]:
    """The mount points of whole proc and sysfs filesystems outside `root`.

    The kernel lets a process that is not root on the host (in a user namespace) mount a
    new proc or sysfs only if one is already fully visible in its mount namespace
    (fs/namespace.c, mount_too_revealing): else a fresh proc would undo the masked paths.
    After pivot_root the host's went away with the old root; after a move they are still
    in the namespace, out of sight but counted.
    """
    inside = root.rstrip("/") + "/"
    return [m.mount_point for m in mounts
            if m.fstype in HOST_VIEW_TYPES and m.root == "/"
            and m.mount_point != root and not m.mount_point.startswith(inside)]


def hide_host_views(root: str) -> None:
    """Unmount host_views (make_private made sure that reaches no other namespace), or where
    the kernel refuses (EINVAL, EPERM: in a user namespace the mounts copied from the host
    are locked together) cover it with an empty tmpfs, as runc does."""
    for point in host_views(read_mountinfo(), root):
        try:
            umount(point, lib.MNT_DETACH)
        except SyscallError as e:
            if e.errno == errno.ENOENT:               # under one unmounted already
                continue
            if e.errno not in (errno.EINVAL, errno.EPERM):
                raise
            mount("tmpfs", point, "tmpfs", 0, None)


def mount_console(slave: int) -> None:
    """Step 5b (with a terminal): bind the container's pty slave onto /dev/console, as runc
    does, so programs that write to the console reach the container's terminal."""
    _mount_on("/", "/dev/console", f"/proc/self/fd/{slave}", None, lib.MS_BIND, None,
              directory=False)


def remount_root_readonly() -> None:
    """Step 6: `--read-only` (root.readonly in config.json)."""
    current = os.statvfs("/").f_flag & LOCKED_FLAGS
    try:
        mount(None, "/", None, lib.MS_BIND | lib.MS_REMOUNT | lib.MS_RDONLY | current, None)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise


def make_busybox_rootfs(root, busybox: str = "/bin/busybox"):
    """A minimal userland to experiment with: busybox-static and its applet links.

    The same as `cp /bin/busybox ROOT/bin/ && chroot ROOT /bin/busybox --install -s /bin`,
    plus empty /proc /sys /dev /tmp and an /etc/passwd with root and `user` (1000).
    """
    import shutil
    import subprocess
    from pathlib import Path
    root = Path(root)
    if not os.path.exists(busybox):
        raise ContainerError(f"{busybox} not found: install busybox-static (apt-get install busybox-static)")
    (root / "bin").mkdir(parents=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout
    for applet in applets.split():
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    for d in ("proc", "sys", "dev", "etc", "tmp"):
        (root / d).mkdir()
    (root / "tmp").chmod(0o1777)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\nuser:x:1000:\n")
    return root
