"""The image-side `pykvm container` commands: build, images, inspect, rmi, tag, save, load, push, pull.

Each is a thin click wrapper over pykvm.container.{build,image,registry};
errors are PyKvmError subclasses, which pykvm.cli.main prints as one line.
"""
from __future__ import annotations

import json
import lzma
import os

import click

__all__ = ["build_cmd", "images_cmd", "inspect_cmd", "rmi_cmd", "tag_cmd", "save_cmd", "load_cmd",
           "push_cmd", "pull_cmd", "login_cmd", "logout_cmd"]


def _store():
    from pykvm.container.image.store import ImageStore
    return ImageStore()


def _echo(text: str) -> None:
    click.echo(text)


def _echo_err(text: str) -> None:
    click.echo(text, err=True)


def _build_arg(values: tuple[str, ...]) -> dict[str, str]:
    from pykvm.errors import ConfigError
    args = {}
    for v in values:
        key, eq, value = v.partition("=")
        if not key:
            raise ConfigError(f"--build-arg {v!r}: want KEY=VALUE")
        args[key] = value if eq else os.environ.get(key, "")
    return args


@click.command("build")
@click.option("-t", "--tag", help="Name the image NAME[:TAG].")
@click.option("-f", "--file", "dockerfile", type=click.Path(dir_okay=False), help="The Dockerfile (default CONTEXT/Dockerfile).")
@click.option("--build-arg", multiple=True, metavar="KEY=VALUE", help="Set an ARG.")
@click.option("--no-cache", is_flag=True, help="Ignore the build cache.")
@click.option("--target", help="Build up to this stage (FROM ... AS NAME) and stop.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the image ID.")
@click.argument("context", type=click.Path(file_okay=False))
def build_cmd(tag, dockerfile, build_arg, no_cache, target, quiet, context):
    """Build an image from a Dockerfile."""
    from pykvm.container.image.build import BuildOptions, build_image
    options = BuildOptions(context, tag, dockerfile, _build_arg(build_arg), no_cache,
                           log=None if quiet else _echo, target=target)
    image = build_image(_store(), options)
    if quiet:
        _echo(image.id)
    else:
        _echo(f"Successfully built {image.id[7:19]}" + (f" and tagged {image.name}" if tag else ""))


@click.command("images")
@click.option("-q", "--quiet", is_flag=True, help="Only image IDs.")
@click.option("--digests", is_flag=True, help="Show manifest digests.")
def images_cmd(quiet, digests):
    """List images in the store: CREATED and SIZE (unpacked) as docker shows them."""
    store = _store()
    rows = []
    for image in sorted(store.images(), key=lambda i: i.name):
        repo, _, tag = image.name.rpartition(":") if "@" not in image.name else (image.name, "", "<none>")
        rows.append((repo, tag, image.id[7:19], image.manifest_digest, _created_ago(image.config.get("created")),
                     _size(store.unpacked_size(image))))
    if quiet:
        for row in rows:
            _echo(row[2])
        return
    head = ("REPOSITORY", "TAG", "IMAGE ID") + (("DIGEST",) if digests else ()) + ("CREATED", "SIZE")
    table = [head] + [r[:3] + ((r[3],) if digests else ()) + r[4:] for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for r in table:
        _echo("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _size(n: float) -> str:
    """docker's sizes (go-units HumanSize): decimal units, three significant digits, "4.26MB"."""
    units = ("B", "kB", "MB", "GB", "TB", "PB")
    i = 0
    while n >= 1000 and i < len(units) - 1:
        n /= 1000
        i += 1
    return f"{n:.3g}{units[i]}"


def _created_ago(created: str | None, now: float | None = None) -> str:
    """docker's CREATED column (go-units HumanDuration + " ago"): "3 minutes ago", "2 weeks ago"."""
    import datetime
    import time
    if not created:
        return "N/A"
    try:
        when = datetime.datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return "N/A"
    seconds = int((now if now is not None else time.time()) - when)
    minutes, hours = seconds // 60, round(seconds / 3600)
    if seconds < 1:
        text = "Less than a second"
    elif seconds < 60:
        text = "1 second" if seconds == 1 else f"{seconds} seconds"
    elif minutes < 60:
        text = "About a minute" if minutes == 1 else f"{minutes} minutes"
    elif hours == 1:
        text = "About an hour"
    elif hours < 48:
        text = f"{hours} hours"
    elif hours < 24 * 7 * 2:
        text = f"{hours // 24} days"
    elif hours < 24 * 30 * 2:
        text = f"{hours // 24 // 7} weeks"
    elif hours < 24 * 365 * 2:
        text = f"{hours // 24 // 30} months"
    else:
        text = f"{seconds // 3600 // 24 // 365} years"
    return text + " ago"


@click.command("inspect")
@click.argument("names", nargs=-1, required=True)
def inspect_cmd(names):
    """Show images as JSON, with the fields docker's inspect has (Id, RepoTags, RepoDigests,
    Created, Config, RootFS, Architecture, Os, Size); a missing name fails after the rest."""
    from pykvm.errors import ContainerError
    store = _store()
    out, missing = [], []
    for name in names:
        try:
            image = store.get(name)
        except ContainerError:
            missing.append(name)
            continue
        same = [(ref, store.load(ref, entry)) for ref, entry in store.tags()]
        same = [(ref, other) for ref, other in same if other.id == image.id]
        out.append({
            "Id": image.id,
            "RepoTags": [ref for ref, _ in same],
            "RepoDigests": sorted({other.repo_digest for _, other in same if other.repo_digest}
                                  | ({image.repo_digest} if image.repo_digest else set())),
            "Created": image.config.get("created"),
            "Architecture": image.config.get("architecture"),
            "Os": image.config.get("os"),
            "Size": store.unpacked_size(image),
            "Config": image.config.get("config", {}),
            "RootFS": image.config.get("rootfs", {}),
            "History": image.config.get("history", []),
            "Digest": image.manifest_digest,
            "Manifest": image.manifest,
        })
    _echo(json.dumps(out, indent=2))
    if missing:
        raise ContainerError(f"no such image: {', '.join(missing)}")


@click.command("rmi")
@click.option("-f", "--force", is_flag=True, help="Remove an image with several tags by ID, or one a container was made from.")
@click.argument("names", nargs=-1, required=True)
def rmi_cmd(force, names):
    """Remove images: a tag untags it; an ID removes the image (several tags need -f).
    Blobs no tag (and no container) needs any more are deleted."""
    store = _store()
    for ref in store.remove(list(names), force):
        _echo(f"Untagged: {ref}")
    for digest in store.gc():
        _echo(f"Deleted: {digest}")


@click.command("tag")
@click.argument("source")
@click.argument("target")
def tag_cmd(source, target):
    """Give image SOURCE the name TARGET."""
    store = _store()
    _, entry = store.find(source)
    store.tag(target, entry)


@click.command("save")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The archive to write.")
@click.argument("names", nargs=-1, required=True)
def save_cmd(output, names):
    """Write images to an OCI archive (an image layout in a tar; skopeo's oci-archive:)."""
    from pykvm.container.image.archive import save_archive
    save_archive(_store(), names, output)


@click.command("load")
@click.option("-i", "--input", "input_", type=click.Path(dir_okay=False),
              help="The archive to read (default: standard input, as `docker load < FILE`).")
def load_cmd(input_):
    """Read images from an archive: an OCI archive (`save`, skopeo's oci-archive:, a tar of an
    image layout) or a docker archive (`docker save`, skopeo's docker-archive:)."""
    import sys

    from pykvm.container.image.archive import load_archive, load_stream
    from pykvm.errors import ConfigError
    store = _store()
    if input_ is not None:
        names = load_archive(store, input_)
    elif sys.stdin.isatty():
        raise ConfigError("load: give -i ARCHIVE, or send the archive on standard input")
    else:
        names = load_stream(store, sys.stdin.buffer)
    for name in names:
        _echo(f"Loaded image ID: {name}" if name.startswith("sha256:") else f"Loaded image: {name}")


@click.command("push")
@click.option("--insecure", is_flag=True, help="Plain HTTP even for a registry that is not on localhost.")
@click.option("-u", "--username", help="Registry user name (or $PYKVM_REGISTRY_USER).")
@click.option("-p", "--password", help="Registry password (or $PYKVM_REGISTRY_PASSWORD).")
@click.argument("name")
@click.argument("destination", required=False)
def push_cmd(insecure, username, password, name, destination):
    """Push image NAME to a registry (to DESTINATION = REGISTRY/REPO[:TAG] if given)."""
    from pykvm.container.image.registry import Credentials, parse_remote, push
    store = _store()
    host = parse_remote(destination or store.get(name).name, require_host=True).host
    push(store, name, destination, insecure=insecure,
         credentials=Credentials.lookup(host, username, password), log=_echo_err)


@click.command("pull")
@click.option("--insecure", is_flag=True, help="Plain HTTP even for a registry that is not on localhost.")
@click.option("-u", "--username", help="Registry user name (or $PYKVM_REGISTRY_USER).")
@click.option("-p", "--password", help="Registry password (or $PYKVM_REGISTRY_PASSWORD).")
@click.option("--platform", metavar="OS/ARCH[/VARIANT]", help="From a multi-platform image, this platform's "
              "(default: this machine's).")
@click.argument("reference")
def pull_cmd(insecure, username, password, platform, reference):
    """Pull an image from a registry: [REGISTRY/]REPO[:TAG|@DIGEST]."""
    from pykvm.container.image.registry import Credentials, parse_remote, pull
    host = parse_remote(reference).host
    image = pull(_store(), reference, insecure=insecure, platform=platform,
                 credentials=Credentials.lookup(host, username, password), log=_echo_err)
    _echo(image.name)


@click.command("login")
@click.option("-u", "--username", help="User name (asked for on a terminal if not given).")
@click.option("-p", "--password", help="Password (prefer --password-stdin: a command line is visible in ps).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--insecure", is_flag=True, help="Plain HTTP even for a registry that is not on localhost.")
@click.argument("server", required=False)
def login_cmd(username, password, password_stdin, insecure, server):
    """Log in to a registry (default Docker Hub) and keep the credentials where docker does."""
    import sys

    from pykvm.container.image.credentials import Credentials, store_credentials
    from pykvm.container.image.registry import login, registry_host
    from pykvm.errors import ConfigError
    host = registry_host(server)
    if password is not None and password_stdin:
        raise ConfigError("--password and --password-stdin exclude each other")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    if username is None:
        if not sys.stdin.isatty():
            raise ConfigError("no user name: give -u USER (standard input is not a terminal)")
        username = click.prompt("Username")
    if password is None:
        if not sys.stdin.isatty():
            raise ConfigError("no password: give --password-stdin (standard input is not a terminal)")
        password = click.prompt("Password", hide_input=True)
    creds = Credentials(username, password)
    login(host, creds, insecure=insecure)
    where = store_credentials(host, creds)
    _echo_err(f"credentials for {host} kept in {where}")
    _echo("Login Succeeded")


@click.command("logout")
@click.argument("server", required=False)
def logout_cmd(server):
    """Forget the credentials kept for a registry (default Docker Hub)."""
    from pykvm.container.image.credentials import erase_credentials
    from pykvm.container.image.registry import registry_host
    host = registry_host(server)
    if erase_credentials(host):
        _echo(f"Removing login credentials for {host}")
    else:
        _echo(f"Not logged in to {host}")
