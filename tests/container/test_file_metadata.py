"""File metadata through build, COPY --from and unpack: extended attributes (file capabilities)
as PAX SCHILY.xattr records, owners, device nodes, hard links; FIFOs and sockets refused as
BuildKit's copy refuses them ("unsupported mode"). umoci and getcap are the oracles."""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile

import pytest
from image_fixtures import run_pykvm, store  # noqa: F401  (fixture)
from test_build import busybox_and_a_context, flat_root

from pykvm.container.image.build import BuildOptions, build_image
from pykvm.container.image.store import ImageStore, resolve_for_run

UMOCI = shutil.which("umoci")
SKOPEO = shutil.which("skopeo")
SETCAP, GETCAP = shutil.which("setcap"), shutil.which("getcap")
needs_caps = pytest.mark.skipif(not (SETCAP and GETCAP), reason="setcap/getcap are missing (apt-get install libcap2-bin)")
root = pytest.mark.skipif(os.geteuid() != 0, reason="setting file capabilities and device nodes needs root")
CAP_XATTR = "SCHILY.xattr.security.capability"
# busybox has no setcap: a build's RUN sets the attribute with this static program instead.
SETXATTR_C = r"""
#include <stdio.h>
#include <string.h>
#include <sys/xattr.h>

int main(int argc, char **argv)     /* setxattr PATH NAME HEXVALUE */
{
    unsigned char value[256];
    size_t n = argc == 4 ? strlen(argv[3]) / 2 : 0;
    if (n == 0 || n > sizeof value) {
        fprintf(stderr, "usage: setxattr PATH NAME HEXVALUE\n");
        return 2;
    }
    for (size_t i = 0; i < n; i++)
        sscanf(argv[3] + 2 * i, "%2hhx", &value[i]);
    if (setxattr(argv[1], argv[2], value, n, 0) != 0) {
        perror(argv[1]);
        return 1;
    }
    return 0;
}
"""


def getcap(path) -> str:
    return subprocess.run([GETCAP, str(path)], capture_output=True, text=True, check=True).stdout


def capped_file(path) -> bytes:
    """A copy of /bin/true with cap_net_raw+ep; returns its security.capability bytes."""
    shutil.copy("/bin/true", path)
    subprocess.run([SETCAP, "cap_net_raw+ep", str(path)], check=True)
    return os.getxattr(path, "security.capability")


def members(store: ImageStore, descriptor: dict) -> dict[str, tarfile.TarInfo]:
    data = gzip.decompress(store.blob_path(descriptor["digest"]).read_bytes())
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        return {m.name: m for m in t.getmembers()}


# --- extended attributes ---------------------------------------------------------------

@pytest.mark.root
@root
@needs_caps
@pytest.mark.skipif(UMOCI is None, reason="umoci is not installed (apt-get install umoci)")
def test_a_file_capability_survives_build_and_umoci_unpack(store, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    value = capped_file(ctx / "ping")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY ping /bin/ping\n")
    image = build_image(store, BuildOptions(str(ctx), "caps:1"))
    entry = members(store, image.layers[0])["bin/ping"]
    assert entry.pax_headers[CAP_XATTR].encode("utf-8", "surrogateescape") == value
    bundle = tmp_path / "bundle"
    unpack = subprocess.run([UMOCI, "unpack", "--image", f"{store.layout}:caps:1", str(bundle)],
                            capture_output=True, text=True)
    assert unpack.returncode == 0, unpack.stderr
    assert "cap_net_raw=ep" in getcap(bundle / "rootfs" / "bin" / "ping")


@pytest.mark.root
@root
@needs_caps
@pytest.mark.skipif(UMOCI is None or SKOPEO is None, reason="umoci and skopeo are needed")
def test_a_file_capability_umoci_wrote_survives_our_unpack(store, tmp_path):
    layout, bundle = tmp_path / "layout", tmp_path / "bundle"
    for argv in (["init", "--layout", str(layout)], ["new", "--image", f"{layout}:t"],
                 ["unpack", "--image", f"{layout}:t", str(bundle)]):
        subprocess.run([UMOCI, *argv], check=True, capture_output=True)
    capped_file(bundle / "rootfs" / "ping")
    os.link(bundle / "rootfs" / "ping", bundle / "rootfs" / "ping6")     # a hard link entry after it
    subprocess.run([UMOCI, "repack", "--image", f"{layout}:t", str(bundle)], check=True, capture_output=True)
    subprocess.run([SKOPEO, "--insecure-policy", "copy", f"oci:{layout}:t", f"oci:{store.layout}:umoci:1"],
                   check=True, capture_output=True)
    (layer,) = resolve_for_run("umoci:1", store).layers            # unpacked for overlayfs
    assert "cap_net_raw=ep" in getcap(os.path.join(layer, "ping"))
    assert os.path.samefile(os.path.join(layer, "ping"), os.path.join(layer, "ping6"))
    # and a build on top keeps it in its own copy of the file
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM umoci:1 AS base\nFROM scratch\nCOPY --from=base /ping /ping\n")
    image = build_image(store, BuildOptions(str(ctx), "copied:1"))
    assert CAP_XATTR in members(store, image.layers[0])["ping"].pax_headers


@pytest.mark.root
@root
@needs_caps
def test_a_capability_set_by_run_is_kept_in_its_layer(store, tmp_path):
    """A RUN step's security.capability (the bytes `setcap cap_net_raw+ep` writes) goes into
    the layer as a SCHILY.xattr record and comes back on unpack."""
    ctx = busybox_and_a_context(store, tmp_path)
    value = capped_file(tmp_path / "model")
    subprocess.run(["gcc", "-static", "-O", "-o", str(ctx / "setxattr"), "-x", "c", "-"],
                   input=SETXATTR_C, text=True, check=True, capture_output=True)
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY setxattr /bin/setxattr\n"
                                    "RUN cp /bin/busybox /ping && "
                                    f"setxattr /ping security.capability {value.hex()}\n")
    image = build_image(store, BuildOptions(str(ctx), "runcaps:1"))
    entry = members(store, image.layers[-1])["ping"]
    assert entry.pax_headers[CAP_XATTR].encode("utf-8", "surrogateescape") == value, entry.pax_headers
    assert "cap_net_raw=ep" in getcap(flat_root(store, image, tmp_path / "flat") / "ping")


@pytest.mark.root
@root
@needs_caps
def test_a_hard_link_entry_does_not_strip_the_capability(tmp_path):
    """A hard link entry names an inode already made: chowning it again would clear
    security.capability (chown(2)), so its attributes are left alone."""
    from pykvm.container.image.layer import apply_layer
    value = capped_file(tmp_path / "ping")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tar.gettarinfo(str(tmp_path / "ping"), "bin/ping")
        info.pax_headers = {CAP_XATTR: value.decode("utf-8", "surrogateescape")}
        with open(tmp_path / "ping", "rb") as f:
            tar.addfile(info, f)
        link = tarfile.TarInfo("bin/ping6")
        link.type, link.linkname = tarfile.LNKTYPE, "bin/ping"
        tar.addfile(link)
    root_dir = tmp_path / "root"
    root_dir.mkdir()
    apply_layer(io.BytesIO(buf.getvalue()), str(root_dir))
    assert "cap_net_raw=ep" in getcap(root_dir / "bin" / "ping6")


# --- COPY --from: owners, devices, hard links ---------------------------------------------

def stage_tar(path, *, fifo: bool = False) -> None:
    """A tar for ADD: files owned by 1000:1000, a device node, two names of one file (a FIFO)."""
    with tarfile.open(path, "w") as tar:
        def add(name, kind=tarfile.REGTYPE, data=b"", **attrs):
            info = tarfile.TarInfo(name)
            info.type, info.size, info.mode = kind, len(data), 0o755 if kind == tarfile.DIRTYPE else 0o644
            for k, v in attrs.items():
                setattr(info, k, v)
            tar.addfile(info, io.BytesIO(data) if data else None)
        add("app", tarfile.DIRTYPE, uid=1000, gid=1000)
        add("app/owned", data=b"mine\n", uid=1000, gid=1001)
        add("app/twin", tarfile.LNKTYPE, linkname="app/owned", uid=1000, gid=1001)
        add("app/null", tarfile.CHRTYPE, devmajor=1, devminor=3)
        if fifo:
            add("app/pipe", tarfile.FIFOTYPE)


@pytest.mark.root
@root
def test_copy_from_keeps_owners_devices_and_hard_links(store, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    stage_tar(ctx / "app.tar")
    (ctx / "Dockerfile").write_text("FROM scratch AS src\nADD app.tar /\n"
                                    "FROM scratch\nCOPY --from=src /app /copied/\n")
    image = build_image(store, BuildOptions(str(ctx), "from:1"))
    got = members(store, image.layers[-1])
    owned, twin, null = got["copied/owned"], got["copied/twin"], got["copied/null"]
    assert (owned.uid, owned.gid) == (1000, 1001), "the stage's owner, not 0:0"
    assert twin.islnk() and twin.linkname == "copied/owned", "two names of one file stay one inode"
    assert null.ischr() and (null.devmajor, null.devminor) == (1, 3)


@pytest.mark.root
@root
def test_copy_from_a_stage_with_a_fifo_is_one_line(store, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    stage_tar(ctx / "app.tar", fifo=True)
    (ctx / "Dockerfile").write_text("FROM scratch AS src\nADD app.tar /\n"
                                    "FROM scratch\nCOPY --from=src /app /copied/\n")
    status, out, err = run_pykvm("container", "build", "-t", "fifo:1", str(ctx))
    assert status == 1 and "Traceback" not in err, err
    assert err == ("pykvm: error: Dockerfile:4: COPY: pipe is a FIFO (named pipe): COPY copies files, "
                   "directories, symlinks and device nodes only\n")


def test_a_fifo_or_socket_in_the_context_is_one_line(store, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY . /ctx/\n")
    (ctx / "f").write_text("f")
    os.mkfifo(ctx / "pipe")
    status, _, err = run_pykvm("container", "build", "-t", "ctx:1", str(ctx))
    assert (status, err) == (1, "pykvm: error: Dockerfile:2: COPY: pipe is a FIFO (named pipe): COPY copies "
                                "files, directories, symlinks and device nodes only\n")
    os.unlink(ctx / "pipe")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(ctx / "sock"))
        status, _, err = run_pykvm("container", "build", "-t", "ctx:1", str(ctx))
    assert (status, err) == (1, "pykvm: error: Dockerfile:2: COPY: sock is a socket: COPY copies "
                                "files, directories, symlinks and device nodes only\n")
    os.unlink(ctx / "sock")
    status, _, err = run_pykvm("container", "build", "-t", "ctx:1", str(ctx))
    assert status == 0, err
    assert json.loads(run_pykvm("container", "inspect", "ctx:1")[1])[0]["RepoTags"] == ["ctx:1"]
