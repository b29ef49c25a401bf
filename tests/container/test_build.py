"""Dockerfile -> image: the parser, .dockerignore, each instruction, the cache, determinism, errors."""
from __future__ import annotations

import gzip
import io
import os
import tarfile
import time
from pathlib import Path

import pytest
from image_fixtures import bundled_context, make_tar, run_pykvm, store  # noqa: F401  (fixture)

from pykvm.container.image.build import BuildOptions, build_image
from pykvm.container.image.dockerfile import BuildFileError, DockerIgnore, expand, parse_dockerfile, shell_words
from pykvm.container.image.store import ImageStore


def build(store: ImageStore, context, dockerfile: str | None = None, tag: str = "t:1", **kw):
    if dockerfile is not None:
        (context / "Dockerfile").write_text(dockerfile)
    log: list[str] = []
    image = build_image(store, BuildOptions(str(context), tag, log=log.append, **kw))
    return image, log


def layer_members(store: ImageStore, descriptor: dict) -> dict[str, tarfile.TarInfo]:
    data = gzip.decompress(store.blob_path(descriptor["digest"]).read_bytes())
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        return {m.name: m for m in t.getmembers()}


def layer_file(store: ImageStore, descriptor: dict, name: str) -> bytes:
    data = gzip.decompress(store.blob_path(descriptor["digest"]).read_bytes())
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        return t.extractfile(name).read()


# --- the parser -----------------------------------------------------------------------------

def test_parser_joins_continuations_and_skips_comments():
    df = parse_dockerfile("# syntax=docker/dockerfile:1\n"
                          "FROM scratch\n"
                          "\n"
                          "# a comment\n"
                          "ENV A=1 \\\n"
                          "  # comment inside\n"
                          "    B=2\n"
                          "COPY --chown=1:2 a b\n"
                          'CMD ["/bin/echo", "hi"]\n')
    assert df.directives == {"syntax": "docker/dockerfile:1"}
    assert [(i.keyword, i.line) for i in df.instructions] == [("FROM", 2), ("ENV", 5), ("COPY", 8), ("CMD", 9)]
    assert df.instructions[1].args == "A=1     B=2"      # BuildKit keeps the indentation
    assert df.instructions[2].flags == {"chown": "1:2"} and df.instructions[2].args == "a b"
    assert df.instructions[3].exec_form == ["/bin/echo", "hi"]


def test_escape_directive_switches_to_backtick():
    df = parse_dockerfile("# escape=`\nFROM scratch\nENV A=1 `\n  B=2\n")
    assert df.escape == "`" and df.instructions[1].args == "A=1   B=2"


def test_unknown_instruction_names_file_and_line():
    with pytest.raises(BuildFileError, match=r"^Dockerfile:3: unknown instruction: FORM$"):
        parse_dockerfile("FROM scratch\n\nFORM x\n")


def test_shell_words_quotes_and_variables():
    env = {"A": "x y", "E": ""}
    assert shell_words("""a "b c" 'd $A' $A "${A}" ${E:-def} ${A:+alt} \\$A""", env) == \
        ["a", "b c", "d $A", "x y", "x y", "def", "alt", "$A"]
    assert expand("${NOPE:-/usr}/bin:$A", env) == "/usr/bin:x y"


@pytest.mark.parametrize("patterns, path, ignored", [
    ("*.log", "a.log", True), ("*.log", "dir/a.log", False), ("**/*.log", "dir/sub/a.log", True),
    ("build", "build/x/y", True), ("*.md\n!README.md", "README.md", False), ("*.md\n!README.md", "x.md", True),
    ("/secret", "secret", True), ("a?c", "abc", True), ("[a-c]x", "bx", True), ("# comment", "# comment", False),
])
def test_dockerignore_patterns(patterns, path, ignored):
    assert DockerIgnore(patterns).ignored(path) is ignored


# --- instructions -----------------------------------------------------------------------------

def test_scratch_copy_and_config(store, tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.sh").write_text("echo hi\n")
    os.chmod(tmp_path / "app" / "main.sh", 0o755)
    (tmp_path / "app" / "data").mkdir()
    (tmp_path / "app" / "data" / "x").write_text("x")
    image, _ = build(store, tmp_path, """FROM scratch
ARG GREETING=hello
ENV MSG="$GREETING world" PATH=/bin
WORKDIR /srv
COPY app/ ./app/
COPY app/main.sh /usr/local/bin/
USER 1000:1000
LABEL maintainer="x" version=$GREETING
EXPOSE 8080 53/udp
ENTRYPOINT ["/bin/sh"]
CMD ["-c", "echo $MSG"]
""")
    cfg = image.config["config"]
    assert cfg["Env"] == ["PATH=/bin", "MSG=hello world"]
    assert cfg["WorkingDir"] == "/srv" and cfg["User"] == "1000:1000"
    assert cfg["Labels"] == {"maintainer": "x", "version": "hello"}
    assert cfg["ExposedPorts"] == {"8080/tcp": {}, "53/udp": {}}
    assert cfg["Entrypoint"] == ["/bin/sh"] and cfg["Cmd"] == ["-c", "echo $MSG"]
    assert len(image.layers) == 3 == len(image.diff_ids)
    assert sorted(layer_members(store, image.layers[0])) == ["srv"]       # WORKDIR makes its directory
    first = layer_members(store, image.layers[1])
    assert sorted(first) == ["srv", "srv/app", "srv/app/data", "srv/app/data/x", "srv/app/main.sh"]
    assert first["srv/app/main.sh"].mode == 0o755 and first["srv/app/main.sh"].uid == 0
    assert all(m.mtime == 0 for m in first.values())
    second = layer_members(store, image.layers[2])
    assert "usr/local/bin/main.sh" in second


def test_rebuild_gives_the_same_digests_and_uses_the_cache(store, tmp_path):
    (tmp_path / "f").write_text("one")
    df = "FROM scratch\nCOPY f /f\nCOPY f /g\nCMD [\"/f\"]\n"
    first, log1 = build(store, tmp_path, df)
    second, log2 = build(store, tmp_path, df)
    assert second.manifest_digest == first.manifest_digest
    assert sum("using cache" in line for line in log1) == 0
    assert sum("using cache" in line for line in log2) == 2, log2
    fresh, log3 = build(store, tmp_path, df, no_cache=True)
    assert fresh.manifest_digest == first.manifest_digest, "no-cache rebuild is byte-identical"
    assert sum("using cache" in line for line in log3) == 0
    os.utime(tmp_path / "f", (1, 1))
    _, log4 = build(store, tmp_path, df)
    assert sum("using cache" in line for line in log4) == 2, "mtimes are not content"
    (tmp_path / "f").write_text("two")
    changed, log5 = build(store, tmp_path, df)
    assert changed.manifest_digest != first.manifest_digest
    assert sum("using cache" in line for line in log5) == 0, "a changed source invalidates its step and all after"


def test_dockerignore_hides_files_from_copy(store, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "keep.py").write_text("k")
    (tmp_path / "src" / "debug.log").write_text("d")
    (tmp_path / "secret.key").write_text("s")
    (tmp_path / ".dockerignore").write_text("**/*.log\nsecret.key\n")
    image, _ = build(store, tmp_path, "FROM scratch\nCOPY . /ctx/\n")
    names = set(layer_members(store, image.layers[0]))
    assert "ctx/src/keep.py" in names
    assert "ctx/src/debug.log" not in names and "ctx/secret.key" not in names
    with pytest.raises(BuildFileError, match=r"^Dockerfile:2: COPY: no such file: secret.key$"):
        build(store, tmp_path, "FROM scratch\nCOPY secret.key /\n")


def test_copy_errors_name_file_and_line(store, tmp_path):
    with pytest.raises(BuildFileError, match=r"^Dockerfile:7: COPY: no such file: app.py$"):
        build(store, tmp_path, "FROM scratch\n" + "ENV A=1\n" * 5 + "COPY app.py /app/\n")
    with pytest.raises(BuildFileError, match="outside the build context"):
        build(store, tmp_path, "FROM scratch\nCOPY ../etc/passwd /x\n")
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    with pytest.raises(BuildFileError, match="must end in /"):
        build(store, tmp_path, "FROM scratch\nCOPY a b /dest\n")
    with pytest.raises(BuildFileError, match=r"^Dockerfile:1: FROM: no such image: nothere"):
        build(store, tmp_path, "FROM nothere\n")
    with pytest.raises(BuildFileError, match="first instruction must be FROM"):
        build(store, tmp_path, "ENV A=1\nFROM scratch\n")


def test_copy_wildcards_and_chmod(store, tmp_path):
    for name in ("a.txt", "b.txt", "c.bin"):
        (tmp_path / name).write_text(name)
    image, _ = build(store, tmp_path, "FROM scratch\nCOPY --chmod=600 *.txt /docs/\n")
    members = layer_members(store, image.layers[0])
    assert sorted(members) == ["docs", "docs/a.txt", "docs/b.txt"]
    assert members["docs/a.txt"].mode == 0o600


def test_add_unpacks_local_archives_safely(store, tmp_path):
    (tmp_path / "victim").mkdir()
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "app.tar.gz").write_bytes(make_tar([("file", "bin/tool", b"t"),
                                               ("file", "../../../victim/owned", b"x")], gz=True))
    image, _ = build(store, ctx, "FROM scratch\nADD app.tar.gz /opt/\n")
    members = layer_members(store, image.layers[0])
    assert "opt/bin/tool" in members and "opt/victim/owned" in members, sorted(members)
    assert os.listdir(tmp_path / "victim") == []
    with pytest.raises(BuildFileError, match="remote sources are not supported"):
        build(store, ctx, "FROM scratch\nADD https://example.com/x /x\n")


def test_arg_before_from_and_build_args(store, tmp_path):
    build(store, tmp_path, "FROM scratch\nLABEL base=yes\n", tag="base:v2")
    image, log = build(store, tmp_path, "ARG TAG=v1\nFROM base:$TAG\nARG WHO=nobody\nLABEL who=$WHO\n",
                       build_args={"TAG": "v2", "WHO": "me", "UNUSED": "1"})
    assert image.config["config"]["Labels"] == {"base": "yes", "who": "me"}
    assert any("UNUSED" in line and "warning" in line for line in log)


def test_entrypoint_drops_an_inherited_cmd(store, tmp_path):
    build(store, tmp_path, 'FROM scratch\nCMD ["/base"]\n', tag="base:1")
    image, _ = build(store, tmp_path, 'FROM base:1\nENTRYPOINT ["/ep"]\n')
    assert image.config["config"]["Entrypoint"] == ["/ep"] and "Cmd" not in image.config["config"]
    image, _ = build(store, tmp_path, 'FROM base:1\nCMD ["/own"]\nENTRYPOINT ["/ep"]\n')
    assert image.config["config"]["Cmd"] == ["/own"]


@pytest.mark.root
def test_copy_chown_by_name_from_the_image(store, tmp_path):
    base = tmp_path / "base"
    (base / "etc").mkdir(parents=True)
    (base / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\napp:x:1234:4321::/:/bin/sh\n")
    (base / "etc" / "group").write_text("root:x:0:\nstaff:x:50:\n")
    build(store, base, "FROM scratch\nCOPY etc /etc/\n", tag="users:1")
    (tmp_path / "f").write_text("f")
    (tmp_path / "Dockerfile").write_text("FROM users:1\nCOPY --chown=app f /a\nCOPY --chown=app:staff f /b\n"
                                         "COPY --chown=7:8 f /c\n")
    image, _ = build(store, tmp_path)
    owners = [(m.uid, m.gid) for layer in image.layers[1:] for n, m in layer_members(store, layer).items()
              if n in ("a", "b", "c")]
    assert owners == [(1234, 4321), (1234, 50), (7, 8)]
    with pytest.raises(BuildFileError, match="unknown user 'ghost'"):
        build(store, tmp_path, "FROM users:1\nCOPY --chown=ghost f /a\n")


def test_bundled_images_build(store, tmp_path):
    hello, _ = build(store, bundled_context(tmp_path, "hello"), tag="hello")
    assert hello.config["config"]["Cmd"] == ["/hello"]
    assert layer_file(store, hello.layers[0], "hello")[:4] == b"\x7fELF"
    busybox, _ = build(store, bundled_context(tmp_path, "busybox"), tag="busybox")
    members = layer_members(store, busybox.layers[0])
    assert members["bin/busybox"].mode & 0o111 and members["bin/sh"].linkname == "busybox"


# --- the CLI ------------------------------------------------------------------------------------

def test_cli_build_images_and_errors(store, tmp_path):
    (tmp_path / "f").write_text("f")
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY f /f\n")
    status, out, err = run_pykvm("container", "build", "-t", "cli:1", str(tmp_path))
    assert status == 0, err
    assert "Successfully built" in out and "cli:1" in out
    status, out, _ = run_pykvm("container", "images")
    assert out.splitlines()[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    row = out.splitlines()[1].split()
    # created at SOURCE_DATE_EPOCH (default 0), one 1-byte file: as docker shows them
    years = (time.time() // 86400 // 365)
    assert row[:2] == ["cli", "1"] and row[3:] == [str(int(years)), "years", "ago", "1B"], row
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY missing /m\n")
    status, out, err = run_pykvm("container", "build", "-t", "cli:2", str(tmp_path))
    assert status != 0
    assert err.strip() == "pykvm: error: Dockerfile:2: COPY: no such file: missing"
    status, _, err = run_pykvm("container", "build", "-t", "Bad Name", str(tmp_path))
    assert status == 2 and err.count("\n") == 1 and "invalid image reference" in err
    status, _, err = run_pykvm("container", "rmi", "nope:1")
    assert status == 1 and err.strip() == "pykvm: error: no such image: nope:1 (see `pykvm container images`)"


def test_cli_save_and_load_errors_are_one_line(store, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM scratch\nLABEL a=b\n")
    assert run_pykvm("container", "build", "-q", "-t", "s:1", str(tmp_path))[0] == 0
    status, _, err = run_pykvm("container", "save", "-o", str(tmp_path / "no/dir/x.tar"), "s:1")
    assert (status, err) == (1, f"pykvm: error: cannot write archive {tmp_path}/no/dir/x.tar: "
                                "No such file or directory\n")
    status, _, err = run_pykvm("container", "load", "-i", "/etc/passwd")
    assert (status, err) == (1, "pykvm: error: cannot read archive /etc/passwd: "
                                "not a tar file (plain, gzip, bzip2 or xz)\n")
    status, _, err = run_pykvm("container", "load", "-i", str(tmp_path / "missing.tar"))
    assert (status, err) == (1, f"pykvm: error: cannot read archive {tmp_path}/missing.tar: "
                                "No such file or directory\n")


def test_cli_save_load_and_tag(store, tmp_path):
    (tmp_path / "f").write_text("f")
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY f /f\n")
    assert run_pykvm("container", "build", "-q", "-t", "s:1", str(tmp_path))[0] == 0
    assert run_pykvm("container", "tag", "s:1", "s:2")[0] == 0
    archive = tmp_path / "img.tar"
    assert run_pykvm("container", "save", "-o", str(archive), "s:1", "s:2")[0] == 0
    status, out, _ = run_pykvm("container", "rmi", "s:1", "s:2")
    assert status == 0 and "Deleted:" in out
    status, out, err = run_pykvm("container", "load", "-i", str(archive))
    assert status == 0, err
    assert out.split("\n")[:2] == ["Loaded image: s:1", "Loaded image: s:2"]
    # a tampered archive: nothing is stored
    run_pykvm("container", "rmi", "s:1", "s:2")
    tampered = tmp_path / "bad.tar"
    with tarfile.open(archive) as src, tarfile.open(tampered, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name.startswith("blobs/") and data[:2] == b"\x1f\x8b":
                data = data[:-1] + bytes([data[-1] ^ 1])
            dst.addfile(m, io.BytesIO(data))
    status, _, err = run_pykvm("container", "load", "-i", str(tampered))
    assert status == 1 and "does not match its digest" in err
    assert os.listdir(ImageStore().blobs) == [] and run_pykvm("container", "images", "-q")[1] == ""


# --- RUN: a real container of the build state (the runtime) ------------------------------------

def busybox_and_a_context(store: ImageStore, tmp_path) -> Path:
    """The bundled busybox image, built into `store`, and an empty build context beside it."""
    build(store, bundled_context(tmp_path, "busybox"), tag="busybox")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    return ctx


def flat_root(store: ImageStore, image, dest):
    from pykvm.container.image.layer import apply_layer
    dest.mkdir()
    for descriptor in image.layers:
        with open(store.blob_path(descriptor["digest"]), "rb") as blob:
            apply_layer(blob, str(dest))
    return dest


@pytest.mark.root
def test_run_changes_become_a_layer_with_whiteouts(store, tmp_path):
    ctx = busybox_and_a_context(store, tmp_path)
    image, log = build(store, ctx, """FROM busybox
ARG WHO=world
ENV GREETING=hello
WORKDIR /work
RUN mkdir -p /data/sub && touch /data/a /data/sub/b
RUN echo "$GREETING $WHO from $(pwd)" > out.txt && rm /bin/vi && rm -r /data && mkdir /data
RUN ["/bin/sh", "-c", "id -u > /tmp/uid"]
USER nobody
RUN id -u > /tmp/uid-nobody
""", build_args={"WHO": "pykvm"})
    run_layer = layer_members(store, image.layers[3])     # busybox's, WORKDIR's, then the RUNs
    assert "bin/.wh.vi" in run_layer, sorted(run_layer)
    assert "work/out.txt" in run_layer
    assert "data/.wh..wh..opq" in run_layer or "data/.wh.a" in run_layer, sorted(run_layer)
    assert not any(n.startswith(("proc/", "sys/", "dev/")) for n in run_layer), "kernel mounts stay out"
    root = flat_root(store, image, tmp_path / "flat")
    assert (root / "work/out.txt").read_text() == "hello pykvm from /work\n"
    assert not (root / "bin/vi").exists() and (root / "bin/sh").exists()
    assert os.listdir(root / "data") == []
    assert (root / "tmp/uid").read_text() == "0\n"
    assert (root / "tmp/uid-nobody").read_text() == "65534\n"
    again, log2 = build(store, ctx, build_args={"WHO": "pykvm"})
    assert again.manifest_digest == image.manifest_digest
    assert sum("using cache" in line for line in log2) == 5, log2   # WORKDIR's directory and the 4 RUNs


@pytest.mark.root
def test_run_steps_have_docker_s_default_capabilities(store, tmp_path):
    """RUN chown/mknod work as under `docker build` (its 14 default capabilities), not runc's 3."""
    from pykvm.container.runtime.capabilities import DOCKER_CAPS, cap_numbers
    ctx = busybox_and_a_context(store, tmp_path)
    image, _ = build(store, ctx, """FROM busybox
RUN touch /f && chown 65534:65534 /f && mknod /dev-null-copy c 1 3
RUN grep ^CapEff /proc/self/status > /caps
""")
    members = layer_members(store, image.layers[1])
    assert (members["f"].uid, members["f"].gid) == (65534, 65534)
    assert members["dev-null-copy"].ischr()
    root = flat_root(store, image, tmp_path / "flat")
    assert int((root / "caps").read_text().split()[1], 16) == sum(1 << c for c in cap_numbers(DOCKER_CAPS))


@pytest.mark.root
def test_failing_run_names_file_line_and_status(store, tmp_path):
    ctx = busybox_and_a_context(store, tmp_path)
    with pytest.raises(BuildFileError, match=r"^Dockerfile:3: RUN: `/bin/sh -c exit 3` exited with status 3$"):
        build(store, ctx, "FROM busybox\n\nRUN exit 3\n")


def test_copy_sources_stay_inside_the_context(store, tmp_path):
    """A symlink in the context is resolved inside the context, never on the host."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("host secret")
    ctx = tmp_path / "ctx"
    (ctx / "etc").mkdir(parents=True)
    (ctx / "etc" / "secret").write_text("context copy")
    os.symlink(str(tmp_path / "outside"), ctx / "abs")
    os.symlink("../outside", ctx / "rel")
    for source in ("rel/secret", "abs/secret"):
        with pytest.raises(BuildFileError, match=f"no such file: {source}"):
            build(store, ctx, f"FROM scratch\nCOPY {source} /a\n")
    os.symlink("/etc", ctx / "hostetc")
    image, _ = build(store, ctx, "FROM scratch\nCOPY hostetc/secret /a\n")
    assert layer_file(store, image.layers[0], "a") == b"context copy"


def test_every_step_error_carries_file_and_line(store, tmp_path):
    (tmp_path / "f").write_text("f")
    with pytest.raises(BuildFileError, match=r"^Dockerfile:2: ENV: unterminated double quote"):
        build(store, tmp_path, 'FROM scratch\nENV A="open\n')
    with pytest.raises(BuildFileError, match=r"^Dockerfile:3: COPY: /f/g: a component of this path is not a directory$"):
        build(store, tmp_path, "FROM scratch\nCOPY f /f\nCOPY f /f/g/\n")
    with pytest.raises(BuildFileError, match=r"^Dockerfile:1: FROM: cannot reach registry 127.0.0.1:1"):
        build(store, tmp_path, "FROM 127.0.0.1:1/x:1\n")


def test_multi_stage_copy_from(store, tmp_path):
    (tmp_path / "src.txt").write_text("built in stage one\n")
    (tmp_path / "Dockerfile").write_text("""FROM scratch AS builder
COPY src.txt /out/result.txt
COPY src.txt /out/extra.txt

FROM scratch
COPY --from=builder /out/result.txt /final.txt
COPY --from=0 /out/ /all/
""")
    image, _ = build(store, tmp_path)
    assert len(image.layers) == 2, "only the last stage's layers are in the image"
    assert layer_file(store, image.layers[0], "final.txt") == b"built in stage one\n"
    assert sorted(layer_members(store, image.layers[1])) == ["all", "all/extra.txt", "all/result.txt"]
    again, log = build(store, tmp_path)
    assert again.manifest_digest == image.manifest_digest
    assert sum("using cache" in line for line in log) == 4
    (tmp_path / "src.txt").write_text("changed\n")
    changed, _ = build(store, tmp_path)
    assert layer_file(store, changed.layers[0], "final.txt") == b"changed\n", "a changed stage is not a cache hit"
    with pytest.raises(BuildFileError, match="Dockerfile:2: COPY: no such image: nostage"):
        build(store, tmp_path, "FROM scratch\nCOPY --from=nostage /x /x\n")
