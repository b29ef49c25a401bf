"""Dockerfiles as BuildKit reads and builds them (Dockerfile reference; BuildKit as the oracle).

Each case states BuildKit's documented behaviour: line continuations joined as they are,
here-documents, ONBUILD triggers, HEALTHCHECK in the config, EXPOSE ranges, multi-stage
builds that build only what the target needs, ARG scopes and the automatic platform ARGs,
WORKDIR making its directory, COPY --chown owning the directories it makes, COPY of a
symlink named as a source.
"""
from __future__ import annotations

import os

import pytest
from image_fixtures import run_pykvm, store  # noqa: F401  (fixture)
from test_build import build, busybox_and_a_context, flat_root, layer_file, layer_members

from pykvm.container.image.dockerfile import BuildFileError, parse_dockerfile

# --- the parser ------------------------------------------------------------------------------


def test_a_continuation_is_joined_as_it_is():
    df = parse_dockerfile("FROM scratch\nENV P=/a:\\\n/b\nRUN a \\\n    && b\n")
    assert df.instructions[1].args == "P=/a:/b"
    assert df.instructions[2].args == "a     && b"


def test_blank_and_comment_lines_do_not_end_a_continuation():
    df = parse_dockerfile("FROM scratch\nRUN a \\\n\n  # note\n  b\nCMD c\n")
    assert [(i.keyword, i.args) for i in df.instructions] == [("FROM", "scratch"), ("RUN", "a   b"),
                                                               ("CMD", "c")]


def test_trailing_blanks_after_the_escape_still_continue():
    df = parse_dockerfile("FROM scratch\nRUN a \\   \nb\n")
    assert df.instructions[1].args == "a b"


def test_heredocs_are_read_with_their_options():
    df = parse_dockerfile('FROM scratch\nRUN <<EOT\necho one\necho two\nEOT\n'
                          'COPY <<-"A" <<B /x/\n\tone $X\n\tA\ntwo\nB\nCMD ["x"]\n')
    run, copy = df.instructions[1], df.instructions[2]
    assert run.args == "<<EOT" and run.heredocs[0].content == "echo one\necho two\n"
    assert [(h.name, h.content, h.expand) for h in copy.heredocs] == [("A", "one $X\n", False),
                                                                      ("B", "two\n", True)]
    assert df.instructions[3].exec_form == ["x"]


def test_an_unterminated_heredoc_names_its_line():
    with pytest.raises(BuildFileError, match=r"Dockerfile:2: .*EOT"):
        parse_dockerfile("FROM scratch\nRUN <<EOT\necho\n")


# --- config-only instructions (no container needed) ----------------------------------------


def test_healthcheck_is_kept_in_the_config(store, tmp_path):
    image, _ = build(store, tmp_path, "FROM scratch\n"
                     "HEALTHCHECK --interval=5m --timeout=3s --retries=4 CMD curl -f http://localhost/\n")
    assert image.config["config"]["Healthcheck"] == {
        "Test": ["CMD-SHELL", "curl -f http://localhost/"], "Interval": 300 * 10**9,
        "Timeout": 3 * 10**9, "Retries": 4}
    image, _ = build(store, tmp_path, 'FROM scratch\nHEALTHCHECK CMD ["/check", "-q"]\n')
    assert image.config["config"]["Healthcheck"] == {"Test": ["CMD", "/check", "-q"]}
    image, _ = build(store, tmp_path, "FROM scratch\nHEALTHCHECK NONE\n")
    assert image.config["config"]["Healthcheck"] == {"Test": ["NONE"]}


def test_a_bad_healthcheck_duration_is_one_line(store, tmp_path):
    with pytest.raises(BuildFileError, match="Dockerfile:2: HEALTHCHECK: '5minutes' is not a duration"):
        build(store, tmp_path, "FROM scratch\nHEALTHCHECK --interval=5minutes CMD true\n")


def test_expose_a_range(store, tmp_path):
    image, _ = build(store, tmp_path, "FROM scratch\nEXPOSE 8000-8002/udp 80\n")
    assert image.config["config"]["ExposedPorts"] == {
        "8000/udp": {}, "8001/udp": {}, "8002/udp": {}, "80/tcp": {}}
    with pytest.raises(BuildFileError, match="invalid port '9-1'"):
        build(store, tmp_path, "FROM scratch\nEXPOSE 9-1\n")


def test_onbuild_triggers_run_in_the_child_and_are_not_inherited(store, tmp_path):
    (tmp_path / "note").write_text("from the child's context\n")
    build(store, tmp_path, "FROM scratch\nONBUILD COPY note /note\nONBUILD LABEL child=yes\n", tag="parent:1")
    child, log = build(store, tmp_path, "FROM parent:1\nCMD [\"/x\"]\n", tag="child:1")
    assert any("ONBUILD COPY note /note" in line for line in log), log
    assert "note" in layer_members(store, child.layers[-1])
    assert child.config["config"]["Labels"] == {"child": "yes"}
    assert "OnBuild" not in child.config["config"]


def test_onbuild_refuses_what_the_reference_forbids(store, tmp_path):
    with pytest.raises(BuildFileError, match="ONBUILD FROM is not allowed"):
        build(store, tmp_path, "FROM scratch\nONBUILD FROM other\n")


def test_only_the_stages_the_target_needs_are_built(store, tmp_path):
    (tmp_path / "f").write_text("f\n")
    df = ("FROM scratch AS broken\nCOPY no-such-file /x\n"
          "FROM scratch AS base\nCOPY f /base-f\n"
          "FROM scratch AS final\nCOPY --from=base /base-f /f\nLABEL stage=final\n"
          "FROM scratch AS other\nLABEL stage=other\n")
    image, log = build(store, tmp_path, df, target="final")
    assert image.config["config"]["Labels"] == {"stage": "final"}
    assert not any("no-such-file" in line for line in log), log
    with pytest.raises(BuildFileError, match="no such file: no-such-file"):
        build(store, tmp_path, df, target="broken")
    image, _ = build(store, tmp_path, df)                  # no --target: the last stage
    assert image.config["config"]["Labels"] == {"stage": "other"}


def test_a_stage_named_by_index_in_copy_from_is_built(store, tmp_path):
    (tmp_path / "f").write_text("f\n")
    image, _ = build(store, tmp_path, "FROM scratch\nCOPY f /f\nFROM scratch\nCOPY --from=0 /f /g\n")
    assert "g" in layer_members(store, image.layers[0])


def test_build_target_on_the_command_line(store, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM scratch AS a\nLABEL s=a\nFROM scratch AS b\nLABEL s=b\n")
    env = {"PYKVM_STORE": str(store.root)}
    status, out, err = run_pykvm("container", "build", "--target", "a", "-t", "tgt:1", str(tmp_path), env=env)
    assert status == 0, err
    assert store.get("tgt:1").config["config"]["Labels"] == {"s": "a"}
    status, out, err = run_pykvm("container", "build", "--target", "nope", str(tmp_path), env=env)
    assert status != 0 and err.count("\n") == 1 and "nope" in err, err


def test_a_global_arg_needs_redeclaring_in_a_stage(store, tmp_path):
    image, _ = build(store, tmp_path, "ARG V=1\nFROM scratch\nLABEL before=[$V]\nARG V\nLABEL after=[$V]\n")
    assert image.config["config"]["Labels"] == {"before": "[]", "after": "[1]"}


def test_automatic_platform_args(store, tmp_path):
    image, _ = build(store, tmp_path, "FROM scratch\nLABEL a=[$TARGETARCH]\nARG TARGETARCH\n"
                     "ARG TARGETPLATFORM\nARG BUILDOS\nLABEL b=$TARGETARCH c=$TARGETPLATFORM d=$BUILDOS\n")
    labels = image.config["config"]["Labels"]
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    assert labels == {"a": "[]", "b": arch, "c": f"linux/{arch}", "d": "linux"}


# --- layer steps -----------------------------------------------------------------------------


@pytest.mark.root
def test_workdir_makes_its_directory_owned_by_user(store, tmp_path):
    ctx = busybox_and_a_context(store, tmp_path)
    image, _ = build(store, ctx, "FROM busybox\nUSER nobody\nWORKDIR /srv/app\nUSER root\nWORKDIR /\n")
    members = layer_members(store, image.layers[-1])
    assert members["srv/app"].isdir() and members["srv/app"].uid == 65534, members
    assert len(image.layers) == 2                 # busybox's, then /srv/app; `/` exists already


@pytest.mark.root
def test_copy_chown_owns_the_directories_it_makes(store, tmp_path):
    (tmp_path / "f").write_text("f\n")
    image, _ = build(store, tmp_path, "FROM scratch\nCOPY --chown=1000:1001 f /deep/dir/f\n")
    members = layer_members(store, image.layers[0])
    assert [(members[n].uid, members[n].gid) for n in ("deep", "deep/dir", "deep/dir/f")] == [(1000, 1001)] * 3


def test_copy_follows_a_symlink_named_as_source_and_keeps_its_name(store, tmp_path):
    """BuildKit's copy (fsutil) follows a symlink named as a COPY source and names the copy
    after the source as written (moby/buildkit#1260); symlinks inside a copied directory
    stay symlinks; a named symlink is still resolved inside the context."""
    ctx = tmp_path / "ctx"
    (ctx / "dir").mkdir(parents=True)
    (ctx / "real.txt").write_text("real\n")
    os.symlink("real.txt", ctx / "link")
    os.symlink("../real.txt", ctx / "dir" / "inner")
    os.symlink("dir", ctx / "dirlink")
    image, _ = build(store, ctx, "FROM scratch\nCOPY link /d/\nCOPY link /named\nCOPY dirlink /e/\n")
    d, named, e = (layer_members(store, layer) for layer in image.layers)
    assert d["d/link"].isreg() and "d/real.txt" not in d, sorted(d)
    assert layer_file(store, image.layers[0], "d/link") == b"real\n"
    assert named["named"].isreg(), named["named"].type
    assert e["e/inner"].issym() and e["e/inner"].linkname == "../real.txt", sorted(e)
    (tmp_path / "outside.txt").write_text("host file\n")
    os.symlink("../outside.txt", ctx / "up")
    os.symlink(str(tmp_path / "outside.txt"), ctx / "abs")
    for source in ("up", "abs"):
        with pytest.raises(BuildFileError, match=f"no such file: {source}$"):
            build(store, ctx, f"FROM scratch\nCOPY {source} /d/\n")


@pytest.mark.root
def test_run_heredocs(store, tmp_path):
    ctx = busybox_and_a_context(store, tmp_path)
    image, _ = build(store, ctx, """FROM busybox
RUN <<EOT
echo one > /one
echo two > /two
EOT
RUN <<EOT
#!/bin/sh
echo "run as $0" > /shebang
EOT
RUN cat <<EOF > /fed
fed through the shell
EOF
""")
    root = flat_root(store, image, tmp_path / "flat")
    assert (root / "one").read_text() == "one\n" and (root / "two").read_text() == "two\n"
    assert (root / "shebang").read_text() == "run as /dev/pipes/EOT\n"
    assert (root / "fed").read_text() == "fed through the shell\n"


@pytest.mark.root
def test_copy_heredocs_expand_unless_quoted(store, tmp_path):
    image, _ = build(store, tmp_path, """FROM scratch
ARG WHO=world
COPY <<EOF /greeting
hello $WHO
EOF
COPY <<"EOF" /literal
hello $WHO
EOF
COPY <<A <<B /two/
a
A
b
B
""")
    root = flat_root(store, image, tmp_path / "flat")
    assert (root / "greeting").read_text() == "hello world\n"
    assert (root / "literal").read_text() == "hello $WHO\n"
    assert (root / "two" / "A").read_text() == "a\n" and (root / "two" / "B").read_text() == "b\n"
    assert oct(os.stat(root / "greeting").st_mode & 0o777) == "0o644"
