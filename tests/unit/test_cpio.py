"""The newc writer, read back by the system's GNU cpio."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pytest

from pykvm.vm.boot.cpio import CpioWriter, archive_tree
from pykvm.errors import ConfigError

pytestmark = pytest.mark.skipif(shutil.which("cpio") is None, reason="needs the cpio tool (apt-get install cpio)")


def cpio_list(archive: bytes) -> list[str]:
    """`cpio -tv` lines for the archive, as GNU cpio reads it."""
    out = subprocess.run(["cpio", "-t", "-v", "--quiet"], input=archive, capture_output=True, check=True)
    return out.stdout.decode().splitlines()


def cpio_names(archive: bytes) -> list[str]:
    out = subprocess.run(["cpio", "-t", "--quiet"], input=archive, capture_output=True, check=True)
    return out.stdout.decode().splitlines()


def test_members_of_each_kind_are_read_back():
    w = CpioWriter()
    w.directory("dev")
    w.device("dev/console", "c", 5, 1)
    w.directory("bin")
    w.file("bin/hello", b"#!/bin/sh\necho hi\n", mode=0o755)
    w.symlink("bin/sh", "busybox")
    w.device("dev/vda", "b", 254, 0)
    archive = w.finish()
    assert cpio_names(archive) == ["dev", "dev/console", "bin", "bin/hello", "bin/sh", "dev/vda"]
    listing = "\n".join(cpio_list(archive))
    assert "crw-------" in listing and "5,   1" in listing, listing
    assert "brw-------" in listing and "254,   0" in listing, listing
    assert "bin/sh -> busybox" in listing, listing
    assert "-rwxr-xr-x" in listing, listing


def test_padding_and_trailer():
    w = CpioWriter()
    w.file("a", b"x")          # odd sizes force padding after name and data
    w.file("abcde", b"12345")
    archive = w.finish()
    assert len(archive) % 4 == 0
    assert archive.startswith(b"070701")
    assert b"TRAILER!!!\0" in archive[-128:]
    # each header starts on a 4-byte boundary
    positions = [i for i in range(len(archive)) if archive.startswith(b"070701", i)]
    assert len(positions) == 3 and all(p % 4 == 0 for p in positions), positions


def test_extracted_tree_matches(tmp_path):
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "motd").write_bytes(b"welcome\n" * 1000 + b"odd")
    (src / "init").write_text("#!/bin/sh\nexec sh\n")
    (src / "init").chmod(0o755)
    (src / "etc" / "link").symlink_to("motd")
    archive = archive_tree(src)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["cpio", "-i", "-d", "--quiet", "--no-absolute-filenames"], input=archive, cwd=out,
                   check=True, capture_output=True)
    assert (out / "etc" / "motd").read_bytes() == (src / "etc" / "motd").read_bytes()
    assert (out / "init").read_text() == "#!/bin/sh\nexec sh\n"
    assert stat.S_IMODE((out / "init").stat().st_mode) == 0o755
    assert os.readlink(out / "etc" / "link") == "motd"
    names = cpio_names(archive)
    assert "dev/console" in names and names.index("dev") < names.index("dev/console")
    assert names.index("etc") < names.index("etc/motd")


def test_no_console_when_asked(tmp_path):
    (tmp_path / "dev").mkdir()
    assert cpio_names(archive_tree(tmp_path, console=False)) == ["dev"]


@pytest.mark.root
def test_tree_with_its_own_console_is_not_doubled(tmp_path):
    (tmp_path / "dev").mkdir()
    os.mknod(tmp_path / "dev" / "console", 0o600 | stat.S_IFCHR, os.makedev(5, 1))
    names = cpio_names(archive_tree(tmp_path))
    assert names.count("dev/console") == 1, names


def test_archive_is_deterministic(tmp_path):
    (tmp_path / "f").write_text("x")
    os.utime(tmp_path / "f", (1, 1))
    first = archive_tree(tmp_path)
    os.utime(tmp_path / "f", (999999, 999999))
    assert archive_tree(tmp_path) == first


@pytest.mark.parametrize("name", ["", "/", "../etc/passwd", "a/../../b"])
def test_bad_names_refused(name):
    with pytest.raises(ConfigError):
        CpioWriter().file(name, b"")


def test_duplicate_and_bad_device_refused():
    w = CpioWriter()
    w.file("x", b"")
    with pytest.raises(ConfigError, match="already has"):
        w.file("/x", b"")
    with pytest.raises(ConfigError, match="'c' or 'b'"):
        w.device("dev/null", "x", 1, 3)


def test_cli_writes_archive(tmp_path):
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "init").write_text("#!/bin/sh\n")
    out = tmp_path / "initrd.cpio"
    proc = subprocess.run(["pykvm", "initramfs", str(tmp_path / "tree"), "-o", str(out)],
                          capture_output=True, text=True, env={**os.environ, "PATH": _venv_path()})
    assert proc.returncode == 0, proc.stderr
    assert cpio_names(out.read_bytes()) == ["init", "dev", "dev/console"]


def test_cli_bad_directory_is_one_line(tmp_path):
    proc = subprocess.run(["pykvm", "initramfs", str(tmp_path / "missing"), "-o", str(tmp_path / "x")],
                          capture_output=True, text=True, env={**os.environ, "PATH": _venv_path()})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "does not exist" in proc.stderr, proc.stderr


def _venv_path() -> str:
    import sys
    return os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")


@pytest.mark.parametrize("tree, output, words", [
    # writing: the folder of -o does not exist
    ("{tmp}/tree", "{tmp}/missing/x.cpio", "No such file or directory"),
    # reading: a member that refuses read() (EINVAL), as some /proc files do
    ("/proc/self", "{tmp}/old.cpio", "cannot archive"),
])
def test_cli_write_and_read_errors_are_one_line_and_lose_nothing(tmp_path, tree, output, words):
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "f").write_text("x")
    (tmp_path / "old.cpio").write_bytes(b"the old archive")
    proc = subprocess.run(["pykvm", "initramfs", tree.format(tmp=tmp_path), "-o",
                           output.format(tmp=tmp_path)],
                          capture_output=True, text=True, env={**os.environ, "PATH": _venv_path()})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pykvm: error:") and words in lines[0], proc.stderr
    assert (tmp_path / "old.cpio").read_bytes() == b"the old archive"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.cpio", "tree"]


def test_cli_writes_through_a_non_regular_output(tmp_path):
    """-o /dev/stdout (or any symlink or device) is written through, never replaced by a file."""
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "f").write_text("x")
    link = tmp_path / "out.cpio"
    target = tmp_path / "real.cpio"
    target.write_bytes(b"")
    link.symlink_to(target)
    for output in ("/dev/stdout", str(link)):
        proc = subprocess.run(["pykvm", "initramfs", str(tmp_path / "tree"), "-o", output],
                              capture_output=True, env={**os.environ, "PATH": _venv_path()})
        assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"" and target.read_bytes()[:6] == b"070701" and link.is_symlink()
    first = subprocess.run(["pykvm", "initramfs", str(tmp_path / "tree"), "-o", "/dev/stdout"],
                           capture_output=True, env={**os.environ, "PATH": _venv_path()})
    assert first.stdout[:6] == b"070701" and os.path.exists("/dev/stdout")
