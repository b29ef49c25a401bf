"""The code blocks of docs/: which are shell commands, and how each is marked.

A shell block is a fenced block in `console`, `sh`, `bash` or `shell`, or any fenced or
indented block whose first line is a prompt (`$ `).  Each one must be preceded (blank lines
apart) by one of

    <!-- example: NAME -->        a transcript the harness runs (test_docs_examples.py)
    <!-- not-run: REASON -->      a command this machine cannot run as shown, and why

In a transcript, a line `$ COMMAND` is typed, the lines up to the next prompt are what it
prints (a heredoc's lines, up to its terminator, belong to the command).  Expected output
may hold placeholders for what differs between runs or hosts:

    <hex>   hex digits (a digest, an id)      <n>   decimal digits
    <any>   the rest of the line              ...   (a line of its own) any lines
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Block", "Command", "code_blocks", "shell_blocks", "transcript", "output_pattern"]

SHELL_LANGUAGES = {"console", "sh", "bash", "shell"}      # fenced blocks that are shell
PROMPT = "$ "                                             # a transcript's typed line
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")                 # opens or closes a fenced block
MARKER = re.compile(r"^\s*<!-- (example|not-run|expected): (.+?) -->\s*$")
HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?")            # cat > f <<'EOF' ... EOF
PLACEHOLDERS = {"<hex>": "[0-9a-f]+", "<n>": "[0-9]+", "<any>": "[^\n]*"}


@dataclass
class Block:
    """A code block: where it starts (1-based line), its language, its lines, its marker."""
    line: int
    language: str
    lines: list[str]
    marker: tuple[str, str] | None = None       # ("example", NAME) or ("not-run", REASON)

    @property
    def is_shell(self) -> bool:
        """Shell to run or mark; a Python example's expected output is never shell."""
        if self.marker and self.marker[0] == "expected":
            return False
        return self.language in SHELL_LANGUAGES or (bool(self.lines) and
                                                    self.lines[0].startswith(PROMPT))


@dataclass
class Command:
    """One `$ ` line of a transcript (with its heredoc) and the output shown under it."""
    text: str
    expected: list[str] = field(default_factory=list)


def code_blocks(text: str) -> list[Block]:
    """Fenced blocks (at any indentation) and indented blocks that start with a prompt."""
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence:
            indent, body = len(fence.group(1)), []
            i += 1
            while i < len(lines) and not FENCE.match(lines[i]):
                body.append(lines[i][indent:])
                i += 1
            blocks.append(Block(i - len(body), fence.group(2), body, _marker(lines, i - len(body) - 1)))
        elif lines[i].startswith("    " + PROMPT) and (i == 0 or not lines[i - 1].strip()):
            start, body = i, []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                body.append(lines[i][4:])
                i += 1
            while body and not body[-1].strip():
                body.pop()
            blocks.append(Block(start + 1, "", body, _marker(lines, start)))
            continue
        i += 1
    return blocks


def _marker(lines: list[str], start: int) -> tuple[str, str] | None:
    """The marker comment above line index `start` (blank lines between allowed)."""
    i = start - 1
    while i >= 0 and not lines[i].strip():
        i -= 1
    match = MARKER.match(lines[i]) if i >= 0 else None
    return (match.group(1), match.group(2)) if match else None


def shell_blocks(text: str) -> list[Block]:
    return [block for block in code_blocks(text) if block.is_shell]


def transcript(block: Block) -> list[Command]:
    """The commands of a transcript block, each with the output shown under it."""
    commands: list[Command] = []
    lines = iter(block.lines)
    for line in lines:
        if line.startswith(PROMPT):
            command = Command(line[len(PROMPT):])
            if heredoc := HEREDOC.search(command.text):
                for body in lines:
                    command.text += "\n" + body
                    if body == heredoc.group(1):
                        break
            commands.append(command)
        elif commands:
            commands[-1].expected.append(line)
        else:
            raise ValueError(f"line {block.line}: a transcript starts with a prompt, not {line!r}")
    for command in commands:
        while command.expected and not command.expected[-1].strip():
            command.expected.pop()
    return commands


def output_pattern(expected: list[str]) -> re.Pattern:
    """A regex for the whole output a command should print, placeholders expanded."""
    parts = []
    for line in expected:
        if line == "...":
            parts.append("(?:[^\n]*\n)*?")
            continue
        pattern = re.escape(line)
        for placeholder, regex in PLACEHOLDERS.items():
            pattern = pattern.replace(re.escape(placeholder), regex)
        parts.append(pattern + "\n")
    return re.compile("".join(parts))
