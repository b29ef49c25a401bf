"""Layers: whiteouts, changesets, deterministic tars, and extraction that never leaves its root.

The breakout cases are the ones moby (pkg/archive: TestUntarInvalidFilenames,
TestUntarInvalidHardlink, TestUntarInvalidSymlink, TestApplyLayerInvalid*),
containerd (archive: TestBreakouts) and umoci (oci/layer: unpack through a
symlink made by an earlier layer) test.  Each runs against a "victim"
directory beside the root: whatever the archive tries, the victim's file
keeps its content, nothing new appears in it or beside it.
"""
from __future__ import annotations

import io
import os
import stat
import tarfile

import pytest
from image_fixtures import make_tar

from pykvm.container.image.layer import (Change, apply_layer, changes_since, clean_member_name, secure_join,
                                   snapshot, write_layer)
from pykvm.errors import ContainerError

MODES = ["flatten", pytest.param("overlay", marks=pytest.mark.root)]


def apply(data: bytes, root, mode: str = "flatten", **kw) -> None:
    apply_layer(io.BytesIO(data), str(root), overlay=(mode == "overlay"), **kw)


# --- paths ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("a/b", "a/b"), ("./a", "a"), ("/etc/passwd", "etc/passwd"), ("../../x", "x"),
    ("a/../../b", "b"), (".", ""), ("a//b/", "a/b")])
def test_member_names_are_read_inside_the_root(name, expected):
    assert clean_member_name(name) == expected


def test_secure_join_clamps_symlinks_to_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    os.symlink("/etc", root / "abs")
    os.symlink("../../../..", root / "up")
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    assert secure_join(str(root), "abs/passwd") == str(root / "etc/passwd")
    assert secure_join(str(root), "up/real") == str(root / "real")
    assert secure_join(str(root), "abs", follow_last=False) == str(root / "abs")
    with pytest.raises(ContainerError, match="too many symbolic links"):
        secure_join(str(root), "loop1/x")


# --- breakouts -------------------------------------------------------------------------

def breakout_cases(victim: str):
    """(origin, case name, [layer entries, ...]): several layers when the attack spans layers."""
    v = victim
    return [
        ("moby", "dotdot", [[("file", "../victim/dotdot", b"x")]]),
        ("moby", "dotdot-deep", [[("file", "../../../../../../../../../../../../victim/dotdot", b"x")]]),
        ("moby", "hardlink-up-then-write", [[("hardlink", "dotdot", "../victim/hello"), ("file", "dotdot", b"bad")]]),
        ("moby", "hardlink-absolute", [[("hardlink", "dotdot", "/../victim/hello"), ("file", "dotdot", b"bad")]]),
        ("moby", "hardlink-host-absolute", [[("hardlink", "h", f"{v}/hello"), ("file", "h", b"bad")]]),
        ("moby", "hardlink-to-symlink-out", [[("symlink", "symlink", "../victim/hello"),
                                              ("hardlink", "hardlink", "symlink"), ("file", "hardlink", b"bad")]]),
        ("moby", "symlink-dir-then-write", [[("symlink", "loophole", "../victim"), ("file", "loophole/file", b"x")]]),
        ("moby", "symlink-nested-then-write", [[("dir", "dir", None), ("symlink", "dir/loophole", "../../victim"),
                                               ("file", "dir/loophole/newdir/newfile", b"x")]]),
        ("moby", "symlink-to-file-then-write", [[("symlink", "link", f"{v}/hello"), ("file", "link/../hello", b"bad"),
                                                ("file", "link", b"bad")]]),
        ("moby", "apply-layer-symlink-across-layers", [[("symlink", "loophole", "../victim")],
                                                       [("file", "loophole/file", b"x")]]),
        ("containerd", "SymlinkAbsolute", [[("symlink", "localetc", v), ("file", "localetc/emptied", b"")]]),
        ("containerd", "SymlinkUpAndOut", [[("symlink", "localetc", "../../../../../../../../../../.." + v),
                                            ("file", "localetc/emptied", b"")]]),
        ("containerd", "SymlinkMultipleAbsolute", [[("dir", "dir", None), ("symlink", "dir/etc", v),
                                                    ("symlink", "localetc", "dir/etc"),
                                                    ("file", "localetc/unbroken", b"")]]),
        ("containerd", "HardlinkDownAndOut", [[("dir", "dummy", None),
                                               ("hardlink", "localpasswd", "dummy/../../../../victim/hello"),
                                               ("file", "localpasswd", b"bad")]]),
        ("containerd", "HardlinkSymlinkUpAndOut", [[("symlink", "passwdlink", "../../victim/hello"),
                                                    ("hardlink", "localpasswd", "passwdlink"),
                                                    ("file", "localpasswd", b"bad")]]),
        ("containerd", "WhiteoutSymlinkPath", [[("symlink", "localetc", v)], [("file", "localetc/.wh.hello", b"")]]),
        ("containerd", "WhiteoutParent", [[("file", "../.wh.victim", b"")]]),
        ("containerd", "WhiteoutRoot", [[("file", ".wh..", b"")]]),
        ("containerd", "WhiteoutSymlink", [[("symlink", "evil", v)], [("file", ".wh.evil", b"")]]),
        ("containerd", "OpaqueThroughSymlink", [[("symlink", "evil", v)], [("file", "evil/.wh..wh..opq", b"")]]),
        ("umoci", "file-under-earlier-layer-symlink", [[("symlink", "etc", v)], [("file", "etc/passwd", b"x")]]),
        ("umoci", "dir-under-earlier-layer-symlink", [[("symlink", "etc", "/../../" + v)],
                                                      [("dir", "etc/sub", None), ("file", "etc/sub/f", b"x")]]),
        ("umoci", "hardlink-through-earlier-layer-symlink", [[("symlink", "etc", v)],
                                                            [("hardlink", "stolen", "etc/hello"),
                                                             ("file", "stolen", b"bad")]]),
        ("umoci", "device-node-refused", [[("chr", "null", None)]]),
    ]


CASE_IDS = [f"{origin}-{name}" for origin, name, _ in breakout_cases("/v")]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", range(len(CASE_IDS)), ids=CASE_IDS)
def test_breakout_never_touches_the_victim(tmp_path, case, mode):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "hello").write_bytes(b"good")
    root = tmp_path / "root"
    root.mkdir()
    origin, name, layers = breakout_cases(str(victim))[case]
    for entries in layers:
        try:
            apply(make_tar(entries), root, mode, allow_devices=False)
        except ContainerError:
            pass                                   # refusing is a fine answer; escaping is not
    assert (victim / "hello").read_bytes() == b"good", f"{origin} {name}: victim/hello was changed"
    assert sorted(os.listdir(victim)) == ["hello"], f"{origin} {name}: files appeared in the victim"
    assert sorted(os.listdir(tmp_path)) == ["root", "victim"], f"{origin} {name}: files appeared beside root"


def test_clamped_writes_land_inside_the_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    apply(make_tar([("dir", "real", None), ("symlink", "etc", "/real"), ("file", "etc/passwd", b"p"),
                    ("file", "../../escaped", b"x")]), root)
    assert (root / "real/passwd").read_bytes() == b"p", "an absolute symlink resolves inside the root"
    assert (root / "escaped").read_bytes() == b"x", "../ above the root is the root"


def test_self_referencing_symlink_is_a_loop_not_the_host(tmp_path):
    """`etc -> /etc` inside a root loops (as in a chroot): refused, host /etc untouched."""
    with pytest.raises(ContainerError, match="too many symbolic links"):
        apply(make_tar([("symlink", "etc", "/etc"), ("file", "etc/passwd", b"p")]), tmp_path)


def test_device_nodes_refused_unless_allowed(tmp_path):
    with pytest.raises(ContainerError, match="device node"):
        apply(make_tar([("chr", "dev/null", None)]), tmp_path, allow_devices=False)


def test_corrupt_archive_is_one_clear_error(tmp_path):
    data = make_tar([("file", "a", os.urandom(50000))], gz=True)
    with pytest.raises(ContainerError, match="corrupt layer"):
        apply(data[:len(data) // 2], tmp_path)
    with pytest.raises(ContainerError, match="corrupt layer"):
        apply(b"\x1f\x8b" + os.urandom(300), tmp_path)


# --- whiteouts ----------------------------------------------------------------------------

def base_layer() -> bytes:
    return make_tar([("dir", "etc", None), ("file", "etc/keep", b"k"), ("file", "etc/gone", b"g"),
                     ("dir", "var", None), ("file", "var/old1", b"1"), ("file", "var/old2", b"2")])


def test_whiteouts_delete_lower_files_when_flattening(tmp_path):
    apply(base_layer(), tmp_path)
    apply(make_tar([("file", "etc/.wh.gone", b""), ("dir", "var", None), ("file", "var/.wh..wh..opq", b""),
                    ("file", "var/new", b"n")]), tmp_path)
    assert sorted(os.listdir(tmp_path / "etc")) == ["keep"]
    assert sorted(os.listdir(tmp_path / "var")) == ["new"]


def test_whiteout_spares_files_of_its_own_layer(tmp_path):
    """layer.md: whiteouts apply to lower layers only; order inside the tar does not matter."""
    apply(base_layer(), tmp_path)
    apply(make_tar([("file", "var/new", b"n"), ("file", "var/.wh..wh..opq", b""),
                    ("file", "etc/again", b"a"), ("file", "etc/.wh.again", b"")]), tmp_path)
    assert sorted(os.listdir(tmp_path / "var")) == ["new"]
    assert (tmp_path / "etc/again").read_bytes() == b"a"


@pytest.mark.root
def test_overlay_form_uses_char_devices_and_opaque_xattr(tmp_path):
    apply(make_tar([("file", "etc/.wh.gone", b""), ("dir", "var", None), ("file", "var/.wh..wh..opq", b"")]),
          tmp_path, "overlay")
    st = os.lstat(tmp_path / "etc/gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0), oct(st.st_mode)
    assert os.getxattr(tmp_path / "var", "trusted.overlay.opaque") == b"y"


# --- changesets and their tars ---------------------------------------------------------------

def test_changes_since_finds_adds_changes_deletes_and_replaced_dirs(tmp_path):
    root = tmp_path
    apply(base_layer(), root)
    (root / "srv").mkdir()
    (root / "srv/x").write_text("x")
    before = snapshot(str(root))
    (root / "etc/gone").unlink()
    (root / "etc/keep").write_text("changed")
    (root / "new").write_text("n")
    import shutil
    shutil.rmtree(root / "var")
    (root / "var").mkdir()
    (root / "var/fresh").write_text("f")
    shutil.rmtree(root / "srv")
    changes = changes_since(before, str(root))
    assert Change("etc/gone", "delete") in changes
    assert Change("etc/keep", "add") in changes
    assert Change("new", "add") in changes
    assert Change("var/fresh", "add") in changes
    # var was removed and made again: opaque when it got a new inode, else a whiteout per old file
    assert (Change("var", "opaque") in changes
            or {Change("var/old1", "delete"), Change("var/old2", "delete")} <= set(changes)), changes
    assert Change("srv", "delete") in changes
    assert Change("srv/x", "delete") not in changes, "a deleted directory needs one whiteout, not one per file"


def test_write_layer_round_trips_through_apply(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    apply(base_layer(), src)
    before = snapshot(str(src))
    (src / "etc/gone").unlink()
    (src / "bin").mkdir()
    (src / "bin/tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "bin/tool", 0o755)
    os.symlink("tool", src / "bin/alias")
    os.link(src / "bin/tool", src / "bin/tool2")
    out = io.BytesIO()
    digests = write_layer(str(src), changes_since(before, str(src)), out)
    dst = tmp_path / "dst"
    dst.mkdir()
    apply(base_layer(), dst)
    apply(out.getvalue(), dst)
    assert sorted(os.listdir(dst / "etc")) == ["keep"]
    assert os.readlink(dst / "bin/alias") == "tool"
    assert os.stat(dst / "bin/tool").st_mode & 0o777 == 0o755
    assert os.stat(dst / "bin/tool").st_ino == os.stat(dst / "bin/tool2").st_ino, "hard link kept"
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as t:
        names = t.getnames()
        assert names == ["bin", "bin/alias", "bin/tool", "bin/tool2", "etc", "etc/.wh.gone"], names
        assert all(m.mtime == 0 and m.uname == "" for m in t.getmembers())
    assert digests.digest.startswith("sha256:") and digests.size == len(out.getvalue())


def test_write_layer_is_deterministic(tmp_path, monkeypatch):
    """Same files, different mtimes and creation order: same bytes, same digests."""
    results = []
    for n, order in enumerate([("a", "b", "c"), ("c", "a", "b")]):
        root = tmp_path / f"r{n}"
        root.mkdir()
        before = snapshot(str(root))
        for name in order:
            (root / name).write_text(name * 100)
            os.utime(root / name, (1000 + n * 77, 1000 + n * 77))
        out = io.BytesIO()
        results.append((write_layer(str(root), changes_since(before, str(root)), out), out.getvalue()))
    assert results[0][0] == results[1][0]
    assert results[0][1] == results[1][1]
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    out = io.BytesIO()
    root = tmp_path / "r0"
    write_layer(str(root), [Change("a", "add")], out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as t:
        assert t.getmember("a").mtime == 1700000000
