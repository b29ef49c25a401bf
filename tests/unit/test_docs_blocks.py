"""The docs' block reader (tests/docs_blocks.py): what counts as a shell block, its marker,
a transcript's commands and the placeholders of expected output."""
from __future__ import annotations

from docs_blocks import code_blocks, output_pattern, shell_blocks, transcript

PAGE = """Text.

<!-- example: root-demo -->
```console
$ echo one; echo two
one
two
$ cat > f <<'EOF'
a
$ not a prompt here
EOF
$ true
```

    $ indented --command
    output

<!-- not-run: needs a registry -->

    $ push it

```python
print("not shell")
```

1. In a list:
   ```sh
   make it
   ```
"""


def test_shell_blocks_fenced_indented_and_in_lists_with_their_markers():
    blocks = shell_blocks(PAGE)
    assert [(b.line, b.language, b.marker) for b in blocks] == [
        (4, "console", ("example", "root-demo")), (15, "", None),
        (20, "", ("not-run", "needs a registry")), (27, "sh", None)]
    assert blocks[3].lines == ["make it"]
    assert len(code_blocks(PAGE)) == 5


def test_a_transcript_keeps_heredocs_with_their_command():
    commands = transcript(shell_blocks(PAGE)[0])
    assert [c.text for c in commands] == [
        "echo one; echo two", "cat > f <<'EOF'\na\n$ not a prompt here\nEOF", "true"]
    assert [c.expected for c in commands] == [["one", "two"], [], []]


def test_placeholders_match_what_varies_and_nothing_else():
    pattern = output_pattern(["built <hex> in <n> steps", "...", "last: <any>"])
    assert pattern.fullmatch("built 4e7b610796ed in 4 steps\nx\ny\nlast: whatever (it is)\n")
    assert pattern.fullmatch("built 4e7b in 4 steps\nlast: \n")
    assert not pattern.fullmatch("built 4E7B in 4 steps\nlast: x\n")
    assert not pattern.fullmatch("built 4e7b in four steps\nlast: x\n")
    assert not output_pattern(["a.b"]).fullmatch("aXb\n")
    assert output_pattern([]).fullmatch("")
