"""A token server for docker-registry's token auth (test code, not pykvm).

docker/distribution's docs/spec/auth/token.md and jwt.md: the registry answers 401 with
`WWW-Authenticate: Bearer realm=..,service=..,scope=..`; the client asks the realm for a token
(HTTP Basic with its password, or anonymously); the token is a JWT signed RS256 whose "access"
claim lists the actions granted per repository. The registry checks the signature against
its `rootcertbundle`, the audience (service), the issuer, the expiry, and that the granted
actions cover the request: a pull-only token cannot push. The expiry is checked with a minute
of leeway for clock skew (distribution's registry/auth/token/token.go, `Leeway`): a token is
refused once the registry's clock passes exp + REGISTRY_LEEWAY.

The key and its self-signed certificate come from the openssl command (no crypto library in
the tests); the JWT header carries the certificate (x5c), which the registry verifies against
the bundle.
"""
from __future__ import annotations

import base64
import http.server
import json
import secrets
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

__all__ = ["TokenServer", "registry_auth_config", "REGISTRY_LEEWAY"]

SERVICE = "pykvm-test-registry"
ISSUER = "pykvm-test-token-server"
REGISTRY_LEEWAY = 60                    # seconds docker-registry accepts a token past its exp


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer(http.server.ThreadingHTTPServer):
    """Issues tokens on 127.0.0.1: `users` may pull and push everything, anyone may pull
    repositories under `public/`. `lifetime`: seconds from issue to the token's exp claim
    (below -REGISTRY_LEEWAY the registry refuses it at once), read as each token is issued."""

    def __init__(self, workdir: Path, users: dict[str, str], lifetime: int = 300):
        super().__init__(("127.0.0.1", 0), _TokenHandler)
        self.users, self.lifetime = users, lifetime
        self.key, self.cert = workdir / "token.key", workdir / "token.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=pykvm-test-token", "-keyout", str(self.key), "-out", str(self.cert)],
                       check=True, capture_output=True)
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"],
                             check=True, capture_output=True).stdout
        self.x5c = base64.b64encode(der).decode()
        self.requests: list[dict] = []             # what each token request asked, got, and its exp
        self.realm = f"http://127.0.0.1:{self.server_address[1]}/token"
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def grant(self, user: str | None, scopes: list[str]) -> list[dict]:
        """The access claim: what `user` (None: anonymous) gets of the scopes asked for."""
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            wanted = [a for a in actions.split(",") if a]
            allowed = wanted if user else [a for a in wanted if a == "pull" and name.startswith("public/")]
            if allowed:
                access.append({"type": "repository", "name": name, "actions": allowed})
        return access

    def sign(self, claims: dict) -> str:
        header = {"alg": "RS256", "typ": "JWT", "x5c": [self.x5c]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                                   input=signing_input.encode(), check=True, capture_output=True).stdout
        return f"{signing_input}.{_b64url(signature)}"


class _TokenHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _user(self) -> tuple[bool, str | None]:
        """(credentials acceptable, user name or None for anonymous)."""
        auth = self.headers.get("Authorization", "")
        if not auth:
            return True, None
        if not auth.startswith("Basic "):
            return False, None
        user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        return self.server.users.get(user) == password, user

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        srv = self.server
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        scopes = query.get("scope", [])
        ok, user = self._user()
        now = int(time.time())
        exp = now + srv.lifetime
        srv.requests.append({"user": user, "scopes": scopes, "ok": ok, "exp": exp})
        if not ok:
            return self._reply(401, b'{"details":"incorrect username or password"}')
        claims = {"iss": ISSUER, "sub": user or "", "aud": query.get("service", [""])[0],
                  "exp": exp, "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8),
                  "access": srv.grant(user, scopes)}
        token = srv.sign(claims)
        self._reply(200, json.dumps({"token": token, "access_token": token,
                                     "expires_in": srv.lifetime}).encode())


def registry_auth_config(server: TokenServer) -> str:
    """docker-registry's `auth:` section for token auth through `server`."""
    return (f"auth:\n  token:\n    realm: {server.realm}\n    service: {SERVICE}\n"
            f"    issuer: {ISSUER}\n    rootcertbundle: {server.cert}\n")
