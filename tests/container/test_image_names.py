"""Names as docker shows them: `<none>` for an untagged build, rmi of an ID with several tags,
`images` CREATED and SIZE, `inspect` of several names with one missing."""
from __future__ import annotations

import json
import os

from image_fixtures import run_pykvm, store  # noqa: F401  (fixture)

from pykvm.container.image.store import ImageStore


def context(tmp_path, dockerfile: str, files: dict[str, bytes]):
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    for name, data in files.items():
        (ctx / name).write_bytes(data)
    (ctx / "Dockerfile").write_text(dockerfile)
    return ctx


def build(ctx, *args) -> str:
    status, out, err = run_pykvm("container", "build", "-q", *args, str(ctx))
    assert status == 0, err
    return out.strip()


def image_rows() -> list[list[str]]:
    status, out, err = run_pykvm("container", "images")
    assert status == 0, err
    return [line.split() for line in out.splitlines()[1:]]


def test_rmi_of_an_id_with_two_tags_needs_force(store, tmp_path):
    image_id = build(context(tmp_path, "FROM scratch\nCOPY f /f\n", {"f": b"x"}), "-t", "a:1")
    assert run_pykvm("container", "tag", "a:1", "b:1")[0] == 0
    status, out, err = run_pykvm("container", "rmi", image_id[7:19])
    assert (status, out) == (1, "")
    assert err == (f"pykvm: error: conflict: unable to delete {image_id[7:19]} (must be forced) "
                   "- image is referenced in multiple repositories\n")
    assert sorted(r[0] for r in image_rows()) == ["a", "b"], "nothing was untagged"
    status, out, err = run_pykvm("container", "rmi", "-f", image_id[7:19])
    assert status == 0, err
    assert out.splitlines()[:2] == ["Untagged: a:1", "Untagged: b:1"] and "Deleted: " in out
    assert image_rows() == [] and list(store.blobs.iterdir()) == []


def test_rmi_of_a_tag_untags_only_that_tag(store, tmp_path):
    build(context(tmp_path, "FROM scratch\nCOPY f /f\n", {"f": b"x"}), "-t", "a:1")
    run_pykvm("container", "tag", "a:1", "b:1")
    status, out, _ = run_pykvm("container", "rmi", "a:1")
    assert (status, out) == (0, "Untagged: a:1\n")
    assert [r[0] for r in image_rows()] == ["b"]


def test_an_untagged_build_is_none(store, tmp_path):
    image_id = build(context(tmp_path, "FROM scratch\nCOPY f /f\n", {"f": b"x"}))
    assert [r[:3] for r in image_rows()] == [["<none>", "<none>", image_id[7:19]]]
    status, out, _ = run_pykvm("container", "inspect", image_id[7:19])
    assert status == 0 and json.loads(out)[0]["RepoTags"] == []
    # read by other OCI tools: the untagged image is in index.json, with no ref.name
    index = json.loads((store.layout / "index.json").read_text())
    assert [m.get("annotations") for m in index["manifests"]] == [None]
    assert run_pykvm("container", "tag", image_id[7:19], "named:1")[0] == 0
    assert [r[:2] for r in image_rows()] == [["named", "1"]], "a tag makes it no longer <none>"
    other = build(context(tmp_path, "FROM scratch\nCOPY f /f\n", {"f": b"z"}))
    assert ImageStore(store.root).untag(other[7:19]) == "<none>:<none>"
    assert [r[:2] for r in image_rows()] == [["named", "1"]], "untag of an ID touches that image only"
    run_pykvm("container", "rmi", "named:1")
    build(context(tmp_path, "FROM scratch\nCOPY f /f\n", {"f": b"y"}))
    status, out, _ = run_pykvm("container", "rmi", image_rows()[0][2])
    assert status == 0 and out.startswith("Deleted: ") and image_rows() == []
    assert list(store.blobs.iterdir()) == []


def test_images_shows_created_and_unpacked_size(store, tmp_path):
    ctx = context(tmp_path, "FROM scratch\nCOPY a /a\nCOPY b /b\n", {"a": b"x" * 12, "b": os.urandom(3000)})
    status, out, err = run_pykvm("container", "build", "-q", "-t", "s:1", str(ctx),
                                 env={"SOURCE_DATE_EPOCH": "1700000000"})      # 2023-11-14
    assert status == 0, err
    (row,) = image_rows()
    image = ImageStore(store.root).get("s:1")
    compressed = sum(d["size"] for d in image.layers)
    assert compressed != 3012, "the compressed size is not what docker shows"
    assert row[-1] == "3.01kB", row                      # 12 + 3000 bytes of files, unpacked
    assert row[-3:-1] in (["years", "ago"], ["months", "ago"]) and int(row[-4]) >= 2, row
    status, out, _ = run_pykvm("container", "inspect", "s:1")
    assert json.loads(out)[0]["Size"] == 3012


def test_created_column_follows_docker_units():
    from pykvm.commands.container.image import _created_ago, _size
    now = 1_000_000_000
    for seconds, text in [(0, "Less than a second ago"), (1, "1 second ago"), (59, "59 seconds ago"),
                          (60, "About a minute ago"), (45 * 60, "45 minutes ago"), (3600, "About an hour ago"),
                          (5 * 3600, "5 hours ago"), (3 * 86400, "3 days ago"), (20 * 86400, "2 weeks ago"),
                          (90 * 86400, "3 months ago"), (800 * 86400, "2 years ago")]:
        import datetime
        created = datetime.datetime.fromtimestamp(now - seconds, datetime.timezone.utc).isoformat()
        assert _created_ago(created, now) == text, seconds
    assert [_size(n) for n in (0, 999, 1000, 4_260_000, 1_234_567_890)] == ["0B", "999B", "1kB", "4.26MB", "1.23GB"]


def test_inspect_prints_what_exists_and_fails_for_the_rest(store, tmp_path):
    image_id = build(context(tmp_path, 'FROM scratch\nCOPY f /f\nCMD ["/f"]\n', {"f": b"x"}), "-t", "a:1")
    status, out, err = run_pykvm("container", "inspect", "a:1", "missing:1")
    assert status == 1 and err == "pykvm: error: no such image: missing:1\n"
    (found,) = json.loads(out)
    assert {"Id", "RepoTags", "RepoDigests", "Created", "Config", "RootFS", "Architecture", "Os",
            "Size"} <= set(found)
    assert found["Id"] == image_id and found["RepoTags"] == ["a:1"] and found["RepoDigests"] == []
    assert found["Config"]["Cmd"] == ["/f"] and found["RootFS"]["type"] == "layers"
    assert (found["Architecture"], found["Os"], found["Size"]) == ("amd64", "linux", 1)
