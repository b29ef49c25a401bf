"""valid_id: runc's rule for a container id, ^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$, without re."""
from __future__ import annotations

import random
import re

import pytest

from pykvm.container.runtime.state import ContainerState, StateStore, valid_id
from pykvm.errors import ContainerError

# runc's pattern, as Go reads it: "$" is the end of the text.  Python's "$" also matches
# before a final newline, so the comparison is with fullmatch.
RUNC_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@pytest.mark.parametrize("text", ["a", "0", "a" * 128, "a" * 129, "", ".cache", "-x", "_x", "x y", "x/y",
                                  "é", "x\n", "ab.c-d_e", "A9", "x\0", "١"])
def test_same_answer_as_runcs_regex(text):
    assert valid_id(text) == bool(RUNC_ID.fullmatch(text))


def test_a_final_newline_is_refused():
    """`re.match(r"^...$")` would let "x\n" through, and a path built from it."""
    assert not valid_id("x\n")


def test_random_ids_agree_with_the_regex():
    rng = random.Random(3)
    alphabet = "aZ09_.-/ \n\té$"
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        assert valid_id(text) == bool(RUNC_ID.fullmatch(text)), repr(text)


@pytest.mark.parametrize("content, says", [
    ("{not json", "its state.json is damaged"),
    ("[1, 2]", "its state.json is damaged .not an object"),
    ('{"id": "c1", "name": "c1", "colour": "red"}', "keys this pykvm does not know"),
])
def test_a_damaged_state_json_is_a_container_error(tmp_path, content, says):
    store = StateStore(tmp_path)
    store.create(ContainerState(id="c1", name="c1"))
    (tmp_path / "c1" / "state.json").write_text(content)
    with pytest.raises(ContainerError, match=says):
        store.load("c1")
    assert store.list() == []


def test_the_cache_directory_is_not_a_container(tmp_path):
    store = StateStore(tmp_path)
    store.create(ContainerState(id="c1", name="c1"))
    (tmp_path / ".cache" / "seccomp").mkdir(parents=True)
    assert [s.id for s in store.list()] == ["c1"]
    assert store.cache_dir("seccomp") == str(tmp_path / ".cache" / "seccomp")
