"""Every runnable example in docs/ prints exactly what its chapter says it prints.

A chapter marks an example with `<!-- example: NAME -->` before a ``` block and its output
with `<!-- expected: NAME -->` before another.  Examples named `kvm-*` need /dev/kvm and
carry the `kvm` marker; `root-*` need root.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"<!-- example: ([\w-]+) -->")


def fenced_block_after(text: str, marker: str) -> str:
    """The body of the first ``` block following an HTML comment marker."""
    match = re.search(re.escape(marker) + r"\s*```[a-z]*\n(.*?)```", text, re.S)
    assert match, f"no code block after {marker!r}"
    return match.group(1)


def examples():
    for page in sorted((ROOT / "docs").glob("*.md")):
        text = page.read_text()
        for name in MARKER.findall(text):
            marks = [pytest.mark.kvm] if name.startswith("kvm-") else []
            marks += [pytest.mark.root] if name.startswith("root-") else []
            yield pytest.param(page.name, name, text, id=f"{page.stem}:{name}", marks=marks)


@pytest.mark.parametrize("page, name, text", list(examples()))
def test_example_output_matches_the_docs(page, name, text):
    code = fenced_block_after(text, f"<!-- example: {name} -->")
    expected = fenced_block_after(text, f"<!-- expected: {name} -->")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, f"{page} {name}: {run.stderr}"
    assert run.stdout == expected, f"{page} {name}: printed\n{run.stdout}"


def test_examples_are_found():
    assert len(list(examples())) >= 3
