"""An OCI distribution client: push and pull images (OCI distribution spec v1.0, spec.md).

The requests on the wire, for repository NAME on a registry:

    GET  /v2/                                       "API version check"; a 401 here names the auth scheme
    HEAD /v2/NAME/blobs/DIGEST                      does the registry have this blob?  (200 yes, 404 no)
    POST /v2/NAME/blobs/uploads/                    start an upload: 202 + Location: <upload URL>
    PUT  <upload URL>?digest=DIGEST  (body)         monolithic upload: the whole blob at once -> 201
    PATCH <upload URL>  Content-Range: a-b (body)   chunked upload: one chunk -> 202 + new Location
    PUT  <upload URL>?digest=DIGEST  (empty)        close a chunked upload -> 201
    PUT  /v2/NAME/manifests/TAG  Content-Type: T    the manifest, last, once its blobs are there
    GET  /v2/NAME/manifests/REF  Accept: T1, T2...  pull: the manifest (or an index of manifests)
    GET  /v2/NAME/blobs/DIGEST                      pull: a config or layer (may redirect elsewhere)

Every byte is checked: a blob's sha256 and size must match its descriptor,
a manifest's must match the digest asked for (or the Docker-Content-Digest
header).  A pull downloads into the store's tmp/ and moves anything into the
store only after every blob has been verified, so a tampered registry leaves
nothing behind.

Auth (distribution's token spec, docs/spec/auth/token.md): a 401 carries
`WWW-Authenticate: Basic realm=...` (send the user's password) or
`Bearer realm=R,service=S,scope=C` (GET R?service=S&scope=OURS, with the
password if there is one, and send the token it returns).  OURS is the scope
the whole operation needs (`repository:NAME:pull,push` for a push), not the
challenge's, which names only what the refused request needed.  A token is
good for a while (its `expires_in`): a 401 for a token we hold means it has
expired or was revoked, so we ask once for a new one before giving up.
Anonymous access is the same dance without a password.  Where the password
comes from: credentials.py (docker's config.json and credential helpers).  HTTP for localhost, HTTPS otherwise
unless --insecure.  PYKVM_TRACE_HTTP=1 prints every request and its status.
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import ssl
import sys
import urllib.parse
from dataclasses import dataclass, field

from pykvm.container.image.store import (INDEX_TYPES, MANIFEST_TYPES, MEDIA_DOCKER_CONFIG,
                                         MEDIA_DOCKER_LAYER_GZIP, MEDIA_DOCKER_LAYER_TAR, MEDIA_DOCKER_LIST,
                                         MEDIA_DOCKER_MANIFEST, MEDIA_OCI_CONFIG, MEDIA_OCI_INDEX,
                                         MEDIA_OCI_LAYER_GZIP, MEDIA_OCI_LAYER_TAR, MEDIA_OCI_MANIFEST,
                                         REPO_DIGEST, Image, ImageStore, canonical_json, check_digest,
                                         host_platform, normalize_name, parse_platform, pick_platform,
                                         sha256_digest, split_reference)
from pykvm.container.image.credentials import Credentials
from pykvm.container.image.schema import check_config, check_index, check_manifest, parse_document
from pykvm.errors import ConfigError, ContainerError

__all__ = ["RemoteRef", "parse_remote", "Registry", "push", "pull", "login", "Credentials"]

DOCKER_HUB = "docker.io"                        # what an unqualified name means (docker's rule)
DOCKER_HUB_API = "registry-1.docker.io"
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")   # plain HTTP is allowed here
MONOLITHIC_LIMIT = 16 << 20                     # blobs up to this size go in one PUT
CHUNK_SIZE = 16 << 20                           # PATCH chunk size for larger blobs
IO_CHUNK = 1 << 20                              # socket read/write unit
TIMEOUT = 120                                   # seconds, per socket operation
MAX_REDIRECTS = 5
MAX_MANIFEST = 4 << 20                          # distribution caps manifests at 4 MiB
MANIFEST_ACCEPT = ", ".join([MEDIA_OCI_MANIFEST, MEDIA_OCI_INDEX, MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_LIST])
TRACE_ENV = "PYKVM_TRACE_HTTP"                  # set to print each request and its status on stderr
CHALLENGE_PARAM_RE = re.compile(r'(\w+)="([^"]*)"|(\w+)=([^,\s]*)')


@dataclass(frozen=True)
class RemoteRef:
    """host + repository + (tag or digest): where an image lives in a registry."""

    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        host = "" if self.host == DOCKER_HUB else self.host + "/"
        return f"{host}{self.repository}" + (f"@{self.digest}" if self.digest else f":{self.tag or 'latest'}")


def parse_remote(text: str, require_host: bool = False) -> RemoteRef:
    """`[HOST[:PORT]/]REPO[:TAG][@DIGEST]`; no host means Docker Hub (library/ for one component)."""
    host, path, tag, digest = split_reference(text)
    if host is None:
        if require_host:
            raise ConfigError(f"{text}: name a registry, as in 127.0.0.1:5000/{path}")
        host = DOCKER_HUB
        if "/" not in path:
            path = "library/" + path
    return RemoteRef(host, path, tag, digest)


class _Response:
    """A finished HTTP exchange: status, headers, and the body (read, unless streamed)."""

    def __init__(self, raw: http.client.HTTPResponse, body: bytes | None):
        self.status = raw.status
        self.headers = raw.headers
        self.raw = raw
        self.body = body


class Registry:
    """One registry host: connections, auth state, and the distribution API calls."""

    def __init__(self, host: str, *, insecure: bool = False, credentials: Credentials | None = None,
                 progress: bool | None = None):
        self.host = host
        self.api_host = DOCKER_HUB_API if host == DOCKER_HUB else host
        hostname = urllib.parse.urlsplit("//" + self.api_host).hostname or ""
        plain = insecure or hostname in LOCAL_HOSTS or hostname.startswith("127.")
        self.scheme = "http" if plain else "https"
        self.credentials = credentials or Credentials.lookup(host)
        self.tokens: dict[str, str] = {}            # scope -> bearer token
        self.basic = False
        self.connections: dict[tuple[str, str], http.client.HTTPConnection] = {}
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.trace = bool(os.environ.get(TRACE_ENV))

    def close(self) -> None:
        for conn in self.connections.values():
            conn.close()
        self.connections.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- HTTP plumbing
    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        key = (scheme, netloc)
        if key not in self.connections:
            if scheme == "https":
                self.connections[key] = http.client.HTTPSConnection(
                    netloc, timeout=TIMEOUT, context=ssl.create_default_context(), blocksize=IO_CHUNK)
            else:
                self.connections[key] = http.client.HTTPConnection(netloc, timeout=TIMEOUT, blocksize=IO_CHUNK)
        return self.connections[key]

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.api_host}{path}"

    def request(self, method: str, url: str, *, headers: dict | None = None, body=None,
                scope: str = "", stream: bool = False, ok=(200,)) -> _Response:
        """Send one request, answering auth challenges and following redirects; check the status."""
        url = urllib.parse.urljoin(self.url("/"), url)
        for _ in range(MAX_REDIRECTS + 2):
            response = self._send(method, url, headers or {}, body, stream, auth=self._auth_header(scope, url))
            answered = False                       # a fresh token (or the password) sent already
            while response.status == 401 and self._answer_challenge(response, scope, answered):
                answered = True
                response = self._send(method, url, headers or {}, body, stream,
                                      auth=self._auth_header(scope, url))
            if response.status in (301, 302, 303, 307, 308) and method in ("GET", "HEAD"):
                url = urllib.parse.urljoin(url, response.headers["Location"])
                continue
            if response.status not in ok:
                raise ContainerError(self._describe_failure(method, url, response))
            return response
        raise ContainerError(f"{method} {url}: too many redirects")

    def _send(self, method, url, headers, body, stream, auth) -> _Response:
        parts = urllib.parse.urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = dict(headers)
        if auth and parts.netloc == self.api_host:
            headers["Authorization"] = auth
        if hasattr(body, "seek"):
            body.seek(0)
        for attempt in (1, 2):
            conn = self._connection(parts.scheme, parts.netloc)
            try:
                conn.request(method, target, body=body, headers=headers)
                raw = conn.getresponse()
                break
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
                conn.close()                              # a kept-alive connection the server closed
                if attempt == 2 or (body is not None and not hasattr(body, "seek")):
                    raise ContainerError(f"{method} {url}: the registry closed the connection") from None
                if hasattr(body, "seek"):
                    body.seek(0)
            except (OSError, ssl.SSLError) as e:
                conn.close()
                raise ContainerError(f"cannot reach registry {parts.netloc}: {e}") from None
            except http.client.HTTPException as e:
                conn.close()
                raise ContainerError(f"registry {parts.netloc} sent a malformed response to "
                                     f"{method} {parts.path}: {e!r}") from None
        if self.trace:
            query = f"?{parts.query}" if parts.query else ""
            print(f"{method} {parts.path}{query[:40]}{'...' if len(query) > 40 else ''} -> {raw.status}"
                  + (f" ({len(body)} bytes sent)" if isinstance(body, bytes) and body else ""),
                  file=sys.stderr)
        if stream and raw.status in (200, 206):
            return _Response(raw, None)
        return _Response(raw, self.read_body(raw, f"{method} {parts.path}"))

    def read_body(self, raw: http.client.HTTPResponse, what: str, amount: int | None = None) -> bytes:
        """raw.read(amount), where a body cut short or a peer gone silent is one clean error."""
        try:
            return raw.read(amount)
        except (OSError, http.client.HTTPException) as e:
            self.close()                             # the connection is mid-answer: useless now
            raise ContainerError(f"registry {self.host} broke off its answer to {what}: {e!r}") from None

    def _auth_header(self, scope: str, url: str) -> str | None:
        if scope in self.tokens:
            return f"Bearer {self.tokens[scope]}"
        if self.basic:
            return _basic(self.credentials)
        return None

    def _answer_challenge(self, response: _Response, scope: str, answered: bool) -> bool:
        """Handle a 401's WWW-Authenticate; True when we now hold something to retry with.

        `answered`: this request was already retried with a fresh token or the password,
        so a second 401 is a refusal, not an expired token."""
        challenge = response.headers.get("WWW-Authenticate", "")
        scheme, _, params_text = challenge.partition(" ")
        params = {m[0] or m[2]: m[1] or m[3] for m in CHALLENGE_PARAM_RE.findall(params_text)}
        if scheme.lower() == "basic":
            if not self.credentials.username:
                raise ContainerError(f"registry {self.host} wants a user name and password: "
                                     f"`pykvm container login {self.host}` (or --username)")
            if self.basic:                        # the request carried the password already
                raise ContainerError(f"registry {self.host} refused the password of "
                                     f"{self.credentials.username!r}: check it with "
                                     f"`pykvm container login {self.host}`")
            self.basic = True
            return True
        if scheme.lower() == "bearer" and "realm" in params:
            if answered:
                raise ContainerError(f"registry {self.host} refused the token its token server gave "
                                     f"for {scope or 'access'} ({params.get('error', 'unauthorized')})")
            self.tokens[scope] = self._fetch_token(params, scope)   # the first, or one for an expired token
            return True
        return False

    def _fetch_token(self, params: dict, scope: str) -> str:
        """token.md: GET realm?service=..&scope=.. (with basic auth when we have a password)."""
        query = [("service", params.get("service", ""))]
        query += [("scope", s) for s in dict.fromkeys([scope, params.get("scope", "")]) if s]
        url = params["realm"] + ("&" if "?" in params["realm"] else "?") + urllib.parse.urlencode(query)
        headers = {}
        if self.credentials.username:
            headers["Authorization"] = _basic(self.credentials)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ContainerError(f"registry {self.host} names a bad token realm {params['realm']!r}")
        response = self._send("GET", url, headers, None, False, auth=None)
        if response.status in (401, 403):
            who = f"user {self.credentials.username!r}" if self.credentials.username else "anonymous access"
            raise ContainerError(f"registry {self.host} refused {who} ({response.status} "
                                 f"{response.raw.reason} from its token server): "
                                 + ("check the password" if self.credentials.username else
                                    f"`pykvm container login {self.host}`"))
        if response.status != 200:
            raise ContainerError(f"token server {parts.netloc} said {response.status} {response.raw.reason}")
        try:
            data = json.loads(response.body)
            return data.get("token") or data["access_token"]
        except (ValueError, KeyError, TypeError):
            raise ContainerError(f"token server {parts.netloc} sent no token") from None

    def _describe_failure(self, method: str, url: str, response: _Response) -> str:
        detail = ""
        try:
            errors = json.loads(response.body or b"{}").get("errors", [])
            detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
        except (ValueError, AttributeError):
            pass
        path = urllib.parse.urlsplit(url).path
        return (f"registry {self.host}: {method} {path} -> {response.status} {response.raw.reason}"
                + (f" ({detail})" if detail else ""))

    # --- blobs
    def has_blob(self, repo: str, digest: str, scope: str) -> bool:
        r = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", scope=scope, ok=(200, 404))
        return r.status == 200

    def upload_blob(self, repo: str, digest: str, size: int, path: str, scope: str, bar=None) -> None:
        """POST an upload, then one monolithic PUT or PATCH chunks + a closing PUT."""
        r = self.request("POST", f"/v2/{repo}/blobs/uploads/", scope=scope, ok=(202,),
                         headers={"Content-Length": "0"})
        location = r.headers["Location"]
        with open(path, "rb") as f:
            if size <= MONOLITHIC_LIMIT:
                self.request("PUT", _with_query(location, digest=digest), body=f, scope=scope, ok=(201,),
                             headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
                if bar:
                    bar(size)
                return
            offset = 0
            while offset < size:
                chunk = f.read(CHUNK_SIZE)
                r = self.request("PATCH", location, body=chunk, scope=scope, ok=(202,), headers={
                    "Content-Type": "application/octet-stream", "Content-Length": str(len(chunk)),
                    "Content-Range": f"{offset}-{offset + len(chunk) - 1}"})
                location = r.headers["Location"]
                offset += len(chunk)
                if bar:
                    bar(offset)
        self.request("PUT", _with_query(location, digest=digest), scope=scope, ok=(201,),
                     headers={"Content-Length": "0"})

    def download_blob(self, repo: str, descriptor: dict, out, scope: str, bar=None) -> None:
        """GET a blob into `out`, checking its size and sha256 as it arrives."""
        digest, size = check_digest(descriptor["digest"]), descriptor["size"]
        r = self.request("GET", f"/v2/{repo}/blobs/{digest}", scope=scope, stream=True)
        h = hashlib.sha256()
        got = 0
        while chunk := self.read_body(r.raw, f"GET blob {digest}", IO_CHUNK):
            got += len(chunk)
            if got > size:
                r.raw.close()
                raise ContainerError(f"blob {digest} is larger than its descriptor says ({size} bytes)")
            h.update(chunk)
            out.write(chunk)
            if bar:
                bar(got)
        if got != size or "sha256:" + h.hexdigest() != digest:
            raise ContainerError(f"blob {digest} failed verification: got {got} bytes with digest "
                                 f"sha256:{h.hexdigest()} (expected {size} bytes): refusing it")

    # --- manifests
    def get_manifest(self, repo: str, reference: str, scope: str) -> tuple[bytes, str]:
        """GET a manifest or index; verify its digest; return (bytes, media type)."""
        r = self.request("GET", f"/v2/{repo}/manifests/{reference}", scope=scope,
                         headers={"Accept": MANIFEST_ACCEPT})
        body = r.body
        if len(body) > MAX_MANIFEST:
            raise ContainerError(f"manifest {repo}:{reference} is larger than {MAX_MANIFEST} bytes")
        actual = sha256_digest(body)
        expected = reference if reference.startswith("sha256:") else r.headers.get("Docker-Content-Digest")
        if expected and expected != actual:
            raise ContainerError(f"manifest {repo}:{reference} failed verification: "
                                 f"its content is {actual}, the registry said {expected}: refusing it")
        try:
            media_type = json.loads(body).get("mediaType") or r.headers.get("Content-Type", "").split(";")[0]
        except (ValueError, AttributeError):
            raise ContainerError(f"manifest {repo}:{reference} is not JSON") from None
        if media_type not in MANIFEST_TYPES + INDEX_TYPES:
            raise ContainerError(f"manifest {repo}:{reference} has unsupported media type {media_type!r}")
        return body, media_type

    def put_manifest(self, repo: str, reference: str, body: bytes, media_type: str, scope: str) -> str:
        r = self.request("PUT", f"/v2/{repo}/manifests/{reference}", body=body, scope=scope, ok=(201,),
                         headers={"Content-Type": media_type, "Content-Length": str(len(body))})
        digest = sha256_digest(body)
        echoed = r.headers.get("Docker-Content-Digest")
        if echoed and echoed != digest:
            raise ContainerError(f"registry {self.host} stored the manifest as {echoed}, expected {digest}")
        return digest


def _basic(creds: Credentials) -> str:
    token = base64.b64encode(f"{creds.username}:{creds.password or ''}".encode()).decode()
    return f"Basic {token}"


def _with_query(location: str, **params) -> str:
    return location + ("&" if "?" in location else "?") + urllib.parse.urlencode(params)


# --- progress bars ---------------------------------------------------------------------

@dataclass
class _Bar:
    """One line per blob on a terminal: `push 3f1a2b4c5d6e  12.0/100.0 MB`."""

    label: str
    total: int
    enabled: bool
    last: int = field(default=-1)

    def __call__(self, done: int) -> None:
        if not self.enabled:
            return
        percent = done * 100 // max(self.total, 1)
        if percent == self.last:
            return
        self.last = percent
        end = "\n" if done >= self.total else ""
        print(f"\r{self.label}  {done / 1e6:7.1f}/{self.total / 1e6:.1f} MB {percent:3d}%",
              end=end, file=sys.stderr, flush=True)


# --- login, push and pull -------------------------------------------------------------

def registry_host(server: str | None) -> str:
    """`login`'s SERVER as a registry host: none is Docker Hub; a URL's scheme and path go."""
    if not server:
        return DOCKER_HUB
    if "://" in server:
        server = urllib.parse.urlsplit(server).netloc
    host = server.rstrip("/")
    if not host or "/" in host or any(c.isspace() for c in host):
        raise ConfigError(f"{server!r} is not a registry host (want HOST[:PORT])")
    return DOCKER_HUB if host in ("index.docker.io", "registry-1.docker.io") else host


def login(host: str, credentials: Credentials, *, insecure: bool = False) -> None:
    """Check `credentials` against `host` as docker login does: GET /v2/ with them.

    A Basic registry must accept the password; a token registry's token server must
    give a token for them (docker asks without a scope, and so do we). A registry that
    asks for nothing accepts any login, as under docker."""
    if not credentials.username:
        raise ConfigError("login needs a user name (-u USER)")
    with Registry(host, insecure=insecure, credentials=credentials) as reg:
        reg.request("GET", "/v2/", scope="")


def push(store: ImageStore, local: str, remote: str | None = None, *, insecure: bool = False,
         credentials: Credentials | None = None, log=None) -> str:
    """Push local image `local` to `remote` (default: its own name); returns the manifest digest."""
    image = store.get(local)
    ref = parse_remote(remote or image.name, require_host=True)
    scope = f"repository:{ref.repository}:pull,push"
    manifest_bytes = store.read_blob(image.manifest_digest)
    blobs = [image.manifest["config"]] + image.layers
    with Registry(ref.host, insecure=insecure, credentials=credentials) as reg:
        for descriptor in blobs:
            digest = descriptor["digest"]
            if reg.has_blob(ref.repository, digest, scope):
                _say(log, f"{digest[7:19]}: already there")
                continue
            bar = _Bar(f"push {digest[7:19]}", descriptor["size"], reg.progress)
            reg.upload_blob(ref.repository, digest, descriptor["size"], str(store.blob_path(digest)), scope, bar)
            _say(log, f"{digest[7:19]}: pushed {descriptor['size']} bytes")
        media_type = image.manifest.get("mediaType", MEDIA_OCI_MANIFEST)
        digest = reg.put_manifest(ref.repository, ref.tag or "latest", manifest_bytes, media_type, scope)
    _say(log, f"{ref}: digest: {digest} size: {len(manifest_bytes)}")
    return digest


def pull(store: ImageStore, remote: str, *, insecure: bool = False, credentials: Credentials | None = None,
         log=None, name: str | None = None, platform: str | None = None) -> Image:
    """Pull `remote` into the store (verified, all or nothing) and tag it; returns the image.

    1. GET the manifest (an index: pick `platform`, default this machine's, GET that manifest)
    2. GET every blob the store lacks into tmp/, checking size and sha256
    3. check the config agrees with the manifest
    4. only then move the blobs into blobs/, store the manifest (a Docker v2 schema 2 one
       converted to OCI's media types, as `skopeo copy` to an OCI layout does) and write the
       tag, which remembers REPO@DIGEST: the digest the registry knows it by (the index's,
       when there was one), docker's RepoDigests
    """
    ref = parse_remote(remote)
    wanted = parse_platform(platform) if platform else host_platform()
    scope = f"repository:{ref.repository}:pull"
    staged: list[tuple[str, dict]] = []
    try:
        with Registry(ref.host, insecure=insecure, credentials=credentials) as reg:
            repo_digest, manifest_bytes, media_type = _fetch_image_manifest(reg, ref, scope, wanted)
            manifest = json.loads(manifest_bytes)
            _check_manifest(manifest, ref)
            for descriptor in [manifest["config"]] + manifest["layers"]:
                if store.has_blob(descriptor["digest"]):
                    _say(log, f"{descriptor['digest'][7:19]}: already in the store")
                    continue
                staged.append((_stage_blob(store, reg, ref.repository, descriptor, scope), descriptor))
                _say(log, f"{descriptor['digest'][7:19]}: downloaded {descriptor['size']} bytes, verified")
        _check_config(staged_path(staged, manifest["config"]["digest"], store), manifest, ref)
        if media_type == MEDIA_DOCKER_MANIFEST:
            manifest_bytes, media_type = to_oci_manifest(manifest, ref), MEDIA_OCI_MANIFEST
    except BaseException:
        for path, _ in staged:
            if os.path.exists(path):
                os.unlink(path)
        raise
    for path, descriptor in staged:
        store.adopt(path, descriptor["digest"])            # verified while downloading
    digest = store.put_bytes(manifest_bytes)
    local = name or normalize_name(str(ref) if ref.host != DOCKER_HUB else remote)
    repository = local.rsplit("@", 1)[0] if "@" in local else local.rsplit(":", 1)[0]
    store.tag(local, {"mediaType": media_type, "digest": digest, "size": len(manifest_bytes),
                      "annotations": {REPO_DIGEST: f"{repository}@{repo_digest}"}})
    _say(log, f"{ref}: digest: {repo_digest}")
    return store.get(local)


# Docker v2 schema 2 -> OCI (image-spec media-types.md "Compatibility Matrix"): the same
# blobs under OCI's names; the config's bytes (and so the image ID) do not change.
DOCKER_TO_OCI = {
    MEDIA_DOCKER_CONFIG: MEDIA_OCI_CONFIG,
    MEDIA_DOCKER_LAYER_GZIP: MEDIA_OCI_LAYER_GZIP,
    MEDIA_DOCKER_LAYER_TAR: MEDIA_OCI_LAYER_TAR,
}


def to_oci_manifest(manifest: dict, ref: RemoteRef) -> bytes:
    """A Docker v2 schema 2 manifest as the OCI manifest skopeo writes into an OCI layout."""
    def convert(descriptor: dict) -> dict:
        media_type = descriptor.get("mediaType")
        if media_type not in DOCKER_TO_OCI:
            raise ContainerError(f"{ref}: cannot store a blob of type {media_type!r} in an OCI layout")
        return {**descriptor, "mediaType": DOCKER_TO_OCI[media_type]}
    oci = {"schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST, "config": convert(manifest["config"]),
           "layers": [convert(d) for d in manifest["layers"]]}
    if manifest.get("annotations"):
        oci["annotations"] = manifest["annotations"]
    return canonical_json(oci)


def _fetch_image_manifest(reg: Registry, ref: RemoteRef, scope: str,
                          wanted: tuple[str, str, str]) -> tuple[str, bytes, str]:
    """(the digest the registry names it by, the image manifest, its media type);
    through an index (image-index.md) when the registry sends one."""
    body, media_type = reg.get_manifest(ref.repository, ref.reference, scope)
    top = sha256_digest(body)
    if media_type in INDEX_TYPES:
        chosen = pick_platform(json.loads(body), *wanted)
        body, media_type = reg.get_manifest(ref.repository, chosen["digest"], scope)
        if media_type not in MANIFEST_TYPES:
            raise ContainerError(f"{ref}: the {'/'.join(p for p in wanted if p)} entry is not an image manifest")
    return top, body, media_type


def _check_config(path: str, manifest: dict, ref: RemoteRef) -> None:
    """config.md: one diff_id per layer of the manifest."""
    with open(path, "rb") as f:
        config = check_config(parse_document(f.read(), f"{ref}: image config"), f"{ref}: image config")
    diff_ids = config.get("rootfs", {}).get("diff_ids")
    if diff_ids is None:
        raise ContainerError(f"{ref}: the image config is malformed (no rootfs.diff_ids)")
    if len(diff_ids) != len(manifest["layers"]):
        raise ContainerError(f"{ref}: the config lists {len(diff_ids)} layers, the manifest {len(manifest['layers'])}")


def staged_path(staged: list[tuple[str, dict]], digest: str, store: ImageStore) -> str:
    """Where a blob is now: staged in tmp/, or already in the store."""
    for path, descriptor in staged:
        if descriptor["digest"] == digest:
            return path
    return str(store.blob_path(digest))


def _stage_blob(store: ImageStore, reg: Registry, repo: str, descriptor: dict, scope: str) -> str:
    fd, path = store.temp_file(".blob")
    try:
        with os.fdopen(fd, "wb") as out:
            bar = _Bar(f"pull {descriptor['digest'][7:19]}", descriptor["size"], reg.progress)
            reg.download_blob(repo, descriptor, out, scope, bar)
    except BaseException:
        os.unlink(path)
        raise
    return path


def _check_manifest(manifest: dict, ref: RemoteRef) -> None:
    """manifest.md: schemaVersion 2, a config descriptor and layer descriptors with sha256 digests."""
    check_manifest(manifest, f"{ref}: image manifest")
    if manifest.get("schemaVersion") != 2:
        raise ContainerError(f"{ref}: image manifest has schemaVersion {manifest.get('schemaVersion')!r}, not 2")


def _say(log, text: str) -> None:
    if log:
        log(text)

