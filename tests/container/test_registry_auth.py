"""Registry auth as docker does it, against docker-registry with real token auth.

The registry (Debian's docker/distribution) verifies every token itself: the signature, the
expiry, and that the granted actions cover the request. The token server (token_server.py,
test code) grants `alice` pull and push everywhere and anyone pull on public/*.
`pykvm container login/logout` keep credentials where docker does: $DOCKER_CONFIG/config.json
or a docker-credential-* helper.
"""
from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time

import pytest
from image_fixtures import REGISTRY_BIN, run_pykvm, start_registry, stop_registry, store  # noqa: F401
from test_registry import small_image
from token_server import REGISTRY_LEEWAY, TokenServer, registry_auth_config

from pykvm.container.image.credentials import Credentials, config_path
from pykvm.container.image.registry import Registry, pull, push
from pykvm.errors import ContainerError

pytestmark = pytest.mark.skipif(not os.path.exists(REGISTRY_BIN),
                                reason="docker-registry is not installed (apt-get install docker-registry)")
ALICE = Credentials("alice", "s3cret")


@pytest.fixture
def token_registry(tmp_path):
    """(registry host, token server): docker-registry with token auth on 127.0.0.1."""
    server = TokenServer(tmp_path, users={"alice": "s3cret"})
    proc, registry = start_registry(tmp_path, auth=registry_auth_config(server))
    try:
        yield registry.host, server
    finally:
        stop_registry(proc)
        server.stop()


@pytest.fixture
def docker_config(tmp_path, monkeypatch):
    folder = tmp_path / "docker-config"
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    monkeypatch.delenv("PYKVM_REGISTRY_USER", raising=False)
    return folder


def test_push_asks_for_the_push_scope(store, tmp_path, token_registry):
    host, tokens = token_registry
    image = small_image(store, tmp_path)
    assert push(store, "demo:1", f"{host}/secure/app:1", credentials=ALICE) == image.manifest_digest
    asked = [s for r in tokens.requests for s in r["scopes"]]
    assert "repository:secure/app:pull,push" in asked, asked
    store.untag("demo:1")
    store.gc()
    assert pull(store, f"{host}/secure/app:1", credentials=ALICE).manifest_digest == image.manifest_digest


def test_a_token_that_expires_mid_pull_is_renewed(store, tmp_path, token_registry, monkeypatch):
    """The pull's token is good for the manifest and has expired by the blobs: the registry
    answers 401 for the blob, and the pull asks for a new token and goes on."""
    host, tokens = token_registry
    image = small_image(store, tmp_path)
    push(store, "demo:1", f"{host}/secure/app:1", credentials=ALICE)
    store.untag("demo:1")
    store.gc()
    # The registry takes a token until REGISTRY_LEEWAY seconds past its exp: one issued that
    # stale is good for about 8 seconds, which the manifest needs even on a busy machine; then
    # the pull waits it out.
    tokens.lifetime = 8 - REGISTRY_LEEWAY
    get_manifest = Registry.get_manifest

    def get_manifest_then_wait(self, *args):
        got = get_manifest(self, *args)
        tokens.lifetime = 300                        # the renewed token is good for the blobs
        time.sleep(max(0.0, tokens.requests[-1]["exp"] + REGISTRY_LEEWAY + 0.5 - time.time()))
        return got
    monkeypatch.setattr(Registry, "get_manifest", get_manifest_then_wait)
    first = len(tokens.requests)
    assert pull(store, f"{host}/secure/app:1", credentials=ALICE).manifest_digest == image.manifest_digest
    issued = tokens.requests[first:]
    assert [r["scopes"] for r in issued] == [["repository:secure/app:pull"]] * 2, issued
    assert issued[1]["exp"] > issued[0]["exp"] + REGISTRY_LEEWAY, issued


def test_anonymous_pull_of_a_public_repository(store, tmp_path, token_registry):
    host, _ = token_registry
    image = small_image(store, tmp_path)
    push(store, "demo:1", f"{host}/public/app:1", credentials=ALICE)
    store.untag("demo:1")
    store.gc()
    assert pull(store, f"{host}/public/app:1", credentials=Credentials()).manifest_digest == image.manifest_digest
    with pytest.raises(ContainerError, match="refused the token|login"):
        pull(store, f"{host}/secure/other:1", credentials=Credentials())


def test_anonymous_push_is_refused_in_one_line(store, tmp_path, token_registry):
    host, _ = token_registry
    small_image(store, tmp_path)
    status, out, err = run_pykvm("container", "push", "demo:1", f"{host}/public/app:1",
                                 env={"PYKVM_STORE": str(store.root), "DOCKER_CONFIG": str(tmp_path / "none")})
    assert status != 0 and err.startswith("pykvm: error:") and err.count("\n") == 1, err


def test_wrong_password_is_one_line_that_says_so(store, tmp_path, token_registry):
    host, _ = token_registry
    small_image(store, tmp_path)
    status, out, err = run_pykvm("container", "push", "-u", "alice", "-p", "wrong", "demo:1",
                                 f"{host}/secure/app:1", env={"PYKVM_STORE": str(store.root)})
    assert status != 0 and err.count("\n") == 1, err
    assert "refused user 'alice'" in err and "password" in err, err


def test_login_push_logout(store, tmp_path, token_registry, docker_config):
    host, _ = token_registry
    small_image(store, tmp_path)
    env = {"PYKVM_STORE": str(store.root), "DOCKER_CONFIG": str(docker_config)}
    status, out, err = run_pykvm("container", "login", "-u", "alice", "--password-stdin", host,
                                 env=env, input=b"s3cret\n")
    assert status == 0 and out == "Login Succeeded\n", err
    path = docker_config / "config.json"
    saved = json.loads(path.read_text())["auths"][host]["auth"]
    assert base64.b64decode(saved) == b"alice:s3cret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    status, out, err = run_pykvm("container", "push", "demo:1", f"{host}/secure/app:1", env=env)
    assert status == 0, err
    status, out, err = run_pykvm("container", "logout", host, env=env)
    assert status == 0 and out == f"Removing login credentials for {host}\n"
    assert host not in json.loads(path.read_text()).get("auths", {})
    status, out, err = run_pykvm("container", "push", "demo:1", f"{host}/secure/app:2", env=env)
    assert status != 0 and err.count("\n") == 1, err


def test_login_with_a_wrong_password_stores_nothing(tmp_path, token_registry, docker_config):
    host, _ = token_registry
    status, out, err = run_pykvm("container", "login", "-u", "alice", "--password-stdin", host,
                                 env={"DOCKER_CONFIG": str(docker_config)}, input=b"wrong\n")
    assert status != 0 and err.startswith("pykvm: error:") and err.count("\n") == 1, err
    assert not (docker_config / "config.json").exists()


HELPER = '''#!{python}
"""docker-credential-pykvmtest: the credential-helper protocol, kept in a JSON file."""
import json, os, sys
path = os.environ["PYKVMTEST_HELPER_FILE"]
try:
    data = json.load(open(path))
except FileNotFoundError:
    data = {{}}
action, given = sys.argv[1], sys.stdin.read()
if action == "store":
    item = json.loads(given)
    data[item["ServerURL"]] = [item["Username"], item["Secret"]]
elif action == "get":
    if given.strip() not in data:
        print("credentials not found in native keychain")
        sys.exit(1)
    user, secret = data[given.strip()]
    print(json.dumps({{"ServerURL": given.strip(), "Username": user, "Secret": secret}}))
elif action == "erase":
    data.pop(given.strip(), None)
json.dump(data, open(path, "w"))
'''


def install_helper(tmp_path, kept: dict) -> dict:
    """docker-credential-pykvmtest in tmp_path/bin, holding `kept` (host -> [user, secret]) in
    tmp_path/helper.json; returns the environment a pykvm command needs to find it."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-pykvmtest"
    helper.write_text(HELPER.format(python=sys.executable))
    helper.chmod(0o755)
    (tmp_path / "helper.json").write_text(json.dumps(kept))
    return {"PATH": f"{bindir}:{os.environ['PATH']}", "PYKVMTEST_HELPER_FILE": str(tmp_path / "helper.json")}


def test_credential_helper_protocol(store, tmp_path, token_registry, docker_config):
    """credsStore in config.json: login stores through the helper, push gets from it, logout erases."""
    host, _ = token_registry
    docker_config.mkdir()
    (docker_config / "config.json").write_text(json.dumps({"credsStore": "pykvmtest"}))
    kept = tmp_path / "helper.json"
    env = {"PYKVM_STORE": str(store.root), "DOCKER_CONFIG": str(docker_config), **install_helper(tmp_path, {})}
    small_image(store, tmp_path)
    status, out, err = run_pykvm("container", "login", "-u", "alice", "--password-stdin", host,
                                 env=env, input=b"s3cret\n")
    assert status == 0, err
    assert json.loads(kept.read_text()) == {host: ["alice", "s3cret"]}
    assert "auths" not in json.loads((docker_config / "config.json").read_text())
    status, out, err = run_pykvm("container", "push", "demo:1", f"{host}/secure/app:1", env=env)
    assert status == 0, err
    status, out, err = run_pykvm("container", "logout", host, env=env)
    assert status == 0 and json.loads(kept.read_text()) == {}


def test_cred_helpers_names_the_helper_of_one_host(store, tmp_path, token_registry, docker_config):
    """credHelpers in config.json: that host's credentials come from the helper it names, ahead
    of a (here wrong) password in auths; another host still reads auths."""
    host, _ = token_registry
    env = {"PYKVM_STORE": str(store.root), "DOCKER_CONFIG": str(docker_config),
           **install_helper(tmp_path, {host: ["alice", "s3cret"]})}
    wrong = base64.b64encode(b"alice:wrong").decode()
    docker_config.mkdir()
    (docker_config / "config.json").write_text(json.dumps({
        "credHelpers": {host: "pykvmtest"},
        "auths": {host: {"auth": wrong}, "other.example:5000": {"auth": wrong}}}))
    small_image(store, tmp_path)
    status, out, err = run_pykvm("container", "push", "demo:1", f"{host}/secure/app:1", env=env)
    assert status == 0, err
    assert Credentials.lookup("other.example:5000") == Credentials("alice", "wrong")


def test_a_missing_credential_helper_is_one_line(store, tmp_path, docker_config):
    docker_config.mkdir()
    (docker_config / "config.json").write_text(json.dumps({"credHelpers": {"127.0.0.1:1": "nosuch"}}))
    status, out, err = run_pykvm("container", "pull", "127.0.0.1:1/x:1",
                                 env={"PYKVM_STORE": str(store.root), "DOCKER_CONFIG": str(docker_config)})
    assert status != 0 and "docker-credential-nosuch" in err and err.count("\n") == 1, err


def test_docker_config_env_names_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "cfg"))
    assert config_path() == str(tmp_path / "cfg" / "config.json")
    monkeypatch.delenv("DOCKER_CONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert config_path() == str(tmp_path / ".docker" / "config.json")
