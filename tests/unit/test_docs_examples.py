"""Every runnable example in docs/ prints exactly what its chapter says it prints.

Two kinds, both marked with `<!-- example: NAME -->` before a block:

* Python: a ``` block, and its output in the block after `<!-- expected: NAME -->`;
  each runs alone (`python -c`).
* Shell transcripts: a `console` block (or an indented one) of `$ COMMAND` lines, each
  followed by what it prints (tests/docs_blocks.py: placeholders, heredocs).  The
  transcripts of one page run in order in one bash session, at the top of the checkout,
  the venv's `pykvm` on PATH, stderr merged into stdout, as a reader types them into one
  terminal; the session gets a fresh image store and state directory (PYKVM_STORE,
  PYKVM_STATE_ROOT) and TMPDIR.

Examples named `kvm-*` need /dev/kvm and carry the `kvm` marker; `root-*` need root.
Every other shell block in docs/ carries `<!-- not-run: REASON -->` (checked below).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from docs_blocks import code_blocks, output_pattern, transcript
from tiers import nested_under_tcg

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"<!-- example: ([\w-]+) -->")
SEPARATOR = "@@docs-transcript-command"


def fenced_block_after(text: str, marker: str) -> str:
    """The body of the first ``` block following an HTML comment marker."""
    match = re.search(re.escape(marker) + r"\s*```[a-z]*\n(.*?)```", text, re.S)
    assert match, f"no code block after {marker!r}"
    return match.group(1)


def tier_marks(names: list[str]) -> list:
    marks = [pytest.mark.kvm] if any(name.startswith("kvm-") for name in names) else []
    return marks + ([pytest.mark.root] if any(name.startswith("root-") for name in names) else [])


def pages():
    return [(page, page.read_text()) for page in sorted((ROOT / "docs").glob("*.md"))]


def examples():
    """The Python examples: an example marker with an expected block of the same name."""
    for page, text in pages():
        for name in MARKER.findall(text):
            if f"<!-- expected: {name} -->" in text:
                yield pytest.param(page.name, name, text, id=f"{page.stem}:{name}",
                                   marks=tier_marks([name]))


def transcripts(text: str) -> list:
    return [block for block in code_blocks(text) if block.is_shell and block.marker
            and block.marker[0] == "example"]


def sessions():
    """One bash session per page that has shell transcripts."""
    for page, text in pages():
        if blocks := transcripts(text):
            yield pytest.param(page.name, blocks, id=page.stem,
                               marks=tier_marks([block.marker[1] for block in blocks]))


@pytest.mark.parametrize("page, name, text", list(examples()))
def test_example_output_matches_the_docs(page, name, text):
    if name.startswith("kvm-gdb"):
        sys.path.insert(0, str(ROOT / "tests" / "kvm"))
        from hwdebug import gdb_breakpoint_problem

        if (problem := gdb_breakpoint_problem()) is not None:
            pytest.skip(problem)              # this KVM cannot stop a guest the way the stub asks
    if name.startswith("kvm-fuzz") and nested_under_tcg():
        pytest.skip("in the lane's L1, a fuzz guest faulting at ring 3 makes QEMU's TCG abort "
                    "the whole L1 ('invalid tss type' while it emulates the nested guest)")
    code = fenced_block_after(text, f"<!-- example: {name} -->")
    expected = fenced_block_after(text, f"<!-- expected: {name} -->")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, f"{page} {name}: {run.stderr}"
    assert run.stdout == expected, f"{page} {name}: printed\n{run.stdout}"


def test_examples_are_found():
    assert len(list(examples())) >= 3


@pytest.mark.parametrize("page, blocks", list(sessions()))
def test_shell_transcripts_print_what_the_docs_show(page, blocks, tmp_path):
    commands = [(block, command) for block in blocks for command in transcript(block)]
    # Between commands a separator line; `$?` still holds the previous command's status.
    script = "exec 2>&1 </dev/null\n" + "".join(
        f"status=$?; printf '\\n%s\\n' {SEPARATOR}; (exit $status)\n{command.text}\n"
        for _, command in commands)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "TMPDIR": str(tmp_path), "PYKVM_STORE": str(tmp_path / "store"),
           "PYKVM_STATE_ROOT": str(tmp_path / "state"),
           "PYTHONUNBUFFERED": "1"}     # stdout and stderr interleave as on a terminal
    run = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
    outputs = run.stdout.split(f"\n{SEPARATOR}\n")[1:]
    assert len(outputs) == len(commands), f"{page}: the session stopped early:\n{run.stdout}"
    for (block, command), output in zip(commands, outputs):
        output = output.removesuffix("\n") + "\n" if output.strip("\n") else ""
        assert output_pattern(command.expected).fullmatch(output), (
            f"{page}:{block.line}: `{command.text}` printed\n{output}\nthe docs show\n"
            + "\n".join(command.expected))


@pytest.mark.parametrize("page, text", [pytest.param(page.name, text, id=page.stem)
                                        for page, text in pages()])
def test_every_shell_block_is_run_or_says_why_not(page, text):
    unmarked = [f"{page}:{block.line}: {block.lines[0] if block.lines else ''}"
                for block in code_blocks(text) if block.is_shell and not block.marker]
    assert not unmarked, ("shell blocks without <!-- example: NAME --> or <!-- not-run: REASON -->:\n"
                          + "\n".join(unmarked))
