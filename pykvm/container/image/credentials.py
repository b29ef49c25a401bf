"""Registry credentials where docker keeps them: config.json and credential helpers.

docker login writes to `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`):

    {"auths": {"HOST": {"auth": base64("USER:PASSWORD")}},     the plain store
     "credsStore": "NAME",                                    every host through a helper
     "credHelpers": {"HOST": "NAME"}}                         one host through a helper

A credential helper is a program `docker-credential-NAME` on PATH speaking a tiny protocol
(docker-credential-helpers, "The protocol"): the action is its argument, the input on
stdin, the answer as JSON on stdout, a failure as text on stdout with a non-zero status.

    get    stdin: HOST                                  stdout: {"ServerURL", "Username", "Secret"}
    store  stdin: {"ServerURL", "Username", "Secret"}
    erase  stdin: HOST

Docker Hub's key is the old v1 URL, https://index.docker.io/v1/, in every one of them.
Lookup order for a pull or push: --username/--password, then $PYKVM_REGISTRY_USER and
$PYKVM_REGISTRY_PASSWORD, then the helper for that host, then credsStore, then "auths".
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass

from pykvm.errors import ConfigError, ContainerError

__all__ = ["Credentials", "config_path", "server_key", "store_credentials", "erase_credentials"]

DOCKER_HUB_KEY = "https://index.docker.io/v1/"    # docker's key for Docker Hub everywhere
HELPER_PREFIX = "docker-credential-"
HELPER_TIMEOUT = 30                               # seconds; a helper may ask a keyring
HUB_NAMES = ("docker.io", "index.docker.io", "registry-1.docker.io")


@dataclass
class Credentials:
    """A user name and password for one registry (both None: anonymous)."""

    username: str | None = None
    password: str | None = None

    @classmethod
    def lookup(cls, host: str, username: str | None = None, password: str | None = None) -> "Credentials":
        """Explicit values, else the environment, else what docker login stored for `host`."""
        if username:
            return cls(username, password or "")
        if os.environ.get("PYKVM_REGISTRY_USER"):
            return cls(os.environ["PYKVM_REGISTRY_USER"], os.environ.get("PYKVM_REGISTRY_PASSWORD", ""))
        return stored_credentials(host)


def config_path() -> str:
    """docker's config file: $DOCKER_CONFIG/config.json, else ~/.docker/config.json."""
    folder = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return os.path.join(folder, "config.json")


def server_key(host: str) -> str:
    """The key docker files `host` under (Docker Hub's is its v1 URL)."""
    return DOCKER_HUB_KEY if host in HUB_NAMES else host


def read_config() -> dict:
    """config.json as a dict; a missing file is an empty config, a broken one an error."""
    path = config_path()
    try:
        with open(path) as f:
            config = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: not a JSON object")
    return config


def helper_for(config: dict, host: str) -> str | None:
    """The credential helper's name for `host`: credHelpers first, then credsStore."""
    helpers = config.get("credHelpers")
    if isinstance(helpers, dict) and (helpers.get(server_key(host)) or helpers.get(host)):
        return helpers.get(server_key(host)) or helpers.get(host)
    return config.get("credsStore") or None


def stored_credentials(host: str) -> Credentials:
    config = read_config()
    helper = helper_for(config, host)
    if helper:
        answer = call_helper(helper, "get", server_key(host), missing_ok=True)
        if answer:
            return Credentials(answer.get("Username") or None, answer.get("Secret") or "")
        return Credentials()
    auths = config.get("auths") or {}
    for key in (server_key(host), host, f"https://{host}", f"http://{host}", f"https://{host}/v1/"):
        entry = auths.get(key) if isinstance(auths, dict) else None
        if isinstance(entry, dict) and entry.get("auth"):
            return _decode_auth(entry["auth"], key)
    return Credentials()


def _decode_auth(value: str, key: str) -> Credentials:
    try:
        user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"{config_path()}: the auth entry of {key} is not base64 USER:PASSWORD") from None
    if not sep:
        raise ConfigError(f"{config_path()}: the auth entry of {key} has no ':' between user and password")
    return Credentials(user, password)


def call_helper(name: str, action: str, payload: str, missing_ok: bool = False) -> dict | None:
    """Run docker-credential-NAME ACTION with `payload` on stdin; its JSON answer (get)."""
    program = HELPER_PREFIX + name
    try:
        run = subprocess.run([program, action], input=payload, capture_output=True, text=True,
                             timeout=HELPER_TIMEOUT)
    except FileNotFoundError:
        raise ConfigError(f"credential helper {program} (from {config_path()}) is not on PATH") from None
    except subprocess.TimeoutExpired:
        raise ContainerError(f"credential helper {program} {action} did not answer in "
                             f"{HELPER_TIMEOUT} s") from None
    said = (run.stdout.strip() or run.stderr.strip()).splitlines()
    if run.returncode != 0:
        if missing_ok and said and "credentials not found" in said[0].lower():
            return None
        raise ContainerError(f"credential helper {program} {action} failed: "
                             f"{said[0] if said else f'status {run.returncode}'}")
    if action != "get":
        return None
    try:
        answer = json.loads(run.stdout)
    except ValueError:
        raise ContainerError(f"credential helper {program} get answered something that is not JSON") from None
    return answer if isinstance(answer, dict) else None


def store_credentials(host: str, creds: Credentials) -> str:
    """Keep `creds` where docker would (helper or config.json); says where, for the user."""
    config = read_config()
    helper = helper_for(config, host)
    key = server_key(host)
    if helper:
        call_helper(helper, "store", json.dumps({"ServerURL": key, "Username": creds.username,
                                                  "Secret": creds.password}))
        return f"credential helper {HELPER_PREFIX}{helper}"
    token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    config.setdefault("auths", {})[key] = {"auth": token}
    write_config(config)
    return config_path()


def erase_credentials(host: str) -> bool:
    """Forget what is stored for `host`; False when nothing was."""
    config = read_config()
    helper = helper_for(config, host)
    key = server_key(host)
    if helper:
        if call_helper(helper, "get", key, missing_ok=True) is None:
            return False
        call_helper(helper, "erase", key)
        return True
    auths = config.get("auths") or {}
    if key not in auths:
        return False
    del auths[key]
    write_config(config)
    return True


def write_config(config: dict) -> None:
    """Replace config.json atomically, readable by its owner only (it holds passwords)."""
    path = config_path()
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".config.json.")
        with os.fdopen(fd, "w") as f:
            json.dump(config, f, indent="\t")
            f.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror}") from None
