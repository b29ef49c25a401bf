"""jsonload.loads against json.loads: the same values and the same refusals, for what
state.json holds and for text that is not JSON."""
from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import pytest

from pykvm.container.runtime.jsonload import loads

STATE_LIKE = {"id": "c1", "pid": 4242, "created": 1764700000.123456, "cgroup": {"version": "v1", "dirs": []},
              "command": ["sh", "-c", "echo \"hi\"\n\t\u00e9\u4e2d\U0001f600"], "auto_remove": False,
              "annotations": {}, "image": None, "big": 2**70, "neg": -1.5e-300}


@pytest.mark.parametrize("indent", [None, 1, 4])
def test_same_values_as_json(indent):
    text = json.dumps(STATE_LIKE, indent=indent)
    assert loads(text) == json.loads(text) == STATE_LIKE
    assert loads(json.dumps(STATE_LIKE, ensure_ascii=False)) == STATE_LIKE


@pytest.mark.parametrize("text", ["", "  ", "{", "[1,2", "{} x", "{\"a\":1,}", "\"a\x01\"", "123abc",
                                  "{'a': 1}", "tru", "[1] [2]", "\"\\ud800\\x\"", "01"])
def test_refuses_what_json_refuses(text):
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        loads(text)


def test_random_texts_agree_with_json():
    """Mutated JSON: whatever json.loads makes of it, loads makes the same, or both refuse."""
    rng = random.Random(7)
    base = json.dumps(STATE_LIKE)
    for _ in range(2000):
        chars = list(base)
        for _ in range(rng.randint(1, 4)):
            chars[rng.randrange(len(chars))] = rng.choice(' {}[],:"\\0123456789.eE+-aenrtul')
        text = "".join(chars)
        try:
            expected = ("ok", json.loads(text))
        except ValueError:
            expected = ("error",)
        try:
            got = ("ok", loads(text))
        except ValueError:
            got = ("error",)
        assert got == expected, text


def test_constants_as_json_reads_them():
    assert math.isnan(loads("NaN")) and loads("[Infinity, -Infinity]") == [math.inf, -math.inf]


def test_imports_neither_json_nor_re():
    code = ("import sys\nbefore = set(sys.modules)\nfrom pykvm.container.runtime.jsonload import loads\n"
            "loads('{\"a\": [1]}')\nprint(sorted((set(sys.modules) - before) & {'json', 're', 'enum'}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


def test_refusals_in_a_process_that_never_imported_json():
    """The C scanner raises its errors through json.decoder, which it does not import
    itself: the refusals must hold where only jsonload was imported."""
    texts = ["", "{", "{} x", "[1,2", "\"a\x01\"", "{'a': 1}"]
    code = ("import sys\nfrom pykvm.container.runtime.jsonload import loads\n"
            f"for text in {texts!r}:\n"
            "    try:\n        loads(text)\n        print('accepted', repr(text))\n"
            "    except ValueError:\n        print('refused')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.split("\n")[:-1] == ["refused"] * len(texts), r.stdout + r.stderr
