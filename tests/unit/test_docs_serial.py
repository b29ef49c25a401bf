"""The serial chapter's runnable example prints exactly what the chapter says it prints."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = "serial-registers"


def fenced_block_after(text: str, marker: str) -> str:
    """The body of the first ``` block following an HTML comment marker."""
    match = re.search(re.escape(marker) + r"\s*```[a-z]*\n(.*?)```", text, re.S)
    assert match, f"no code block after {marker!r}"
    return match.group(1)


def chapter_with_example() -> str:
    """The docs chapter holding the example (the serial text may be merged into chapter 3)."""
    for page in sorted((ROOT / "docs").glob("*.md")):
        text = page.read_text()
        if f"<!-- example: {EXAMPLE} -->" in text:
            return text
    raise AssertionError(f"no docs/*.md page contains the {EXAMPLE} example")


def test_serial_example_output_matches_the_docs():
    text = chapter_with_example()
    code = fenced_block_after(text, f"<!-- example: {EXAMPLE} -->")
    expected = fenced_block_after(text, f"<!-- expected: {EXAMPLE} -->")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout == expected
