"""Unit tests (no root): cgroup backends on a fake tree, config.json parsing, path resolution."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pykvm.container.image.runconfig import command_line, config_from_image
from pykvm.container.runtime import bundle, cgroups, rootfs
from pykvm.container.runtime.cgroups import CgroupV1, CgroupV2, Limits
from pykvm.container.runtime.config import RunConfig
from pykvm.container.runtime.users import parse_user
from pykvm.errors import ConfigError, ContainerError


# --- cgroups -------------------------------------------------------------------------------

def fake_v2(root):
    """A directory that looks like a cgroup2 mount with memory, pids and cpu available."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    return root


def test_detect_v2_v1_none(tmp_path):
    assert cgroups.detect(fake_v2(tmp_path / "v2")) == "v2"
    (tmp_path / "v1" / "memory").mkdir(parents=True)
    assert cgroups.detect(tmp_path / "v1") == "v1"
    (tmp_path / "empty").mkdir()
    assert cgroups.detect(tmp_path / "empty") is None


def test_v2_create_writes_limits_and_enables_controllers(tmp_path):
    root = fake_v2(tmp_path / "cg")
    (root / "pykvm").mkdir()
    (root / "pykvm" / "cgroup.controllers").write_text("cpu memory pids\n")
    cg = CgroupV2("pykvm/c1", root)
    cg.create(Limits(memory=64 << 20, pids=64, cpu_quota=50_000))
    d = root / "pykvm" / "c1"
    assert (d / "memory.max").read_text() == f"{64 << 20}\n"
    assert (d / "pids.max").read_text() == "64\n"
    assert (d / "cpu.max").read_text() == "50000 100000\n"
    assert (root / "cgroup.subtree_control").read_text().split() == ["+memory", "+pids", "+cpu"]
    assert (root / "pykvm" / "cgroup.subtree_control").read_text().split() == ["+memory", "+pids", "+cpu"]


@pytest.mark.parametrize("swap,swap_max", [(96 << 20, str(32 << 20)), (-1, "max")])
def test_v2_create_writes_shares_cpuset_and_swap(tmp_path, swap, swap_max):
    """cpu.shares as cpu.weight (runc's formula: 1024 -> 39), cpuset lists as given, and
    the OCI memory+swap as memory.swap.max, which counts swap alone."""
    root = fake_v2(tmp_path / "cg")
    (root / "cgroup.controllers").write_text("cpu cpuset memory pids\n")
    CgroupV2("c1", root).create(Limits(memory=64 << 20, memory_swap=swap, cpu_shares=1024,
                                       cpu_cpus="0-1", cpu_mems="0"))
    d = root / "c1"
    assert [(d / f).read_text() for f in ("cpu.weight", "cpuset.cpus", "cpuset.mems", "memory.swap.max")] == \
        ["39\n", "0-1\n", "0\n", f"{swap_max}\n"]
    assert (root / "cgroup.subtree_control").read_text().split() == ["+memory", "+cpu", "+cpuset"]


@pytest.mark.parametrize("shares,weight", [(2, 1), (1024, 39), (262144, 10000)])
def test_cpu_weight_spans_the_v2_range(shares, weight):
    assert cgroups.cpu_weight(shares) == weight


def test_v1_create_writes_shares_cpuset_and_swap(tmp_path):
    for c in ("memory", "cpu", "cpuset"):
        (tmp_path / c).mkdir()
    (tmp_path / "cpuset" / "cpuset.cpus").write_text("0-1\n")
    (tmp_path / "cpuset" / "cpuset.mems").write_text("0\n")
    CgroupV1({c: "c1" for c in ("memory", "cpu", "cpuset")}, tmp_path).create(
        Limits(memory=64 << 20, memory_swap=96 << 20, cpu_shares=512, cpu_cpus="1"))
    assert (tmp_path / "memory/c1/memory.memsw.limit_in_bytes").read_text() == f"{96 << 20}\n"
    assert (tmp_path / "cpu/c1/cpu.shares").read_text() == "512\n"
    assert (tmp_path / "cpuset/c1/cpuset.cpus").read_text() == "1\n"
    assert (tmp_path / "cpuset/c1/cpuset.mems").read_text() == "0\n"      # the parent's, copied


def test_v2_missing_controller_is_reported(tmp_path):
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu\n")              # memory not delegated
    with pytest.raises(ContainerError, match="memory"):
        CgroupV2("pykvm/c1", root).create(Limits(memory=1 << 20))


def test_v2_oom_kills_read_from_memory_events(tmp_path):
    root = fake_v2(tmp_path / "cg")
    cg = CgroupV2("c1", root)
    cg.create(Limits())
    (root / "c1" / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\n")
    assert cg.oom_kills() == 1


def test_v1_create_per_controller(tmp_path):
    for c in ("memory", "pids", "cpu"):
        (tmp_path / c).mkdir()
    cg = CgroupV1({"memory": "a/pykvm/c1", "pids": "pykvm/c1", "cpu": "pykvm/c1"}, tmp_path)
    cg.create(Limits(memory=1 << 20, pids=10, cpu_quota=25_000))
    assert (tmp_path / "memory/a/pykvm/c1/memory.limit_in_bytes").read_text() == f"{1 << 20}\n"
    assert (tmp_path / "pids/pykvm/c1/pids.max").read_text() == "10\n"
    assert (tmp_path / "cpu/pykvm/c1/cpu.cfs_quota_us").read_text() == "25000\n"
    assert (tmp_path / "cpu/pykvm/c1/cpu.cfs_period_us").read_text() == "100000\n"
    (tmp_path / "memory/a/pykvm/c1/memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    assert cg.oom_kills() == 3


def test_open_cgroup_nests_under_own_cgroup(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("8:pids:/\n4:memory:/session/x\n1:cpu:/\n0::/user.slice/me\n")
    for c in ("memory", "pids", "cpu"):
        (tmp_path / c).mkdir()
    v1 = cgroups.open_cgroup("c9", root=tmp_path, version="v1", proc_self_cgroup=str(proc))
    assert sorted(map(str, v1.dirs())) == sorted(str(tmp_path / p) for p in
                                                  ("memory/session/x/pykvm/c9", "pids/pykvm/c9", "cpu/pykvm/c9"))
    v2 = cgroups.open_cgroup("c9", root=tmp_path, version="v2", proc_self_cgroup=str(proc))
    assert v2.dirs() == [str(tmp_path / "user.slice/me/pykvm/c9")]


@pytest.mark.parametrize("text,value", [("64M", 64 << 20), ("1g", 1 << 30), ("512k", 512 << 10),
                                        ("100", 100), ("1.5m", 3 << 19), ("64MB", 64 << 20)])
def test_parse_size(text, value):
    assert cgroups.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "12Q", "-1M", "M", "0", "lots"])
def test_parse_size_rejects(text):
    with pytest.raises(ConfigError):
        cgroups.parse_size(text)


def test_parse_cpus():
    assert cgroups.parse_cpus("0.5") == 50_000
    for bad in ("zero", "0", "-1", "1000"):
        with pytest.raises(ConfigError):
            cgroups.parse_cpus(bad)


# --- rootfs path resolution ------------------------------------------------------------------

def test_secure_join_keeps_symlinks_inside(tmp_path):
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "abs").symlink_to("/")                     # absolute: restarts at root, not the host's /
    (root / "up").symlink_to("../../../..")            # climbs: clamped at root
    (root / "proc").symlink_to("/etc/../real")
    r = str(root)
    assert rootfs.secure_join(r, "/abs/etc") == f"{r}/etc"
    assert rootfs.secure_join(r, "/up/etc/passwd") == f"{r}/etc/passwd"
    assert rootfs.secure_join(r, "/proc/x") == f"{r}/real/x"
    assert rootfs.secure_join(r, "../../x") == f"{r}/x"


@pytest.mark.parametrize("swapped", ["parent", "target"])
def test_open_target_refuses_a_symlink_swapped_in_after_resolving(tmp_path, monkeypatch, swapped):
    """The race's worst moment: between secure_join and the open, a component becomes a
    symlink to a host directory.  Nothing may be created there, and the open is refused."""
    root, host = tmp_path / "root", tmp_path / "host"
    (root / "mnt" / "vol").mkdir(parents=True)
    host.mkdir()
    resolve = rootfs.secure_join

    def resolve_then_swap(r, dest):
        path = resolve(r, dest)
        victim = root / "mnt" if swapped == "parent" else root / "mnt" / "vol"
        victim.rename(tmp_path / "moved")
        victim.symlink_to(host)
        return path

    monkeypatch.setattr(rootfs, "secure_join", resolve_then_swap)
    with pytest.raises(ContainerError, match="changed while being mounted on .* a symlink"):
        rootfs.open_target(str(root), "/mnt/vol/new" if swapped == "parent" else "/mnt/vol")
    assert os.listdir(host) == []


def test_open_target_creates_what_is_missing_inside(tmp_path):
    root = tmp_path / "root"
    (root / "abs").mkdir(parents=True)
    fd = rootfs.open_target(str(root), "/a/b/c")
    os.close(fd)
    fd = rootfs.open_target(str(root), "/a/file", directory=False)
    assert os.readlink(f"/proc/self/fd/{fd}") == f"{root}/a/file"
    os.close(fd)
    assert (root / "a" / "b" / "c").is_dir() and (root / "a" / "file").is_file()


def test_secure_join_symlink_loop(tmp_path):
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(ContainerError, match="too many symbolic links"):
        rootfs.secure_join(str(tmp_path), "/a")


def test_host_views_are_whole_proc_and_sysfs_mounts_outside_the_root():
    """--no-pivot takes these away (rootfs.move_into); a path that only starts like the
    root's ("/b/rootfs2") is outside it."""
    M = rootfs.MountInfo
    mounts = [M("/", "/", "ext4"), M("/", "/proc", "proc"), M("/", "/sys", "sysfs"),
              M("/", "/sys/fs/cgroup", "tmpfs"), M("/sys", "/run/sys-part", "proc"),
              M("/", "/b/rootfs2/proc", "proc"), M("/", "/b/rootfs/proc", "proc"),
              M("/", "/b/rootfs/sys", "sysfs"), M("/", "/b/rootfs", "proc")]
    assert rootfs.host_views(mounts, "/b/rootfs") == ["/proc", "/sys", "/b/rootfs2/proc"]


def test_parse_options():
    from pykvm.container.runtime.syscalls import lib
    flags, data = rootfs.parse_options(["nosuid", "ro", "mode=755", "size=1k", "rw"])
    assert flags == lib.MS_NOSUID
    assert data == "mode=755,size=1k"


# --- config.json ------------------------------------------------------------------------------

def runc_like_spec() -> dict:
    return {
        "ociVersion": "1.0.2-dev",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": ["sh"],
                    "env": ["PATH=/bin"], "cwd": "/",
                    "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
                                     "permitted": ["CAP_KILL"]},
                    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                    "noNewPrivileges": True},
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "runc",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/data", "type": "bind", "source": "data", "options": ["rbind", "ro"]}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network"}],
                  "resources": {"memory": {"limit": 1 << 24}, "pids": {"limit": 32},
                                "cpu": {"quota": 20000, "period": 100000}},
                  "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"],
                  "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}]},
    }


def test_config_from_spec_reads_the_fields(tmp_path):
    cfg = bundle.config_from_spec(runc_like_spec(), str(tmp_path))
    assert cfg.args == ["sh"] and cfg.env == ["PATH=/bin"] and cfg.hostname == "runc"
    assert cfg.rootfs == str(tmp_path / "rootfs") and cfg.readonly
    assert cfg.namespaces == {"pid": None, "mount": None, "network": None}
    assert cfg.limits == Limits(memory=1 << 24, pids=32, cpu_quota=20000, cpu_period=100000)
    assert cfg.mounts[1].source == str(tmp_path / "data") and cfg.mounts[1].is_bind
    assert cfg.uid_mappings[0].line() == "0 100000 65536\n"
    assert cfg.rlimits == [("RLIMIT_NOFILE", 1024, 1024)]
    assert cfg.init is False                            # the process is PID 1, as with runc


def test_minus_one_means_no_limit(tmp_path):
    """config-linux.md "Memory": -1 is unlimited; runc treats pids.limit -1 the same."""
    spec = runc_like_spec()
    spec["linux"]["resources"] = {"memory": {"limit": -1}, "pids": {"limit": -1}, "cpu": {"quota": -1}}
    assert bundle.config_from_spec(spec, str(tmp_path)).limits == Limits()
    spec["linux"]["resources"] = {"pids": {"limit": -2}}
    with pytest.raises(ConfigError, match="linux.resources.pids.limit must be positive, not -2"):
        bundle.config_from_spec(spec, str(tmp_path))


@pytest.mark.parametrize("path,value,field", [
    (("process", "args"), [], "process.args"),
    (("process", "args"), "sh", "process.args"),
    (("process", "cwd"), "tmp", "process.cwd"),
    (("process", "user", "uid"), "root", "process.user.uid"),
    (("root", "path"), 7, "root.path"),
    (("linux", "namespaces"), [{"type": "time-travel"}], "linux.namespaces[0].type"),
    (("linux", "resources", "memory", "limit"), -5, "linux.resources.memory.limit"),
    (("process", "capabilities", "bounding"), ["CAP_FLY"], "process.capabilities.bounding"),
    (("process", "rlimits"), [{"type": "RLIMIT_NOPE", "soft": 1, "hard": 1}], "process.rlimits[0].type"),
    (("mounts",), [{"destination": "relative"}], "mounts[0].destination"),
])
def test_invalid_config_names_the_field(tmp_path, path, value, field):
    spec = runc_like_spec()
    node = spec
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError) as e:
        bundle.config_from_spec(spec, str(tmp_path))
    assert field in str(e.value), str(e.value)


def test_load_bundle_errors(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        bundle.load_bundle(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        bundle.load_bundle(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"ociVersion": "1.0.2"}))
    with pytest.raises(ConfigError, match="process must be an object"):
        bundle.load_bundle(str(tmp_path))


# --- RunConfig -------------------------------------------------------------------------------

def test_run_config_validation(tmp_path):
    with pytest.raises(ConfigError, match="no command"):
        RunConfig(args=[], rootfs=str(tmp_path)).finalized()
    with pytest.raises(ContainerError, match="does not exist"):
        RunConfig(args=["sh"], rootfs=str(tmp_path / "missing")).finalized()
    with pytest.raises(ConfigError, match="absolute"):
        RunConfig(args=["sh"], rootfs=str(tmp_path), cwd="tmp").finalized()
    with pytest.raises(ConfigError, match="mount namespace"):
        RunConfig(args=["sh"], rootfs=str(tmp_path), namespaces={"pid": None}).finalized()


def test_parse_user(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\nweb:x:33:44::/:/bin/sh\n")
    (tmp_path / "etc" / "group").write_text("root:x:0:\nstaff:x:50:\n")
    assert parse_user("1000:1000") == (1000, 1000)
    assert parse_user("web", str(tmp_path)) == (33, 44)
    assert parse_user("web:staff", str(tmp_path)) == (33, 50)
    with pytest.raises(ConfigError, match="unknown user"):
        parse_user("nobody-here", str(tmp_path))
    top = tmp_path / "top-layer"
    top.mkdir()                                   # a layer without /etc/passwd: look below it
    assert parse_user("web", [str(top), str(tmp_path)]) == (33, 44)


@pytest.mark.parametrize("line", ["web:x:33\n", "web:x:abc:44::/:/bin/sh\n", "web\n"])
def test_parse_user_refuses_a_bad_passwd_entry_with_one_line(tmp_path, line):
    """The image's own /etc/passwd may hold anything: a bad entry is a ConfigError naming it."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\n" + line)
    with pytest.raises(ConfigError, match=r"/etc/passwd line 2: bad entry for 'web'"):
        parse_user("web", str(tmp_path))


def test_config_from_image_orders_layers_top_first(tmp_path):
    class Image:
        layers = ["/l/base", "/l/mid", "/l/top"]
        entrypoint = ["/bin/ep"]
        cmd = ["default"]
        env = ["PATH=/bin", "A=1"]
        working_dir = "/srv"
        user = "7:8"
    cfg = config_from_image(Image(), ["given"])
    assert cfg.lower_dirs == ["/l/top", "/l/mid", "/l/base"]
    assert cfg.args == ["/bin/ep", "given"]
    assert (cfg.cwd, cfg.uid, cfg.gid, cfg.env) == ("/srv", 7, 8, ["PATH=/bin", "A=1"])
    assert config_from_image(Image()).args == ["/bin/ep", "default"]


def test_state_root_override(monkeypatch, tmp_path):
    from pykvm.container.runtime.state import state_root
    monkeypatch.setenv("PYKVM_STATE_ROOT", str(tmp_path))
    assert state_root() == str(tmp_path)
    monkeypatch.delenv("PYKVM_STATE_ROOT")
    assert str(state_root()).startswith("/run/pykvm" if os.geteuid() == 0 else "/")


def test_parse_signal():
    from pykvm.commands.container.run import parse_signal
    assert parse_signal("TERM") == 15 and parse_signal("SIGKILL") == 9 and parse_signal("2") == 2
    with pytest.raises(ConfigError):
        parse_signal("SIGFOO")


def test_in_user_namespace_tells_the_initial_one_from_another():
    """uid_map "0 0 4294967295" is the initial user namespace; `unshare --map-root-user`
    makes another, where a process is root too but rootless as far as cgroups go."""
    from pykvm.container.runtime.namespaces import in_user_namespace
    probe = [sys.executable, "-c",
             "from pykvm.container.runtime.namespaces import in_user_namespace as f; print(f())"]
    r = subprocess.run(["unshare", "--user", "--map-root-user", *probe], capture_output=True, text=True,
                       timeout=60)
    if r.returncode != 0 and "unshare failed" in r.stderr:
        pytest.skip(f"no user namespaces here: {r.stderr.strip()}")
    assert (r.returncode, r.stdout) == (0, "True\n"), r.stderr
    with open("/proc/self/uid_map") as f:
        initial = f.read().split() == ["0", "0", "4294967295"]
    assert in_user_namespace() is not initial


# --- the container's terminal (terminal.py), on the host's own ptys --------------------------

def test_check_ptmx_refuses_a_ptmx_that_is_not_on_the_devpts():
    from pykvm.container.runtime import terminal
    fd = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY)       # devtmpfs's node, not devpts's inode 2
    try:
        with pytest.raises(ContainerError, match="not the ptmx of the devpts mounted at /dev/pts"):
            terminal.check_ptmx(fd, "/dev/ptmx", "/dev/pts")
    finally:
        os.close(fd)


def test_master_travels_over_a_unix_socket_with_its_size():
    import socket
    from pykvm.container.runtime import terminal
    master, slave = os.openpty()
    here, there = socket.socketpair()
    try:
        assert terminal.ptsname(master) == os.ttyname(slave)
        terminal.set_winsize(master, (12, 34))
        terminal.send_master(here, master, terminal.ptsname(master))
        received, name = terminal.receive_master(there)
        assert received != master and name == os.ttyname(slave)
        assert not os.get_inheritable(received), "a received master must be close-on-exec"
        assert terminal.get_winsize(received) == (12, 34)
        os.write(slave, b"x")
        assert os.read(received, 1) == b"x", "the same pty"
        os.close(received)
        here.close()
        assert terminal.receive_master(there) is None, "sender gone without a master"
    finally:
        for fd in (master, slave):
            os.close(fd)
        there.close()


def test_raw_mode_restores_the_terminal_on_the_way_out():
    import termios
    from pykvm.container.runtime import terminal
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        with pytest.raises(RuntimeError):
            with terminal.raw_mode(slave):
                attrs = termios.tcgetattr(slave)
                assert not attrs[3] & termios.ICANON and not attrs[1] & termios.OPOST
                raise RuntimeError("an exception is a way out too")
        assert termios.tcgetattr(slave) == before
        with terminal.raw_mode(slave, keys=False):
            attrs = termios.tcgetattr(slave)
            assert attrs[3] & termios.ISIG and not attrs[1] & termios.OPOST
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_relay_copies_the_master_until_the_process_ends():
    import subprocess
    from pykvm.container.runtime import terminal
    master, slave = os.openpty()
    out_r, out_w = os.pipe()
    proc = subprocess.Popen(["sh", "-c", "echo one; sleep 0.2; echo two"], stdout=slave)
    os.close(slave)
    try:
        terminal.relay(master, out_w, proc.pid)
        os.close(out_w)
        assert os.read(out_r, 100) == b"one\r\ntwo\r\n"
    finally:
        proc.wait()
        os.close(master)
        os.close(out_r)


@pytest.mark.parametrize("with_layer", [False, True])
def test_state_remove_deletes_the_directory_but_follows_no_symlink(tmp_path, with_layer):
    """A bundle run leaves only files (removed without shutil); an image run's upper/
    layer, written by the container, may hold symlinks out: they are removed, not followed."""
    from pykvm.container.runtime.state import ContainerState, StateStore
    store = StateStore(tmp_path / "state")
    outside = tmp_path / "host"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    state_dir = Path(store.create(ContainerState(id="c1", name="c1")))
    (state_dir / "exit.json").write_text("{}")
    (state_dir / "escape").symlink_to(outside)
    if with_layer:
        (state_dir / "upper" / "etc").mkdir(parents=True)
        (state_dir / "upper" / "etc" / "escape").symlink_to(outside)
    store.remove("c1")
    assert not state_dir.exists()
    assert (outside / "precious").read_text() == "keep me"


def test_resolv_conf_drops_loopback_nameservers_in_an_own_network(tmp_path):
    from pykvm.container.runtime.etcfiles import LOCALHOST_HOSTS, hosts_file, resolv_conf
    host = tmp_path / "resolv.conf"
    host.write_text("# generated\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 10.0.0.2\nsearch lan\n")
    assert resolv_conf(False, str(host)) == "# generated\nnameserver 10.0.0.2\nsearch lan\n"
    assert resolv_conf(True, str(host)) == host.read_text()
    assert resolv_conf(False, str(tmp_path / "none")) == ""
    (tmp_path / "hosts").write_text("1.2.3.4 h\n")
    assert hosts_file(True, str(tmp_path / "hosts")) == "1.2.3.4 h\n"
    assert hosts_file(False, str(tmp_path / "hosts")) == LOCALHOST_HOSTS


def test_recorded_cgroup_join_files_are_the_containers_own(tmp_path):
    """`exec` joins the directories state.json recorded: v1 through `tasks`, v2 `cgroup.procs`."""
    for version, name in (("v1", "tasks"), ("v2", "cgroup.procs")):
        dirs = [tmp_path / version / "memory" / "box", tmp_path / version / "pids" / "box"]
        for d in dirs:
            d.mkdir(parents=True)
            (d / name).touch()
        fds = cgroups.Cgroup.from_dirs(version, [str(d) for d in dirs]).join_files()
        try:
            assert sorted(os.readlink(f"/proc/self/fd/{fd}") for fd in fds) == \
                sorted(str(d / name) for d in dirs)
        finally:
            cgroups.close_all(fds)


@pytest.mark.parametrize("args, new, argv", [
    ([], None, ["/bin/ep", "-x", "default"]),                 # ENTRYPOINT + CMD
    (["given"], None, ["/bin/ep", "-x", "given"]),            # args replace CMD only
    ([], "/bin/other", ["/bin/other"]),                       # --entrypoint drops CMD too
    (["a", "b"], "/bin/other", ["/bin/other", "a", "b"]),
    ([], "", ["default"]),                                    # "" clears ENTRYPOINT, CMD stays
    (["given"], "", ["given"])])
def test_command_line_follows_docker_s_entrypoint_rules(args, new, argv):
    assert command_line(["/bin/ep", "-x"], ["default"], args, new) == argv


@pytest.mark.parametrize("text, lines, expected", [
    (b"a\nb\nc\n", 2, b"b\nc\n"), (b"a\nb\nc", 2, b"b\nc"), (b"a\nb\nc\n", 5, b"a\nb\nc\n"),
    (b"a\nb\nc\n", 0, b""), (b"a\nb\nc\n", None, b"a\nb\nc\n"), (b"", 3, b""), (b"\n\n", 1, b"\n"),
    (b"x" * 100_000 + b"\n" + b"y" * 70_000 + b"\n", 1, b"y" * 70_000 + b"\n")])   # across chunks
def test_tail_offset(tmp_path, text, lines, expected):
    from pykvm.container.runtime.logs import tail_offset
    path = tmp_path / "log"
    path.write_bytes(text)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert text[tail_offset(fd, lines):] == expected
    finally:
        os.close(fd)


# --- the escape rules, without root (tests/container/test_escapes_*.py run them for real) -----

@pytest.mark.parametrize("path,ok", [("/pykvm/c1", True), ("c1", True), ("/a/b/../c", False), ("..", False),
                                     ("/", False), ("/./", False), ("", False), ("/a\0b", False)])
def test_cgroups_path_stays_inside_the_hierarchy(path, ok):
    if ok:
        assert cgroups.check_path(path) == path
    else:
        with pytest.raises(ConfigError, match="cgroupsPath"):
            cgroups.check_path(path)


def test_cgroups_path_may_not_be_our_own_cgroup_or_above(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/session/x\n0::/user.slice/me\n")
    (tmp_path / "memory").mkdir()
    for path in ("/session", "/session/x", "/session/"):
        with pytest.raises(ConfigError, match="own cgroup or one above it"):
            cgroups.open_cgroup("c", path, root=tmp_path, version="v1", proc_self_cgroup=str(proc))
    v1 = cgroups.open_cgroup("c", "/session/y", root=tmp_path, version="v1", proc_self_cgroup=str(proc))
    assert v1.dirs() == [str(tmp_path / "memory/session/y")]
    rel = cgroups.open_cgroup("c", "mine", root=tmp_path, version="v2", proc_self_cgroup=str(proc))
    assert rel.dirs() == [str(tmp_path / "user.slice/me/mine")]          # relative: below our own (runc)


def test_device_rules_in_writing_order():
    from pykvm.container.runtime.cgroups import DeviceRule, Limits
    rules = Limits(devices=[DeviceRule(True, "c", 1, 11, "r")]).device_rules()
    assert [r.line() for r in rules[:3]] == ["a", "c 1:11 r", "c *:* m"]
    assert rules[0].allow is False and len(rules) == 2 + len(cgroups.DEFAULT_DEVICES)


def test_device_program_stops_at_a_rule_that_matches_everything():
    """The verifier refuses unreachable instructions: nothing follows deny-all (checked last)."""
    from pykvm.container.runtime import bpf_devices
    from pykvm.container.runtime.cgroups import DeviceRule, Limits
    code = bpf_devices.program(Limits().device_rules())
    assert len(code) % 8 == 0
    assert code[-16:] == bpf_devices.program([DeviceRule(False)])[-16:]      # r0 = 0; exit
    assert len(bpf_devices.program([DeviceRule(False), DeviceRule(True)])) == 8 * (6 + 2)


@pytest.mark.parametrize("value", [-1, 2**31, 2**32 - 1, True, "0"])
def test_ids_outside_runcs_range(value):
    from pykvm.container.runtime.validate import check_id
    with pytest.raises(ConfigError, match="0-2147483647"):
        check_id(value, "uid")


@pytest.mark.parametrize("key,namespaces,message", [
    ("kernel.shmmax", {"ipc": None}, None), ("net.ipv4.ip_forward", {"network": None}, None),
    ("kernel.domainname", {"uts": None}, None), ("fs.mqueue.msg_max", {"ipc": None}, None),
    ("kernel.pid_max", {"ipc": None}, "not namespaced"), ("net.core.somaxconn", {}, "network namespace"),
    ("net.ipv4.ip_forward", {"network": "/proc/1/ns/net"}, "network namespace"),
    ("../../etc/passwd", {"network": None}, "dotted kernel parameter"),
])
def test_sysctl_rules(key, namespaces, message):
    from pykvm.container.runtime.validate import check_sysctl
    if message is None:
        check_sysctl(key, "1", namespaces)
    else:
        with pytest.raises(ConfigError, match=message):
            check_sysctl(key, "1", namespaces)


def test_resolve_user_takes_gid_and_groups_as_docker(tmp_path):
    from pykvm.container.runtime.users import resolve_user
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\nweb:x:33:44::/:/bin/sh\n")
    (tmp_path / "etc" / "group").write_text("root:x:0:web\nwww:x:44:\nstaff:x:50:other,web\n")
    assert resolve_user("33", str(tmp_path)) == (33, 44, [0, 50])
    assert resolve_user("web", str(tmp_path)) == (33, 44, [0, 50])
    assert resolve_user("web:staff", str(tmp_path)) == (33, 50, [])     # :GROUP given: no others
    assert resolve_user("1234", str(tmp_path)) == (1234, 0, [])          # not in passwd: gid 0
    with pytest.raises(ConfigError, match="0-2147483647"):
        resolve_user("4294967295", str(tmp_path))


def test_the_launcher_learns_inits_pid_when_ready_comes_first(tmp_path):
    """On a busy machine init may have made its root and said {"ready"} before the monitor
    gets the CPU back to send {"pid"}: the launcher must still wait for the PID, which an
    engine's --pid-file and `start` (state.json's pid) need."""
    from pykvm.container.runtime.launcher import CREATED, Container
    from pykvm.container.runtime.process import EventPipe
    from pykvm.container.runtime.state import StateStore
    store = StateStore(tmp_path / "state")
    container = Container(RunConfig(args=["true"], rootfs=str(tmp_path)), CREATED, store)
    store.create(container.state)
    pipe = EventPipe()
    pipe.send(ready=1)                     # init, first
    pipe.send(pid=os.getpid())             # the monitor, late (any live process stands in for init)
    pipe.launcher_side()
    container._follow_setup(pipe)
    assert container.init_pid == os.getpid()
    assert store.load(container.id).pid == os.getpid()
