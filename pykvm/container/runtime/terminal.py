"""The container's terminal: a pseudo-terminal from the container's OWN devpts (`-t`).

A pty pair is a master (the side a terminal emulator or ssh holds) and a
slave (the side a shell uses as its stdin/stdout/stderr), pty(7).  Each devpts
mount made with `newinstance` is a separate set of ptys, numbered from 0, with
its own `ptmx` inside (Documentation/filesystems/devpts.rst).  The container
gets a fresh instance at /dev/pts (rootfs.py), so a pty made on the host
(/dev/pts/N of the host's instance) has no name inside: `tty` says "not a tty".

So, like runc's "new terminal" mode (runc docs/terminals.md, libcontainer
setupConsole), the pty is made *inside*, after pivot_root, and its master is
sent out over a unix socket:

    host side (launcher, or monitor for -d)   init, inside the container, after pivot_root
    ---------------------------------------   ---------------------------------------------
    socketpair(AF_UNIX) ---------------------> open_pty():
                                                 open /dev/ptmx (a link to pts/ptmx)
                                                 check_ptmx(): char 5:2, inode 2, on /dev/pts
                                                 TIOCSPTLCK 0        (unlockpt(3))
                                                 TIOCGPTPEER         (the slave, no path lookup)
                                               set_winsize(): the host terminal's size
                                               mount_console(): slave bound onto /dev/console
              master <---- SCM_RIGHTS -------- send_master(), then close it
    relay(): stdin -> master                   the command: setsid(), slave -> fds 0,1,2,
             master -> stdout (or the log)       ioctl(0, TIOCSCTTY), execve(2)

Inside, `tty` prints /dev/pts/0, and the master never lives in the container:
init closes its copy as soon as it is sent, and the command gets the slave as
fds 0, 1 and 2 only.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import socket
import stat
import struct

from pykvm.container.runtime.syscalls import ffi, lib
from pykvm.errors import ContainerError

__all__ = ["PTMX", "PTS_DIR", "open_pty", "check_ptmx", "ptsname", "get_winsize",
           "set_winsize", "copy_winsize", "send_master", "receive_master", "give_to_user",
           "raw_mode", "relay", "new_console", "our_terminal", "attach", "connect_console_socket"]

PTMX = "/dev/ptmx"                # runc makes it a symlink to pts/ptmx (rootfs.py DEV_LINKS)
PTS_DIR = "/dev/pts"              # the container's devpts instance (newinstance)
PTMX_MAJOR, PTMX_MINOR = 5, 2     # <linux/major.h> TTYAUX_MAJOR; ptmx is minor 2
PTMX_INO = 2                      # fs/devpts/inode.c mknod_ptmx(): ptmx is inode 2 of each devpts
PTY_SLAVE_MAJORS = range(136, 144)  # <linux/major.h> UNIX98_PTY_SLAVE_MAJOR, 8 majors of slaves
NAME_MAX = 64                     # room for "/dev/pts/N" sent beside the master
CHUNK = 65536                     # bytes per read of the master or stdin


# --- inside the container: make the pty -------------------------------------------

def open_pty(ptmx: str = PTMX, pts: str = PTS_DIR) -> tuple[int, int]:
    """A new (master, slave) pair from the devpts at `pts`; both fds close-on-exec."""
    master = os.open(ptmx, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        check_ptmx(master, ptmx, pts)
        fcntl.ioctl(master, lib.TIOCSPTLCK, struct.pack("i", 0))      # unlockpt(3)
        return master, _peer(master, pts)
    except BaseException:
        os.close(master)
        raise


def new_console(sock: socket.socket, winsize: tuple[int, int] | None, prepare=None) -> int:
    """runc's setupConsole, run inside the container: a pty sized like the host's terminal;
    `prepare(slave)` (e.g. bind it onto /dev/console); the master sent out over `sock` and
    closed here.  Returns the slave, to become the command's stdio."""
    master, slave = open_pty()
    try:
        if winsize:
            set_winsize(master, winsize)
        if prepare is not None:
            prepare(slave)
        send_master(sock, master, ptsname(master))
    except BaseException:
        os.close(slave)
        raise
    finally:
        os.close(master)                                 # the master never stays inside
    return slave


def connect_console_socket(path: str) -> socket.socket:
    """runc's --console-socket: the caller listens on this unix socket for the pty master."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        sock.close()
        raise ContainerError(f"cannot connect to the console socket {path}: {e.strerror}") from None
    return sock


def check_ptmx(fd: int, ptmx: str = PTMX, pts: str = PTS_DIR) -> None:
    """Refuse a ptmx that is not the one of the devpts mounted at `pts` (runc's checkPtmxHandle).

    The host's /dev/ptmx (devtmpfs) is char 5:2 too, but not inode 2 of the
    filesystem mounted on /dev/pts: its ptys would be the host's.
    """
    st = os.fstat(fd)
    ours = (stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == PTMX_MAJOR
            and os.minor(st.st_rdev) == PTMX_MINOR and st.st_ino == PTMX_INO
            and st.st_dev == os.stat(pts).st_dev)
    if not ours:
        raise ContainerError(f"{ptmx} is not the ptmx of the devpts mounted at {pts}: mount devpts "
                             f"with 'newinstance' at {pts} and make {ptmx} a symlink to pts/ptmx")


def _peer(master: int, pts: str) -> int:
    """The slave end: TIOCGPTPEER (Linux 4.13) needs no path; else open pts/N and check it."""
    flags = os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC
    try:
        return fcntl.ioctl(master, lib.TIOCGPTPEER, flags)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTTY):
            raise
    path = ptsname(master, pts)
    slave = os.open(path, flags | os.O_NOFOLLOW)
    st = os.fstat(slave)
    if (st.st_dev != os.stat(pts).st_dev or not stat.S_ISCHR(st.st_mode)
            or os.major(st.st_rdev) not in PTY_SLAVE_MAJORS):
        os.close(slave)
        raise ContainerError(f"{path} is not the slave of the pty just made in {pts}")
    return slave


def ptsname(master: int, pts: str = PTS_DIR) -> str:
    """The slave's name, ptsname(3): TIOCGPTN gives the pty's number in its devpts."""
    number, = struct.unpack("I", fcntl.ioctl(master, lib.TIOCGPTN, b"\0" * 4))
    return f"{pts}/{number}"


def give_to_user(fd: int, uid: int) -> None:
    """Make the pty the user's, so a non-root command can use its terminal (runc's
    fixStdioPermissions): only the owner changes; the devpts gid= option keeps the group."""
    if os.fstat(fd).st_uid == uid:
        return
    try:
        os.fchown(fd, uid, -1)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EROFS):   # an owner not mapped in our user namespace
            raise


# --- window size, tty_ioctl(4) ----------------------------------------------------

def get_winsize(fd: int) -> tuple[int, int] | None:
    """(rows, columns) of the terminal on fd, or None if fd is not a terminal."""
    ws = ffi.new("struct winsize *")
    if lib.ioctl_ptr(fd, lib.TIOCGWINSZ, ws) == -1:
        return None
    return ws.ws_row, ws.ws_col


def set_winsize(fd: int, size: tuple[int, int]) -> None:
    """TIOCSWINSZ: the kernel sends SIGWINCH to the terminal's foreground process group."""
    ws = ffi.new("struct winsize *")
    ws.ws_row, ws.ws_col = size
    if lib.ioctl_ptr(fd, lib.TIOCSWINSZ, ws) == -1:
        raise OSError(ffi.errno, os.strerror(ffi.errno))


def copy_winsize(src: int, dst: int) -> None:
    """Give dst the window size of src (nothing if src is not a terminal)."""
    size = get_winsize(src)
    if size is not None:
        with contextlib.suppress(OSError):
            set_winsize(dst, size)


# --- the master's way out: SCM_RIGHTS over a unix socket, unix(7) ----------------------

def send_master(sock: socket.socket, master: int, name: str) -> None:
    """Send the master fd (and the slave's name, as runc does) to the other end of `sock`."""
    socket.send_fds(sock, [name.encode()], [master])


def receive_master(sock: socket.socket) -> tuple[int, str] | None:
    """The master fd and the slave's name; None if the container ended before sending one."""
    data, fds, _flags, _addr = socket.recv_fds(sock, NAME_MAX, 1)
    if not fds:
        return None
    os.set_inheritable(fds[0], False)        # Python 3.11's recv_fds drops MSG_CMSG_CLOEXEC
    return fds[0], data.decode(errors="replace")


# --- the host end: our terminal <-> the master -------------------------------------

def our_terminal() -> int:
    """The fd of the terminal we run in: stdin if it is one, else stdout."""
    stdin = 0
    return stdin if os.isatty(stdin) else 1


def attach(sock: socket.socket, pid: int, interactive: bool) -> None:
    """Receive the container's pty master on `sock` and connect it to our terminal (raw)
    until process `pid` has ended; with `interactive`, our keys go in too."""
    received = receive_master(sock)        # sent before the command ran
    if received is None:
        return                             # the container ended before it made a pty
    master = received[0]
    ours = our_terminal()
    try:
        with raw_mode(ours, keys=interactive):
            relay(master, 1, pid, stdin=0 if interactive else None, terminal=ours)
    finally:
        os.close(master)                   # if our output went away first: the container gets SIGHUP


@contextlib.contextmanager
def raw_mode(fd: int, keys: bool = True):
    """The terminal on fd in raw mode while active, its settings restored on every way out.

    Output is always passed through untouched (OPOST off): the container's pty has
    already turned "\n" into "\r\n".  With `keys` every key goes to the container as
    typed (Ctrl-C included) and nothing is echoed twice; without, our keyboard keeps its
    usual meaning (Ctrl-C is a SIGINT for us to forward).  No-op for a non-terminal.
    """
    import termios
    import tty
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    if saved is not None:
        if keys:
            tty.setraw(fd)
        else:
            attrs = termios.tcgetattr(fd)
            attrs[tty.OFLAG] &= ~termios.OPOST
            termios.tcsetattr(fd, termios.TCSADRAIN, attrs)
    try:
        yield
    finally:
        if saved is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _forward_winch(src: int, master: int):
    """While active: our terminal resized (SIGWINCH) -> the container's pty resized."""
    try:
        old = signal.signal(signal.SIGWINCH, lambda *_: copy_winsize(src, master))
    except ValueError:                                  # not the main thread: no resize forwarding
        yield
        return
    copy_winsize(src, master)                           # a resize during the container's setup
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, old)


def relay(master: int, output: int, pid: int, stdin: int | None = None,
          terminal: int | None = None) -> None:
    """Copy master -> output (and stdin -> master) until process `pid` has ended and the
    master has nothing more to say.  The size of `terminal` (ours) follows to the pty."""
    pidfd = os.pidfd_open(pid)
    watch = [master, pidfd] + ([stdin] if stdin is not None else [])
    resize = _forward_winch(terminal, master) if terminal is not None else contextlib.nullcontext()
    try:
        with resize:
            while True:
                ready, _, _ = select.select(watch, [], [])      # PEP 475: EINTR is retried
                if master in ready and not _copy(master, output):
                    return                                  # EIO: no slave is open any more
                if stdin in ready and not _copy(stdin, master):
                    watch.remove(stdin)                     # end of our input: stop reading it
                if pidfd in ready and master not in ready:
                    return
    finally:
        os.close(pidfd)


def _copy(src: int, dst: int) -> bool:
    """One read from src written to dst; False at end of file, on EIO from a pty master
    (no slave open any more) or when dst has gone (EPIPE: `pykvm container run -t ... | head`)."""
    try:
        data = os.read(src, CHUNK)
        view = memoryview(data)
        while view:
            view = view[os.write(dst, view):]
    except OSError:
        return False
    return bool(data)
