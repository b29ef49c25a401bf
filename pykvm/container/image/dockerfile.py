"""The Dockerfile language: parser, variable expansion and .dockerignore.

Dockerfile reference (docs.docker.com/reference/dockerfile):

    # syntax=...            parser directives: `# key=value` lines before anything else;
    # escape=`              `escape` picks the line-continuation/escape character (\\ or `)
    FROM base AS stage      one instruction per logical line; a line ending in the escape
    RUN a \\                character continues on the next; `#` lines are comments,
        && b                also inside a continued instruction
    COPY --chown=1:1 a b    flags come first, as --name=value
    CMD ["exec", "form"]    a JSON array is the exec form, anything else the shell form

Variables ($NAME, ${NAME}, ${NAME:-default}, ${NAME:+alternative}) are
expanded in FROM, COPY, ADD, ENV, ARG, LABEL, EXPOSE, USER, WORKDIR, VOLUME,
STOPSIGNAL ("Environment replacement"), not in RUN, CMD or ENTRYPOINT, where
the shell does it.  Single quotes stop expansion, as in sh.

.dockerignore: one Go filepath.Match pattern per line (plus `**` for any
number of directories), `!` re-includes, the last matching line wins, and a
pattern that matches a directory excludes everything below it.
"""
from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, field

from pykvm.errors import ContainerError

__all__ = ["Instruction", "Dockerfile", "parse_dockerfile", "shell_words", "expand", "DockerIgnore",
           "BuildFileError"]

DIRECTIVE_RE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9_-]*)\s*=\s*(.*?)\s*$")
FLAG_RE = re.compile(r"^--([a-z][a-z0-9-]*)(?:=(\S*))?$")
KNOWN_DIRECTIVES = ("syntax", "escape", "check")
INSTRUCTIONS = ("FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY",
                "ENTRYPOINT", "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL",
                "HEALTHCHECK", "SHELL")


class BuildFileError(ContainerError):
    """An error in a Dockerfile or at a build step: the message starts with `FILE:LINE:`."""

    exit_code = 1

    def __init__(self, filename: str, line: int, message: str):
        self.filename = filename
        self.line = line
        super().__init__(f"{filename}:{line}: {message}")


@dataclass
class Instruction:
    """One logical line of a Dockerfile."""

    keyword: str                     # upper case: COPY
    args: str                        # the text after the keyword and its flags
    line: int                        # the line it starts on (1-based)
    flags: dict[str, str] = field(default_factory=dict)
    exec_form: list[str] | None = None   # the JSON array form, when the args are one

    @property
    def text(self) -> str:
        """How the instruction reads (for history entries and cache keys)."""
        flags = "".join(f"--{k}={v} " for k, v in sorted(self.flags.items()))
        return f"{self.keyword} {flags}{self.args}".strip()


@dataclass
class Dockerfile:
    filename: str
    instructions: list[Instruction]
    directives: dict[str, str]
    escape: str

    def error(self, instruction: Instruction, message: str) -> BuildFileError:
        return BuildFileError(self.filename, instruction.line, f"{instruction.keyword}: {message}")


def parse_dockerfile(text: str, filename: str = "Dockerfile") -> Dockerfile:
    """Split a Dockerfile into instructions, joining continued lines and dropping comments."""
    lines = text.splitlines()
    directives, first = _directives(lines)
    escape = directives.get("escape", "\\")
    if escape not in ("\\", "`"):
        raise BuildFileError(filename, 1, f"invalid escape directive {escape!r} (want \\ or `)")
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(lines[first:], start=first + 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue                                   # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith(escape) and not stripped.endswith(escape * 2):
            pending.append(raw.rstrip()[:-1])
            continue
        pending.append(raw)
        instructions.append(_instruction(filename, start, " ".join(p.strip() for p in pending if p.strip())))
        pending = []
    if pending:
        instructions.append(_instruction(filename, start, " ".join(p.strip() for p in pending if p.strip())))
    if not instructions:
        raise BuildFileError(filename, 1, "the Dockerfile has no instructions")
    return Dockerfile(filename, instructions, directives, escape)


def _directives(lines: list[str]) -> tuple[dict[str, str], int]:
    """Parser directives: `# key=value` lines at the very top; returns them and the first other line."""
    directives: dict[str, str] = {}
    for i, line in enumerate(lines):
        m = DIRECTIVE_RE.match(line.strip())
        if not m or m.group(1).lower() not in KNOWN_DIRECTIVES or m.group(1).lower() in directives:
            return directives, i
        directives[m.group(1).lower()] = m.group(2)
    return directives, len(lines)


def _instruction(filename: str, line: int, text: str) -> Instruction:
    keyword, _, rest = text.partition(" ")
    keyword = keyword.upper()
    if keyword not in INSTRUCTIONS:
        raise BuildFileError(filename, line, f"unknown instruction: {keyword}")
    flags: dict[str, str] = {}
    rest = rest.strip()
    while rest.startswith("--"):
        token, _, remainder = rest.partition(" ")
        m = FLAG_RE.match(token)
        if not m:
            raise BuildFileError(filename, line, f"{keyword}: bad flag {token!r}")
        flags[m.group(1)] = m.group(2) if m.group(2) is not None else "true"
        rest = remainder.strip()
    return Instruction(keyword, rest, line, flags, _exec_form(rest))


def _exec_form(args: str) -> list[str] | None:
    """A JSON array of strings is the exec form; anything else (even broken JSON) is the shell form."""
    if not args.startswith("["):
        return None
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


# --- word splitting and variable expansion ("Environment replacement") -----------

def shell_words(text: str, env: dict[str, str], escape: str = "\\") -> list[str]:
    """Split like sh: quotes group, escape quotes one character, $VARS expand outside single quotes."""
    words: list[str] = []
    current: list[str] = []
    in_word = False
    i = 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            if in_word:
                words.append("".join(current))
                current, in_word = [], False
            i += 1
            continue
        in_word = True
        if c == escape and i + 1 < len(text):
            current.append(text[i + 1])
            i += 2
        elif c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise ContainerError(f"unterminated single quote in: {text}")
            current.append(text[i + 1:end])
            i = end + 1
        elif c == '"':
            i = _double_quoted(text, i + 1, env, escape, current)
        elif c == "$":
            i = _variable(text, i, env, current)
        else:
            current.append(c)
            i += 1
    if in_word:
        words.append("".join(current))
    return words


def _double_quoted(text: str, i: int, env: dict[str, str], escape: str, out: list[str]) -> int:
    while i < len(text):
        c = text[i]
        if c == '"':
            return i + 1
        if c == escape and i + 1 < len(text) and text[i + 1] in ('"', "$", escape):
            out.append(text[i + 1])
            i += 2
        elif c == "$":
            i = _variable(text, i, env, out)
        else:
            out.append(c)
            i += 1
    raise ContainerError(f"unterminated double quote in: {text}")


VAR_RE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:[-+])(?P<word>[^}]*))?\}"
                    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def _variable(text: str, i: int, env: dict[str, str], out: list[str]) -> int:
    m = VAR_RE.match(text, i)
    if not m:
        out.append("$")
        return i + 1
    name = m.group("braced") or m.group("plain")
    value = env.get(name, "")
    op = m.group("op")
    if op == ":-" and not value:
        value = expand(m.group("word"), env)
    elif op == ":+":
        value = expand(m.group("word"), env) if value else ""
    out.append(value)
    return m.end()


def expand(text: str, env: dict[str, str], escape: str = "\\") -> str:
    """Expand variables in one word, keeping spaces and quotes as they are."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == escape and i + 1 < len(text) and text[i + 1] == "$":
            out.append("$")
            i += 2
        elif text[i] == "$":
            i = _variable(text, i, env, out)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


# --- .dockerignore ------------------------------------------------------------------

class DockerIgnore:
    """The patterns of a .dockerignore file; `ignored(path)` for a '/'-separated context path."""

    def __init__(self, text: str = ""):
        self.rules: list[tuple[bool, re.Pattern]] = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            exclude = not line.startswith("!")
            pattern = posixpath.normpath(line.lstrip("!").strip()).lstrip("/")
            if pattern == ".":
                continue
            self.rules.append((exclude, re.compile(_pattern_regex(pattern))))

    def ignored(self, path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        result = False
        for exclude, regex in self.rules:
            if any(regex.fullmatch(p) for p in prefixes):
                result = exclude
        return result


def _pattern_regex(pattern: str) -> str:
    """Go filepath.Match syntax plus `**` (moby/patternmatcher) as a Python regex."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("^") else body) + "]")
            i = end + 1
        elif c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)
