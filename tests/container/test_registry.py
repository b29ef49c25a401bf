"""Push and pull against a real registry (Debian's docker-registry), and interop with skopeo, umoci, runc.

Every test starts its own registry on 127.0.0.1:<free port> with storage in
a temp dir (fixture `registry`).  Auth tests put a small auth proxy (test
code, below) in front of the real registry: it answers 401 with a Basic or
Bearer challenge and issues tokens, as Docker Hub or a Harbor would.
"""
from __future__ import annotations

import base64
import http.client
import http.server
import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import urllib.parse

import pytest
from image_fixtures import bundled_context, registry, run_pykvm, store  # noqa: F401  (fixtures)

from pykvm.container.image import registry as reg_mod
from pykvm.container.image.build import BuildOptions, build_image
from pykvm.container.image.store import (MEDIA_OCI_INDEX, ImageStore, canonical_json, resolve_for_run,
                                         sha256_digest)
from pykvm.container.image.layer import apply_layer
from pykvm.container.image.registry import Credentials, Registry, pull, push
from pykvm.errors import ContainerError

SKOPEO = shutil.which("skopeo")
UMOCI = shutil.which("umoci")
RUNC = shutil.which("runc")
needs_skopeo = pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed (apt-get install skopeo)")


def small_image(store: ImageStore, tmp_path, tag="demo:1", payload: bytes = b"payload\n"):
    ctx = tmp_path / f"ctx-{secrets.token_hex(3)}"
    ctx.mkdir()
    (ctx / "data.bin").write_bytes(payload)
    (ctx / "Dockerfile").write_text('FROM scratch\nCOPY data.bin /data.bin\nENV K=v\nCMD ["/x"]\n')
    return build_image(store, BuildOptions(str(ctx), tag))


def flatten(store: ImageStore, name: str, dest) -> None:
    dest.mkdir()
    for descriptor in store.get(name).layers:
        with open(store.blob_path(descriptor["digest"]), "rb") as blob:
            apply_layer(blob, str(dest))


def skopeo(*args) -> subprocess.CompletedProcess:
    return subprocess.run([SKOPEO, "--insecure-policy", *args], capture_output=True, text=True, timeout=120)


# --- our client against the registry ---------------------------------------------------------

def test_push_pull_round_trip(store, registry, tmp_path):
    image = small_image(store, tmp_path)
    remote = f"{registry.host}/demo/app:v1"
    log: list[str] = []
    digest = push(store, "demo:1", remote, log=log.append)
    assert digest == image.manifest_digest
    assert sum("pushed" in line for line in log) == 2, log          # config + one layer
    log.clear()
    push(store, "demo:1", remote, log=log.append)
    assert sum("already there" in line for line in log) == 2, "HEAD finds the blobs, nothing re-sent"
    store.untag("demo:1")
    store.gc()
    assert list(store.blobs.iterdir()) == []
    pulled = pull(store, remote)
    assert pulled.manifest_digest == image.manifest_digest and pulled.name == remote
    assert pulled.config["config"]["Env"][-1] == "K=v"
    flatten(store, remote, tmp_path / "root")
    assert (tmp_path / "root" / "data.bin").read_bytes() == b"payload\n"


def test_chunked_upload_of_a_large_blob(store, registry, tmp_path, monkeypatch):
    monkeypatch.setattr(reg_mod, "MONOLITHIC_LIMIT", 64 << 10)
    monkeypatch.setattr(reg_mod, "CHUNK_SIZE", 100 << 10)
    image = small_image(store, tmp_path, payload=os.urandom(1 << 20))
    assert image.layers[0]["size"] > 64 << 10
    push(store, "demo:1", f"{registry.host}/big:1")
    data = registry.blob_data(image.layers[0]["digest"]).read_bytes()
    assert sha256_digest(data) == image.layers[0]["digest"], "the registry assembled the chunks in order"


def tamper(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_tampered_blob_is_rejected_and_nothing_stored(store, registry, tmp_path):
    image = small_image(store, tmp_path, payload=os.urandom(4096))
    push(store, "demo:1", f"{registry.host}/t:1")
    store.untag("demo:1")
    store.gc()
    tamper(registry.blob_data(image.layers[0]["digest"]))
    with pytest.raises(ContainerError, match="failed verification"):
        pull(store, f"{registry.host}/t:1")
    assert store.tags() == [] and list(store.blobs.iterdir()) == [] and os.listdir(store.tmp) == []


def test_tampered_manifest_is_rejected(store, registry, tmp_path):
    image = small_image(store, tmp_path)
    push(store, "demo:1", f"{registry.host}/m:1")
    store.untag("demo:1")
    store.gc()
    path = registry.blob_data(image.manifest_digest)
    path.write_bytes(path.read_bytes().replace(b'"schemaVersion":2', b'"schemaVersion":2 '))
    for ref in (f"{registry.host}/m:1", f"{registry.host}/m@{image.manifest_digest}"):
        with pytest.raises(ContainerError, match="manifest .* failed verification"):
            pull(store, ref)
    assert store.tags() == [] and list(store.blobs.iterdir()) == []


def test_pull_picks_linux_amd64_from_an_index(store, registry, tmp_path):
    image = small_image(store, tmp_path)
    push(store, "demo:1", f"{registry.host}/multi:amd64")
    manifest_size = store.blob_path(image.manifest_digest).stat().st_size
    index = {"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": [
        {"mediaType": image.manifest["mediaType"], "digest": image.manifest_digest, "size": manifest_size,
         "platform": {"os": "linux", "architecture": "amd64"}}]}
    with Registry(registry.host) as r:
        r.put_manifest("multi", "latest", canonical_json(index), MEDIA_OCI_INDEX, "repository:multi:pull,push")
    store.untag("demo:1")
    store.gc()
    pulled = pull(store, f"{registry.host}/multi")
    assert pulled.manifest_digest == image.manifest_digest


def test_unreachable_registry_is_one_line(store, tmp_path):
    from image_fixtures import free_port
    small_image(store, tmp_path)
    with pytest.raises(ContainerError, match="cannot reach registry 127.0.0.1"):
        push(store, "demo:1", f"127.0.0.1:{free_port()}/x:1")


def test_cli_push_pull(store, registry, tmp_path):
    small_image(store, tmp_path, tag="cli:1")
    status, _, err = run_pykvm("container", "push", "cli:1", f"{registry.host}/cli:1")
    assert status == 0, err
    assert "digest: sha256:" in err
    assert run_pykvm("container", "rmi", "cli:1")[0] == 0
    status, out, err = run_pykvm("container", "pull", f"{registry.host}/cli:1")
    assert status == 0 and out.strip() == f"{registry.host}/cli:1", err
    status, _, err = run_pykvm("container", "push", "cli:1")
    assert status != 0 and err.startswith("pykvm: error:") and err.count("\n") == 1


# --- auth: basic and bearer, through a proxy in front of the real registry ----------------------

class AuthProxy(http.server.ThreadingHTTPServer):
    """Requires Basic or Bearer auth, then forwards to the registry (test code, not pykvm)."""

    def __init__(self, upstream: str, scheme: str, user="alice", password="s3cret", anonymous_pull=False,
                 expire_after: int | None = None):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream, self.scheme = upstream, scheme
        self.user, self.password, self.anonymous_pull = user, password, anonymous_pull
        self.expire_after = expire_after                   # a token expires after this many uses
        self.tokens: dict[str, str] = {}                   # token -> scope
        self.uses: dict[str, int] = {}                     # token -> requests it authorized
        self.expired = 0
        self.token_requests = 0
        self.host = f"127.0.0.1:{self.server_address[1]}"
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.shutdown()
        self.server_close()


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _basic_ok(self) -> bool:
        want = "Basic " + base64.b64encode(f"{self.server.user}:{self.server.password}".encode()).decode()
        return self.headers.get("Authorization") == want

    def _reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _token(self):
        srv = self.server
        srv.token_requests += 1
        scopes = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("scope", [""])
        scope = max(scopes, key=len)                       # the widest asked for: ours, not the challenge's
        if not self._basic_ok() and not (srv.anonymous_pull and scope.endswith(":pull")):
            return self._reply(401, b'{"details":"bad credentials"}')
        token = secrets.token_hex(8)
        srv.tokens[token] = scope
        self._reply(200, json.dumps({"token": token}).encode(), [("Content-Type", "application/json")])

    def _authorized(self) -> bool:
        """Basic: the password. Bearer: a live token whose scope allows this request's action."""
        srv = self.server
        auth = self.headers.get("Authorization", "")
        if srv.scheme == "basic":
            return self._basic_ok()
        token = auth[7:] if auth.startswith("Bearer ") else ""
        if token not in srv.tokens:
            return False
        granted = srv.tokens[token].rpartition(":")[2].split(",")
        if self._action() not in granted:
            return False
        srv.uses[token] = srv.uses.get(token, 0) + 1
        if srv.expire_after is not None and srv.uses[token] > srv.expire_after:
            srv.expired += 1
            return False
        return True

    def _action(self) -> str:
        return "pull" if self.command in ("GET", "HEAD") else "push"

    def _challenge(self):
        if self.server.scheme == "basic":
            value = 'Basic realm="test registry"'
        else:
            m = re.match(r"^/v2/(.+?)/(?:blobs|manifests)/", self.path)
            repo = m.group(1) if m else ""
            action = "pull" if self._action() == "pull" else "pull,push"
            value = (f'Bearer realm="http://{self.server.host}/token",service="test",'
                     f'scope="repository:{repo}:{action}"')
        self._reply(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                    [("WWW-Authenticate", value), ("Content-Type", "application/json")])

    def _forward(self):
        if self.path.startswith("/token"):
            return self._token()
        if not self._authorized():
            return self._challenge()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        conn = http.client.HTTPConnection(self.server.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("authorization", "host")}
        conn.request(self.command, self.path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        out = []
        for k, v in r.getheaders():
            if k.lower() in ("content-length", "connection", "transfer-encoding"):
                continue
            out.append((k, v.replace(self.server.upstream, self.server.host)))
        conn.close()
        self._reply(r.status, data, out)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward


@pytest.fixture
def auth_proxy(registry):
    proxies = []

    def make(scheme, **kw):
        proxy = AuthProxy(registry.host, scheme, **kw)
        proxies.append(proxy)
        return proxy
    yield make
    for p in proxies:
        p.stop()


@pytest.mark.parametrize("scheme", ["basic", "bearer"])
def test_auth_with_password(store, tmp_path, auth_proxy, scheme):
    proxy = auth_proxy(scheme)
    image = small_image(store, tmp_path)
    remote = f"{proxy.host}/secure/app:1"
    with pytest.raises(ContainerError, match="user name and password|401|token server"):
        push(store, "demo:1", remote, credentials=Credentials())
    good = Credentials("alice", "s3cret")
    assert push(store, "demo:1", remote, credentials=good) == image.manifest_digest
    with pytest.raises(ContainerError):
        push(store, "demo:1", remote, credentials=Credentials("alice", "wrong"))
    store.untag("demo:1")
    store.gc()
    assert pull(store, remote, credentials=good).manifest_digest == image.manifest_digest
    if scheme == "bearer":
        assert proxy.token_requests >= 2 and all(s.startswith("repository:secure/app:") for s in proxy.tokens.values())


def test_anonymous_bearer_pull(store, tmp_path, auth_proxy, registry):
    image = small_image(store, tmp_path)
    push(store, "demo:1", f"{registry.host}/public/app:1")
    proxy = auth_proxy("bearer", anonymous_pull=True)
    store.untag("demo:1")
    store.gc()
    pulled = pull(store, f"{proxy.host}/public/app:1", credentials=Credentials())
    assert pulled.manifest_digest == image.manifest_digest and proxy.token_requests >= 1


def test_https_unless_local_or_insecure():
    assert Registry("127.0.0.1:5000").scheme == "http"
    assert Registry("localhost:5000").scheme == "http"
    assert Registry("registry.example.com").scheme == "https"
    assert Registry("registry.example.com", insecure=True).scheme == "http"
    assert Registry("docker.io").api_host == "registry-1.docker.io"


# --- interop with skopeo, umoci and runc ----------------------------------------------------------

@needs_skopeo
def test_skopeo_reads_our_layout_and_pulls_what_we_push(store, registry, tmp_path):
    image = small_image(store, tmp_path)
    info = skopeo("inspect", f"oci:{store.layout}:demo:1")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["Digest"] == image.manifest_digest
    push(store, "demo:1", f"{registry.host}/interop:1")
    out = tmp_path / "skopeo-layout"
    copy = skopeo("copy", "--src-tls-verify=false", f"docker://{registry.host}/interop:1", f"oci:{out}:interop")
    assert copy.returncode == 0, copy.stderr
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == image.manifest_digest, "skopeo got our manifest byte for byte"


@needs_skopeo
@pytest.mark.parametrize("fmt", ["oci", "v2s2"])
def test_we_pull_what_skopeo_pushes(store, registry, tmp_path, fmt):
    small_image(store, tmp_path, payload=b"from skopeo\n")
    copy = skopeo("copy", "--dest-tls-verify=false", "--format", fmt,
                  f"oci:{store.layout}:demo:1", f"docker://{registry.host}/fromskopeo:{fmt}")
    assert copy.returncode == 0, copy.stderr
    store.untag("demo:1")
    store.gc()
    pulled = pull(store, f"{registry.host}/fromskopeo:{fmt}")
    # stored as skopeo stores either kind in an OCI layout: OCI media types, the same config
    assert pulled.manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert pulled.manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert {d["mediaType"] for d in pulled.layers} == {"application/vnd.oci.image.layer.v1.tar+gzip"}
    with Registry(registry.host) as r:
        remote_bytes, _ = r.get_manifest("fromskopeo", fmt, "repository:fromskopeo:pull")
    assert pulled.config_digest == json.loads(remote_bytes)["config"]["digest"]
    assert pulled.repo_digest == f"{registry.host}/fromskopeo@{sha256_digest(remote_bytes)}"
    flatten(store, pulled.name, tmp_path / "root")
    assert (tmp_path / "root" / "data.bin").read_bytes() == b"from skopeo\n"


@needs_skopeo
def test_we_pull_and_unpack_zstd_layers(store, registry, tmp_path):
    small_image(store, tmp_path, payload=b"zstd layer\n" * 100)
    copy = skopeo("copy", "--dest-tls-verify=false", "--dest-compress-format", "zstd",
                  f"oci:{store.layout}:demo:1", f"docker://{registry.host}/zstd:1")
    assert copy.returncode == 0, copy.stderr
    store.untag("demo:1")
    store.gc()
    pulled = pull(store, f"{registry.host}/zstd:1")
    assert [d["mediaType"] for d in pulled.layers] == ["application/vnd.oci.image.layer.v1.tar+zstd"]
    assert store.blob_path(pulled.layers[0]["digest"]).read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    flatten(store, pulled.name, tmp_path / "root")
    assert (tmp_path / "root" / "data.bin").read_bytes() == b"zstd layer\n" * 100
    (layer,) = resolve_for_run(pulled.name, store).layers      # unpacked for overlayfs, diff_id checked
    assert open(os.path.join(layer, "data.bin"), "rb").read() == b"zstd layer\n" * 100
    status, out, _ = run_pykvm("container", "images")
    assert status == 0 and out.splitlines()[1].split()[-1] == "1.1kB"


@needs_skopeo
@pytest.mark.root
@pytest.mark.skipif(UMOCI is None, reason="umoci is not installed (apt-get install umoci)")
def test_umoci_unpacks_a_docker_format_image_we_pulled(store, registry, tmp_path):
    small_image(store, tmp_path, payload=b"docker format\n")
    copy = skopeo("copy", "--dest-tls-verify=false", "--format", "v2s2",
                  f"oci:{store.layout}:demo:1", f"docker://{registry.host}/dock:1")
    assert copy.returncode == 0, copy.stderr
    store.untag("demo:1")
    store.gc()
    pull(store, f"{registry.host}/dock:1", name="dock:1")
    bundle = tmp_path / "bundle"
    unpack = subprocess.run([UMOCI, "unpack", "--image", f"{store.layout}:dock:1", str(bundle)],
                            capture_output=True, text=True)
    assert unpack.returncode == 0, unpack.stderr
    assert (bundle / "rootfs" / "data.bin").read_bytes() == b"docker format\n"


def test_pull_records_the_index_digest_and_takes_a_platform(store, registry, tmp_path):
    amd = small_image(store, tmp_path, tag="amd:1", payload=b"amd64\n")
    arm = small_image(store, tmp_path, tag="arm:1", payload=b"arm64\n")
    manifests = []
    for image, arch in ((amd, "amd64"), (arm, "arm64")):
        push(store, image.name, f"{registry.host}/multi:{arch}")
        manifests.append({"mediaType": image.manifest["mediaType"], "digest": image.manifest_digest,
                          "size": store.blob_path(image.manifest_digest).stat().st_size,
                          "platform": {"os": "linux", "architecture": arch}})
    index = canonical_json({"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": manifests})
    with Registry(registry.host) as r:
        r.put_manifest("multi", "latest", index, MEDIA_OCI_INDEX, "repository:multi:pull,push")
    store.remove(["amd:1", "arm:1"], force=True)
    store.gc()
    status, out, err = run_pykvm("container", "pull", f"{registry.host}/multi")
    assert status == 0, err
    status, out, err = run_pykvm("container", "inspect", f"{registry.host}/multi")
    assert json.loads(out)[0]["RepoDigests"] == [f"{registry.host}/multi@{sha256_digest(index)}"]
    assert json.loads(out)[0]["Id"] == amd.id
    status, _, err = run_pykvm("container", "pull", "--platform", "linux/arm64", f"{registry.host}/multi")
    assert status == 0, err
    pulled = ImageStore(store.root).get(f"{registry.host}/multi")
    assert pulled.id == arm.id and pulled.repo_digest.endswith(sha256_digest(index))
    flatten(store, pulled.name, tmp_path / "root")
    assert (tmp_path / "root" / "data.bin").read_bytes() == b"arm64\n"
    status, _, err = run_pykvm("container", "pull", "--platform", "linux/s390x", f"{registry.host}/multi")
    assert (status, err) == (1, "pykvm: error: the image index has no linux/s390x manifest "
                                "(it has: linux/amd64, linux/arm64)\n")


@needs_skopeo
@pytest.mark.root
@pytest.mark.skipif(UMOCI is None or RUNC is None, reason="umoci and runc are needed (apt-get install umoci runc)")
def test_runc_runs_the_hello_image_we_pushed(store, registry, tmp_path):
    build_image(store, BuildOptions(str(bundled_context(tmp_path, "hello")), "hello"))
    push(store, "hello", f"{registry.host}/hello:v1")
    layout = tmp_path / "layout"
    copy = skopeo("copy", "--src-tls-verify=false", f"docker://{registry.host}/hello:v1", f"oci:{layout}:hello")
    assert copy.returncode == 0, copy.stderr
    bundle = tmp_path / "bundle"
    unpack = subprocess.run([UMOCI, "unpack", "--image", f"{layout}:hello", str(bundle)],
                            capture_output=True, text=True)
    assert unpack.returncode == 0, unpack.stderr
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["args"] == ["/hello"]
    config["process"]["terminal"] = False
    (bundle / "config.json").write_text(json.dumps(config))
    name = f"pykvm-test-{secrets.token_hex(4)}"
    try:
        run = subprocess.run([RUNC, "run", "--bundle", str(bundle), name], capture_output=True, text=True,
                             timeout=60)
    finally:
        subprocess.run([RUNC, "delete", "--force", name], capture_output=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("Hello from pykvm!\n"), run.stdout


def test_from_a_registry_image_pulls_it(store, registry, tmp_path):
    base = small_image(store, tmp_path, tag="base:1", payload=b"base layer\n")
    push(store, "base:1", f"{registry.host}/lib/base:1")
    store.untag("base:1")
    store.gc()
    ctx = tmp_path / "child"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {registry.host}/lib/base:1\nLABEL child=yes\n")
    log: list[str] = []
    child = build_image(store, BuildOptions(str(ctx), "child:1", log=log.append))
    assert any(line.startswith("pulling ") for line in log), log
    assert child.layers == base.layers and child.config["config"]["Labels"] == {"child": "yes"}


def test_progress_bar_on_a_terminal(capsys):
    bar = reg_mod._Bar("push 0123456789ab", 2_000_000, enabled=True)
    for done in (0, 1_000_000, 1_000_000, 2_000_000):
        bar(done)
    err = capsys.readouterr().err
    assert err.count("\r") == 3, repr(err)                 # the repeated 50% is not redrawn
    assert err.endswith("\rpush 0123456789ab      2.0/2.0 MB 100%\n")
    quiet = reg_mod._Bar("x", 10, enabled=False)
    quiet(10)
    assert capsys.readouterr().err == ""


@pytest.mark.root
@pytest.mark.skipif(UMOCI is None, reason="umoci is not installed (apt-get install umoci)")
def test_umoci_unpacks_our_layout_and_honours_our_whiteouts(store, tmp_path):
    build_image(store, BuildOptions(str(bundled_context(tmp_path, "busybox")), "busybox"))
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN mkdir -p /d/sub && touch /d/sub/f\n"
                                    "RUN rm /bin/vi && rm -r /d && mkdir /d && echo new > /d/g\n")
    build_image(store, BuildOptions(str(ctx), "wh:1"))
    bundle = tmp_path / "bundle"
    unpack = subprocess.run([UMOCI, "unpack", "--image", f"{store.layout}:wh:1", str(bundle)],
                            capture_output=True, text=True)
    assert unpack.returncode == 0, unpack.stderr
    rootfs = bundle / "rootfs"
    assert (rootfs / "bin" / "sh").is_symlink() and not (rootfs / "bin" / "vi").exists()
    assert sorted(os.listdir(rootfs / "d")) == ["g"], "the old /d/sub is hidden"
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["args"] == ["/bin/sh"]


def test_an_expired_token_is_renewed_mid_pull(store, tmp_path, auth_proxy, registry):
    """A token that expires between the manifest and the blobs: ask for a new one, go on."""
    image = small_image(store, tmp_path)
    push(store, "demo:1", f"{registry.host}/public/app:1")
    proxy = auth_proxy("bearer", anonymous_pull=True, expire_after=1)
    store.untag("demo:1")
    store.gc()
    pulled = pull(store, f"{proxy.host}/public/app:1", credentials=Credentials())
    assert pulled.manifest_digest == image.manifest_digest
    assert proxy.expired >= 1 and proxy.token_requests >= 2, (proxy.expired, proxy.token_requests)


def test_a_refused_fresh_token_is_one_error(store, tmp_path, auth_proxy, registry):
    """A registry that refuses even the token it just gave: an error, not a loop."""
    small_image(store, tmp_path)
    push(store, "demo:1", f"{registry.host}/public/app:1")
    proxy = auth_proxy("bearer", anonymous_pull=True, expire_after=0)
    with pytest.raises(ContainerError, match="refused the token"):
        pull(store, f"{proxy.host}/public/app:1", credentials=Credentials())
    assert proxy.token_requests <= 3
