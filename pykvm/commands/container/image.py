"""The image-side `pykvm container` commands: build, images, inspect, rmi, tag, save, load, push, pull.

Each is a thin click wrapper over pykvm.container.{build,image,registry};
errors are PyKvmError subclasses, which pykvm.cli.main prints as one line.
"""
from __future__ import annotations

import json
import lzma
import os
import tarfile
import zlib

import click

__all__ = ["build_cmd", "images_cmd", "inspect_cmd", "rmi_cmd", "tag_cmd", "save_cmd", "load_cmd",
           "push_cmd", "pull_cmd", "save_archive", "load_archive"]


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
    """List images in the store."""
    rows = []
    for image in sorted(_store().images(), key=lambda i: i.name):
        repo, _, tag = image.name.rpartition(":") if "@" not in image.name else (image.name, "", "<none>")
        rows.append((repo, tag, image.id[7:19], image.manifest_digest, _size(image.size)))
    if quiet:
        for row in rows:
            _echo(row[2])
        return
    head = ("REPOSITORY", "TAG", "IMAGE ID") + (("DIGEST",) if digests else ()) + ("SIZE",)
    table = [head] + [r[:3] + ((r[3],) if digests else ()) + (r[4],) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for r in table:
        _echo("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n}"


@click.command("inspect")
@click.argument("names", nargs=-1, required=True)
def inspect_cmd(names):
    """Show images' manifest and config as JSON."""
    store = _store()
    out = []
    for name in names:
        image = store.get(name)
        out.append({
            "Id": image.id,
            "RepoTags": [ref for ref, entry in store.tags() if store.load(ref, entry).id == image.id],
            "Digest": image.manifest_digest,
            "Size": image.size,
            "Architecture": image.config.get("architecture"),
            "Os": image.config.get("os"),
            "Created": image.config.get("created"),
            "Config": image.config.get("config", {}),
            "RootFS": image.config.get("rootfs", {}),
            "History": image.config.get("history", []),
            "Manifest": image.manifest,
        })
    _echo(json.dumps(out, indent=2))


@click.command("rmi")
@click.option("-f", "--force", is_flag=True, help="Untag even an image a container was made from.")
@click.argument("names", nargs=-1, required=True)
def rmi_cmd(force, names):
    """Remove image tags, and the blobs no tag (and no container) needs any more."""
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
    save_archive(_store(), names, output)


@click.command("load")
@click.option("-i", "--input", "input_", required=True, type=click.Path(dir_okay=False), help="The archive to read.")
def load_cmd(input_):
    """Read images from an OCI archive made by `save` (or skopeo copy ... oci-archive:FILE)."""
    for name in load_archive(_store(), input_):
        _echo(f"Loaded image: {name}")


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
@click.argument("reference")
def pull_cmd(insecure, username, password, reference):
    """Pull an image from a registry: [REGISTRY/]REPO[:TAG|@DIGEST]."""
    from pykvm.container.image.registry import Credentials, parse_remote, pull
    host = parse_remote(reference).host
    image = pull(_store(), reference, insecure=insecure,
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


# --- OCI archives (save/load) --------------------------------------------------------

def save_archive(store, names, output: str) -> None:
    """A tar of an image layout holding just these images (oci-layout, index.json, their blobs)."""
    from pykvm.container.image.store import MEDIA_OCI_INDEX, REF_NAME, canonical_json
    entries, blobs = [], set()
    for name in names:
        ref, entry = store.find(name)
        entries.append({**entry, "annotations": {REF_NAME: ref}})
        blobs.add(entry["digest"])
        image = store.load(ref, entry)
        blobs |= {image.manifest_digest, image.config_digest} | {d["digest"] for d in image.layers}
    index = {"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": entries}
    tmp = output + ".tmp"
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, "oci-layout", (store.layout / "oci-layout").read_bytes())
            _add_bytes(tar, "index.json", canonical_json(index))
            for digest in sorted(blobs):
                tar.add(store.blob_path(digest), f"blobs/sha256/{digest[7:]}")
        os.replace(tmp, output)
    except OSError as e:
        from pykvm.errors import ContainerError
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise ContainerError(f"cannot write archive {output}: {e.strerror}") from None


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(info, io.BytesIO(data))


# A damaged archive: truncated, or its compression broken (tarfile, gzip, bzip2 and xz raise these).
ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)


def load_archive(store, path: str) -> list[str]:
    """Import every tagged image of an OCI archive; each blob verified before it is stored."""
    from pykvm.container.image.store import REF_NAME, file_digest
    from pykvm.errors import ContainerError
    try:
        tar = tarfile.open(path, "r:*")
    except OSError as e:
        raise ContainerError(f"cannot read archive {path}: {e.strerror}") from None
    except tarfile.TarError:                    # its message lists every compression it tried
        raise ContainerError(f"cannot read archive {path}: not a tar file "
                             f"(plain, gzip, bzip2 or xz)") from None
    with tar:
        try:
            index = _archive_index(tar, path)
            members = tar.getmembers()
        except ARCHIVE_ERRORS as e:
            raise ContainerError(f"cannot read archive {path}: {e}") from None
        staged = []
        try:
            for member in members:
                if member.isfile() and member.name.lstrip("./").startswith("blobs/sha256/"):
                    staged.append(_stage_member(store, tar, member))
            for tmp, digest in staged:                  # verify everything before storing anything
                if file_digest(tmp)[0] != digest:
                    raise ContainerError(f"{path}: blob {digest} does not match its digest: nothing loaded")
            for tmp, digest in staged:
                store.adopt(tmp, digest)
        except ARCHIVE_ERRORS as e:
            raise ContainerError(f"cannot read archive {path}: {e}") from None
        finally:
            for tmp, _ in staged:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    names = []
    for entry in index.get("manifests", []):
        name = entry.get("annotations", {}).get(REF_NAME)
        if not name:
            continue
        if not store.has_blob(entry["digest"]):
            raise ContainerError(f"{path}: image {name} refers to a blob the archive lacks")
        store.tag(name, entry)
        names.append(name)
    if not names:
        raise ContainerError(f"{path}: no tagged images (org.opencontainers.image.ref.name) in the archive")
    return names


def _archive_index(tar: tarfile.TarFile, path: str) -> dict:
    """The archive's index.json (image-layout.md), checked: one descriptor per image."""
    from pykvm.container.image.schema import check_index, parse_document
    from pykvm.errors import ContainerError
    try:
        data = tar.extractfile("index.json").read()
    except (KeyError, AttributeError):           # no such member, or not a regular file
        raise ContainerError(f"{path} is not an OCI archive (no index.json)") from None
    return check_index(parse_document(data, f"{path}: index.json"), f"{path}: index.json")


def _stage_member(store, tar: tarfile.TarFile, member: tarfile.TarInfo) -> tuple[str, str]:
    """Copy one blobs/sha256/HEX member into the store's tmp/; returns (path, digest it claims)."""
    import shutil

    from pykvm.container.image.store import check_digest
    digest = check_digest("sha256:" + member.name.rsplit("/", 1)[1])
    fd, tmp = store.temp_file(".blob")
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(tar.extractfile(member), out, 1 << 20)
    return tmp, digest
