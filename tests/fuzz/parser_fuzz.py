"""Coverage-guided fuzzing of every parser that reads outside data (atheris, libFuzzer's engine).

    python tests/fuzz/parser_fuzz.py TARGET [libFuzzer options, e.g. -runs=10000 -seed=1]
    python tests/fuzz/parser_fuzz.py --all --runs 10000 --seed 1     (make fuzz)
    python tests/fuzz/parser_fuzz.py --replay TARGET FILE...          (a crash file, in-process)

One target per parser; each takes the fuzzer's bytes as the outside data it
reads (a kernel file, a packet stream, a config.json, a layer tar...).  The
oracle is the same for all of them: the parser succeeds or raises a
PyKvmError (the CLI's one clean line); any other exception is a finding, and
atheris stops with the input that caused it.  Targets that write files work in
a fresh sandbox whose `victim/` sibling must stay untouched, and nothing may
appear beside `root/`.

Each target has seeds (`seeds()`): well-formed inputs built by pykvm's own
writers and the test suite's makers (the bundled tiny.elf, a fake bzImage, the
layer breakout suite's tars...), which libFuzzer mutates from.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "container"), str(HERE.parent / "unit"), str(ROOT)]

__all__ = ["TARGETS", "seeds", "run_one", "main"]

TARGETS: dict[str, "Target"] = {}
MEMORY = 4 << 20            # guest RAM the loaders write into
CORPUS = ROOT / ".cache" / "fuzz" / "corpus"


class Target:
    """A parser under fuzzing: `check(data)` feeds it, `make_seeds()` gives starting inputs."""

    def __init__(self, name: str, check, make_seeds):
        self.name, self.check, self.make_seeds = name, check, make_seeds


def target(name: str, make_seeds):
    def register(check):
        TARGETS[name] = Target(name, check, make_seeds)
        return check
    return register


@contextlib.contextmanager
def sandbox():
    """A temporary `root/` to work in, beside a `victim/` whose file must survive."""
    base = Path(tempfile.mkdtemp(prefix="pykvm-fuzz-"))
    try:
        (base / "root").mkdir()
        (base / "victim").mkdir()
        (base / "victim" / "hello").write_bytes(b"good")
        yield base
        victim = base / "victim"
        assert sorted(os.listdir(base)) == ["root", "victim"], f"written beside the root: {os.listdir(base)}"
        assert sorted(os.listdir(victim)) == ["hello"], f"written into the victim: {os.listdir(victim)}"
        assert (victim / "hello").read_bytes() == b"good", "the victim's file was changed"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_one(name: str, data: bytes) -> None:
    """Feed `data` to target `name`: returns, or raises what is not a PyKvmError."""
    from pykvm.errors import PyKvmError

    try:
        TARGETS[name].check(data)
    except PyKvmError:
        pass


def split(data: bytes, parts: int) -> list[bytes]:
    """Cut `data` into `parts` pieces at 0xFE 0xFF markers (missing pieces are empty)."""
    pieces = data.split(b"\xfe\xff", parts - 1)
    return pieces + [b""] * (parts - len(pieces))


# --- the VM's boot files -------------------------------------------------------------------

def elf_seeds() -> list[bytes]:
    tiny = ROOT / "guests" / "tiny" / "tiny.elf"
    out = [tiny.read_bytes()] if tiny.exists() else []
    from guestasm import pvh_elf

    with tempfile.TemporaryDirectory() as tmp:
        out.append(pvh_elf("mov $0x604, %dx\nmov $0x2000, %ax\nout %ax, %dx\nhlt", Path(tmp, "g.elf")).read_bytes())
    return out


@target("elf-pvh", elf_seeds)
def check_elf(data: bytes) -> None:
    """ELF program headers, notes and the PVH entry note, loaded into real guest memory."""
    from pykvm.vm.boot.elf import parse_elf
    from pykvm.vm.boot.pvh import is_linux, load_pvh
    from pykvm.vm.memory import GuestMemory

    kernel, cmdline, initrd = split(data, 3)
    with GuestMemory(MEMORY) as memory:
        load_pvh(memory, kernel, cmdline.decode("latin-1"), initrd or None, "fuzz.elf")
    is_linux(parse_elf(kernel))


def bzimage_seeds() -> list[bytes]:
    from fake_bzimage import make_bzimage

    return [make_bzimage(), make_bzimage(version=0x020A, xloadflags=0, setup_sects=1),
            make_bzimage(pm_size=0x100, init_size=0x10000) + b"\xfe\xffroot=/dev/vda\xfe\xffINITRD"]


@target("bzimage", bzimage_seeds)
def check_bzimage(data: bytes) -> None:
    """The setup header, the payload and the whole boot plan (boot_params, initrd placement)."""
    from pykvm.vm.boot.bzimage import compressed_payload, plan_bzimage, read_setup_header

    image, cmdline, initrd = split(data, 3)
    plan_bzimage(image, [(0, 64 << 20)], cmdline, initrd or None)
    compressed_payload(image, read_setup_header(image))


def tree_seeds() -> list[bytes]:
    return [b"f init\x00#!/bin/sh\n\x00d dev\x00l dev/stdin\x00/proc/self/fd/0\x00",
            b"d a\x00d a/b\x00f a/b/c\x00data\x00l up\x00../../..\x00"]


@target("initramfs-tree", tree_seeds)
def check_initramfs_tree(data: bytes) -> None:
    """`pykvm initramfs DIR`: archive_tree over a directory tree the fuzzer describes.

    The bytes are NUL-separated records: `f NAME` + content, `d NAME`,
    `l NAME` + link target, `p NAME` (a FIFO).  Names are raw bytes (any
    encoding, `..`, absolute); the tree is built under root/ only.
    """
    from pykvm.vm.boot.cpio import archive_tree

    with sandbox() as base:
        root = base / "root"
        fields = data.split(b"\x00")
        while fields:
            record = fields.pop(0)
            kind, name = record[:2], os.fsdecode(record[2:])
            arg = fields.pop(0) if kind in (b"f ", b"l ") and fields else b""
            path = os.path.join(root, name)
            if not name or os.path.realpath(path) == str(root) or \
                    not os.path.realpath(os.path.dirname(path)).startswith(str(root)):
                continue                          # the fuzzer's tree stays inside root/
            with contextlib.suppress(OSError):
                if kind == b"f ":
                    Path(path).write_bytes(arg)
                elif kind == b"d ":
                    os.mkdir(path)
                elif kind == b"l ":
                    os.symlink(os.fsdecode(arg), path)
                elif kind == b"p ":
                    os.mkfifo(path)
        archive_tree(root)


# --- the gdb stub's packet reader ------------------------------------------------------------

def gdb_seeds() -> list[bytes]:
    from pykvm.vm.gdb.packets import frame

    return [b"+" + frame(b"qSupported:multiprocess+;xmlRegisters=i386") + b"\x03-",
            frame(b"m1000,40") + frame(b"X1000,2:}\x03}]") + b"$g#67$vCont;c#a8"]


@target("gdb-packets", gdb_seeds)
def check_gdb_packets(data: bytes) -> None:
    """The Framer fed in any chunking, and the round trip: frame(escape(p)) reads back as p."""
    from pykvm.vm.gdb.packets import Framer, Packet, escape, frame, unescape

    framer = Framer()
    cut = data[0] % 7 + 1 if data else 1
    for i in range(0, len(data), cut):
        for event in framer.feed(data[i:i + cut]):
            if isinstance(event, Packet):
                unescape(event.payload)
    payload = data[:1024]                      # escaped, at most twice as long: under MAX_PACKET
    events = Framer().feed(frame(escape(payload)))
    assert [type(e) for e in events] == [Packet], (payload, events)
    assert unescape(events[0].payload) == payload, (payload, events)


GDB_PACKETS = [b"qSupported:multiprocess+;swbreak+;hwbreak+;xmlRegisters=i386", b"?", b"Hg0", b"Hc-1", b"g",
               b"G" + b"00" * 64, b"p10", b"P10=0010000000000000", b"m1000,40", b"M1000,2:9090",
               b"X1000,2:}\x03}]", b"Z0,1000,1", b"z0,1000,1", b"Z2,200000,8", b"z2,200000,8",
               b"qXfer:features:read:target.xml:0,ffb", b"qfThreadInfo", b"qsThreadInfo", b"qC",
               b"T1", b"vCont?", b"vCont;s:1;c", b"s", b"c1000", b"qAttached", b"QStartNoAckMode"]
_gdb_stub = None


def gdb_stub():
    """One stub, served by a stand-in vCPU over real guest memory (the test suite's), kept across inputs."""
    global _gdb_stub
    if _gdb_stub is None:
        from test_gdb_stub import StandInVcpu, build_page_tables
        from pykvm.vm.gdb import GdbStub, listen
        from pykvm.vm.memory import GuestMemory

        memory = GuestMemory(8 << 20)
        _gdb_stub = GdbStub(listen("127.0.0.1:0"), [StandInVcpu(build_page_tables(memory))], memory,
                            kick=lambda: None, stop=lambda status: None, exit_requested=lambda: False,
                            wait=False, watch_by_stepping=False, block_irq=True)
        _gdb_stub.connection = types.SimpleNamespace(ack_mode=True)   # handlers run for a connected client
    return _gdb_stub


@target("gdb-handlers", lambda: [b"\x00".join(GDB_PACKETS)])
def check_gdb_handlers(data: bytes) -> None:
    """Every packet a client can send, one handler per letter: a reply or an action, never an exception."""
    from pykvm.vm.gdb.handlers import Detach, Kill, Resume

    handlers = gdb_stub().handlers
    for payload in data.split(b"\x00")[:64]:
        result = handlers.handle(payload)
        assert isinstance(result, (bytes, Resume, Detach, Kill)), (payload, result)


# --- the container path's inputs ----------------------------------------------------------------

def dockerfile_seeds() -> list[bytes]:
    return [b"# syntax=docker/dockerfile:1\n# escape=`\nFROM busybox AS base\nARG V=1\n"
            b"ENV A=$V B=\"x y\"\nRUN echo ${A:-z} \\\n  && true\nCOPY --from=base a* /b/\n"
            b"RUN <<EOF cat >/x\nhello\nEOF\nCMD [\"sh\", \"-c\", \"echo $A\"]\n",
            b"FROM scratch\nADD a.tar /\nWORKDIR /w\nUSER 1:1\nHEALTHCHECK NONE\n"
            b"\xfe\xff*.md\n!README.md\n**/tmp\n"]


@target("dockerfile", dockerfile_seeds)
def check_dockerfile(data: bytes) -> None:
    """A build context's Dockerfile and .dockerignore, read by the builder as `build` does."""
    from pykvm.container.image.build import BuildOptions, Builder
    from pykvm.container.image.dockerfile import expand, parse_exec_form, shell_words
    from pykvm.container.image.store import ImageStore

    dockerfile, ignore = split(data, 2)
    with sandbox() as base:
        context = base / "root" / "context"
        context.mkdir()
        (context / "Dockerfile").write_bytes(dockerfile)
        (context / ".dockerignore").write_bytes(ignore)
        builder = Builder(ImageStore(base / "root" / "store"), BuildOptions(context=str(context)))
        for instruction in builder.file.instructions:
            env = {"A": "1", "B": ""}
            shell_words(instruction.args, env)
            expand(instruction.args, env)
            parse_exec_form(instruction.args)
        builder.ignore.ignored("a/b/README.md")


def oci_config_seeds() -> list[bytes]:
    spec = {"ociVersion": "1.0.2", "process": {"terminal": False, "user": {"uid": 0, "gid": 0},
            "args": ["sh"], "env": ["PATH=/bin"], "cwd": "/", "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"]}},
            "root": {"path": "rootfs", "readonly": True}, "hostname": "c",
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                       {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=1m"]}],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network", "path": "/proc/1/ns/net"}],
                      "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
                      "resources": {"memory": {"limit": 1 << 26}, "pids": {"limit": 10}, "cpu": {"quota": 1000, "period": 100000}},
                      "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"]}}
    return [json.dumps(spec).encode()]


@target("oci-config", oci_config_seeds)
def check_oci_config(data: bytes) -> None:
    """A bundle's config.json, read and converted into the runtime's config (and checked)."""
    from pykvm.container.runtime.bundle import load_bundle

    with sandbox() as base:
        bundle = base / "root"
        (bundle / "config.json").write_bytes(data)
        (bundle / "rootfs").mkdir()
        config = load_bundle(str(bundle))
        validate = getattr(config, "validate", None)
        if validate is not None:
            validate()


def image_seeds() -> list[bytes]:
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Env": ["A=1"], "Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "a" * 64]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": "sha256:" + "b" * 64, "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                       "digest": "sha256:" + "c" * 64, "size": 10}]}).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "d" * 64, "size": 5,
         "platform": {"os": "linux", "architecture": "amd64"}, "annotations": {"org.opencontainers.image.ref.name": "x:1"}}]}).encode()
    return [b"\xfe\xff".join((index, manifest, config))]


@target("image-json", image_seeds)
def check_image_json(data: bytes) -> None:
    """A store whose index.json, manifest and config came from outside (`load`, a registry).

    The manifest and config are stored under their true digests and the
    index's entries are pointed at them, so the fuzzer reaches past the digest
    checks into the parsing of each document; then every reader of the store
    runs: images, get, size, layers, diff_ids, referenced (gc's walk),
    resolve_for_run, and the registry's own manifest, index and config checks.
    """
    from pykvm.container.image import registry
    from pykvm.container.image.store import ImageStore, pick_platform, resolve_for_run

    index_bytes, manifest_bytes, config_bytes = split(data, 3)
    with sandbox() as base:
        store = ImageStore(base / "root" / "store")
        config_digest = store.put_bytes(config_bytes)
        manifest_bytes = manifest_bytes.replace(b"sha256:" + b"b" * 64, config_digest.encode())
        manifest_digest = store.put_bytes(manifest_bytes)
        index_bytes = index_bytes.replace(b"sha256:" + b"d" * 64, manifest_digest.encode())
        (store.layout / "index.json").write_bytes(index_bytes)
        for image in store.images():
            image.size, image.layers, image.diff_ids, image.id
        store.referenced()
        for name, _ in store.tags():
            resolve_for_run(name, store)
        ref = registry.parse_remote("localhost:5000/fuzz:1")
        with contextlib.suppress(ValueError):
            pick_platform(json.loads(index_bytes))
        with contextlib.suppress(ValueError):
            manifest = json.loads(manifest_bytes)
            registry._check_manifest(manifest, ref)
            registry._check_config(str(store.blob_path(config_digest)), manifest, ref)


def archive_seeds() -> list[bytes]:
    from image_fixtures import make_tar

    index, manifest, config = image_seeds()[0].split(b"\xfe\xff")
    import hashlib

    blobs = [("file", f"blobs/sha256/{hashlib.sha256(b).hexdigest()}", b) for b in (manifest, config)]
    return [make_tar([("file", "oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("file", "index.json", index),
                      ("dir", "blobs", None), *blobs])]


@target("oci-archive", archive_seeds)
def check_oci_archive(data: bytes) -> None:
    """`pykvm container load FILE`: an OCI archive's index.json and blobs, into a store."""
    from pykvm.container.image.archive import load_archive
    from pykvm.container.image.store import ImageStore

    with sandbox() as base:
        archive = base / "root" / "image.tar"
        archive.write_bytes(data)
        load_archive(ImageStore(base / "root" / "store"), str(archive))


def layer_seeds() -> list[bytes]:
    from image_fixtures import make_tar
    from test_image_layers import breakout_cases

    victim = "/tmp/pykvm-fuzz-victim"
    return [b"".join(make_tar(entries) for entries in layers) for _, _, layers in breakout_cases(victim)] + \
           [make_tar([("dir", "a", None), ("file", "a/.wh..wh..opq", b""), ("file", "a/b", b"x")], gz=True)]


@target("layer-tar", layer_seeds)
def check_layer_tar(data: bytes) -> None:
    """A layer tar applied to a root, devices refused: nothing escapes root/.

    Whiteouts are flattened (deleting) or, as root, written in overlayfs form
    (character devices 0/0, the opaque xattr) for inputs of odd length.
    """
    from pykvm.container.image.layer import apply_layer

    overlay = os.geteuid() == 0 and len(data) % 2 == 1
    with sandbox() as base:
        apply_layer(io.BytesIO(data), str(base / "root"), overlay=overlay, allow_devices=False)
    assert not os.path.exists("/tmp/pykvm-fuzz-victim"), "a layer wrote to an absolute host path"


# --- a registry's responses -------------------------------------------------------------------

REGISTRY_STATUSES = (200, 201, 204, 206, 301, 302, 307, 308, 400, 401, 403, 404, 416, 429, 500, 502, 503)
REGISTRY_TYPES = ("", "text/html", "application/json", "application/octet-stream",
                  "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json",
                  "application/vnd.docker.distribution.manifest.list.v2+json")
REGISTRY_TIMEOUT = 0.5          # the client's socket timeout while fuzzing, seconds
STALL = 0.7                     # one stalled response per input outlasts it
_registry = None


class FakeRegistry:
    """A distribution API on 127.0.0.1 serving one image, each answer bent by the fuzzer's bytes.

    The image (`fuzz:1`, an index over one linux/amd64 manifest, a config and a
    layer) is well formed; `plan` holds one 3-byte directive (operation,
    argument, argument) per request, in the order pykvm's pull sends them, and
    `payload` the bytes a directive may put in place of a body.  Operations:
    a status code (with or without Location or WWW-Authenticate), a body cut
    short behind a longer Content-Length, a short body honestly sized, another
    Content-Type, the payload as body (bad JSON), a wrong Docker-Content-Digest,
    a slow body (milliseconds) and, once per input, a stall past the client's
    socket timeout.
    """

    def __init__(self):
        import gzip
        import hashlib
        import http.server
        import threading
        from image_fixtures import make_tar
        from pykvm.container.image.store import canonical_json

        def digest(body: bytes) -> str:
            return "sha256:" + hashlib.sha256(body).hexdigest()

        layer = make_tar([("dir", "etc", None), ("file", "etc/hello", b"hello\n")], gz=True)
        config = canonical_json({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                                 "rootfs": {"type": "layers", "diff_ids": [digest(gzip.decompress(layer))]}})
        manifest = canonical_json({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config),
                       "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(layer),
                        "size": len(layer)}]})
        index = canonical_json({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                                "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                               "digest": digest(manifest), "size": len(manifest),
                                               "platform": {"os": "linux", "architecture": "amd64"}}]})
        self.objects = {"/v2/fuzz/manifests/1": (REGISTRY_TYPES[4], index),
                        "/v2/fuzz/manifests/2": (REGISTRY_TYPES[5], manifest),
                        f"/v2/fuzz/manifests/{digest(manifest)}": (REGISTRY_TYPES[5], manifest),
                        f"/v2/fuzz/blobs/{digest(config)}": (REGISTRY_TYPES[3], config),
                        f"/v2/fuzz/blobs/{digest(layer)}": (REGISTRY_TYPES[3], layer),
                        "/token": ("application/json", b'{"token": "t"}')}
        self.plan: list[bytes] = []
        self.payload = b""
        self.stalled = False
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.do_GET()

            def do_GET(self):
                fake.answer(self, self.path.split("?")[0])

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass                         # a client that gave up on a stalled answer

        self.server = Server(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, handler, path: str) -> None:
        import hashlib
        import time

        content_type, body = self.objects.get(path, ("application/json", b'{"errors": [{"code": "UNKNOWN"}]}'))
        status = 200 if path in self.objects else 404
        op, a, b = (self.plan.pop(0) + b"\x00\x00\x00")[:3] if self.plan else (0, 0, 0)
        op %= 9
        headers = {"Docker-Content-Digest": "sha256:" + hashlib.sha256(body).hexdigest()} if path in self.objects else {}
        length, sent, pause = len(body), body, 0.0
        if op == 1:
            status = REGISTRY_STATUSES[a % len(REGISTRY_STATUSES)]
            if status in (301, 302, 307, 308) and b % 3:
                headers["Location"] = list(self.objects)[b % len(self.objects)] if b % 3 == 1 else "/v2/nowhere"
            if status == 401 and b % 3:
                headers["WWW-Authenticate"] = "Basic realm=x" if b % 3 == 1 else \
                    f'Bearer realm="http://{self.host}/token",service=fuzz'
        elif op == 2:
            sent = body[:len(body) * a // 256]          # Content-Length promises more
        elif op == 3:
            sent = body[:len(body) * a // 256]
            length = len(sent)
        elif op == 4:
            content_type = REGISTRY_TYPES[a % len(REGISTRY_TYPES)]
        elif op == 5:
            sent = self.payload[a:] if b % 2 else body[:a] + self.payload
            length = len(sent)
        elif op == 6:
            headers["Docker-Content-Digest"] = "sha256:" + bytes([a, b] * 32).hex()[:64 if b % 2 else a % 64]
        elif op == 7:
            pause = (a % 20) / 1000
        elif op == 8 and not self.stalled:
            self.stalled, pause = True, STALL
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(length))
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.end_headers()
        if handler.command == "HEAD":
            return
        handler.wfile.write(sent[:len(sent) // 2])
        handler.wfile.flush()
        time.sleep(pause)
        handler.wfile.write(sent[len(sent) // 2:])
        if len(sent) != length:
            handler.close_connection = True


def fake_registry() -> FakeRegistry:
    global _registry
    if _registry is None:
        from pykvm.container.image import registry

        registry.TIMEOUT = REGISTRY_TIMEOUT
        _registry = FakeRegistry()
    return _registry


def registry_seeds() -> list[bytes]:
    return [b"\x01", b"\x00\x00\x00\x00\x02\x80\x00\x05\x10\x00",
            b"\x01\x01\x0b\x02\x06\x01\x01\x04\x02\x00\xfe\xff[1, 2",
            b"\x00\x05\x00\x01\xfe\xff{\"schemaVersion\": 2, \"mediaType\": \"x\"}"]


@target("registry", registry_seeds)
def check_registry(data: bytes) -> None:
    """`pykvm container pull` from a registry whose answers the fuzzer bends (FakeRegistry).

    The first byte pulls by tag through the index (even) or the manifest's tag
    (odd).  Afterwards the store must pass `system check` with nothing in tmp/;
    a pull that succeeded tagged a complete image.
    """
    from pykvm.container.image.check import check_store
    from pykvm.container.image.registry import Credentials, pull
    from pykvm.container.image.store import ImageStore

    fake = fake_registry()
    directives, fake.payload = split(data, 2)
    fake.plan = [directives[i:i + 3] for i in range(1, len(directives), 3)][:32]
    fake.stalled = False
    tag = 1 + (directives[0] % 2 if directives else 0)
    with sandbox() as base:
        store = ImageStore(base / "root" / "store")
        try:
            image = pull(store, f"{fake.host}/fuzz:{tag}", credentials=Credentials("", ""), name="fuzz:1")
            assert image.layers, "a pull that succeeded stored no layers"
        finally:
            assert not os.listdir(store.tmp), f"a pull left {os.listdir(store.tmp)} in tmp/"
            findings = check_store(store)
            assert not findings, [str(f) for f in findings]
            del store


# --- running --------------------------------------------------------------------------------

def seeds(name: str) -> list[bytes]:
    return TARGETS[name].make_seeds()


def corpus_dir(name: str, path: Path | None = None) -> Path:
    """A corpus directory holding the target's seeds (libFuzzer adds what it finds there)."""
    path = path or CORPUS / name
    path.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds(name)):
        (path / f"seed-{i}").write_bytes(seed)
    return path


def fuzz_one(name: str, libfuzzer_args: list[str]) -> None:
    """Run atheris on one target (this process; libFuzzer exits when done).

    The corpus is .cache/fuzz/corpus/TARGET, growing from run to run, unless a
    directory is named among the arguments (a fresh one gives a repeatable run).
    """
    import atheris

    with atheris.instrument_imports(include=["pykvm"]):
        import pykvm.commands.container.image  # noqa: F401  (instrumented for coverage)
        import pykvm.container.image.build  # noqa: F401
        import pykvm.container.image.check  # noqa: F401
        import pykvm.container.image.layer  # noqa: F401
        import pykvm.container.image.registry  # noqa: F401
        import pykvm.container.image.store  # noqa: F401
        import pykvm.container.runtime.bundle  # noqa: F401
        import pykvm.vm.boot.bzimage  # noqa: F401
        import pykvm.vm.boot.cpio  # noqa: F401
        import pykvm.vm.boot.pvh  # noqa: F401
        import pykvm.vm.gdb.handlers  # noqa: F401
        import pykvm.vm.gdb.packets  # noqa: F401
    options = [arg for arg in libfuzzer_args if arg.startswith("-")]
    named = [Path(arg) for arg in libfuzzer_args if not arg.startswith("-")]
    corpus = corpus_dir(name, named[0] if named else None)
    atheris.Setup([sys.argv[0], *options, str(corpus)], lambda data: run_one(name, data))
    atheris.Fuzz()


def fuzz_all(runs: int, seed: int, max_len: int) -> int:
    """Every target, `runs` inputs each, one subprocess per target; returns how many failed."""
    failed = []
    for name in TARGETS:
        artifacts = ROOT / ".cache" / "fuzz" / "crashes" / name
        artifacts.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, __file__, name, f"-runs={runs}", f"-seed={seed}", f"-max_len={max_len}",
                   f"-artifact_prefix={artifacts}/", "-print_final_stats=1"]
        done = subprocess.run(command, capture_output=True, text=True)
        progress = [line for line in done.stderr.splitlines() if re.match(r"#\d+\s.*cov: ", line)]
        last = progress[-1].split() if progress else []
        figures = " ".join(f"{k} {v}" for k, v in zip(last[2::2], last[3::2]) if k in ("cov:", "ft:", "corp:"))
        print(f"{name:<16} exit {done.returncode}  runs {last[0][1:] if last else 0}  {figures}", flush=True)
        if done.returncode != 0:
            failed.append(name)
            print(done.stderr[-4000:])
    print(f"parser fuzz: {len(TARGETS)} targets, {runs} runs each, {len(failed)} failed: {failed}")
    return len(failed)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in TARGETS:
        fuzz_one(argv[0], argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="fuzz every target in turn")
    parser.add_argument("--runs", type=int, default=10000, help="inputs per target")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-len", type=int, default=8192, help="longest input, bytes")
    parser.add_argument("--replay", nargs="+", metavar=("TARGET", "FILE"), help="run FILEs through TARGET")
    parser.add_argument("--list", action="store_true", help="name the targets")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(TARGETS))
        return 0
    if args.replay:
        name, *files = args.replay
        for f in files:
            run_one(name, Path(f).read_bytes())
            print(f"{f}: ok")
        return 0
    if args.all:
        return 1 if fuzz_all(args.runs, args.seed, args.max_len) else 0
    parser.error(f"name a target ({', '.join(TARGETS)}) or --all")


if __name__ == "__main__":
    sys.exit(main())
