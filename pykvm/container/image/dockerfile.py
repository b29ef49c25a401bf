"""The Dockerfile language: parser, variable expansion and .dockerignore.

Dockerfile reference (docs.docker.com/reference/dockerfile):

    # syntax=...            parser directives: `# key=value` lines before anything else;
    # escape=`              `escape` picks the line-continuation/escape character (\\ or `)
    FROM base AS stage      one instruction per logical line; a line ending in the escape
    RUN a \\                character continues on the next (joined as is: no space added);
        && b                `#` lines and blank lines inside a continued instruction are skipped
    RUN <<EOF               a here-document: the lines up to EOF (RUN, COPY and ADD)
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

__all__ = ["Instruction", "Heredoc", "Dockerfile", "parse_exec_form", "parse_dockerfile", "shell_words", "expand", "DockerIgnore",
           "BuildFileError"]

DIRECTIVE_RE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9_-]*)\s*=\s*(.*?)\s*$")
FLAG_RE = re.compile(r"^--([a-z][a-z0-9-]*)(?:=(\S*))?$")
KNOWN_DIRECTIVES = ("syntax", "escape", "check")
HEREDOC_INSTRUCTIONS = ("RUN", "COPY", "ADD")
# <<EOF, <<-EOF, <<"EOF", <<'EOF' (Dockerfile reference, "Here-Documents")
HEREDOC_RE = re.compile(r"<<(?P<dash>-?)(?P<quote>[\"']?)(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P=quote)")
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
class Heredoc:
    """A here-document (`<<EOF` ... `EOF`) after RUN, COPY or ADD."""

    name: str                        # the terminator word, also COPY's file name
    content: str                     # the lines between, each ending in a newline
    expand: bool = True              # unquoted word: variables expand (COPY); "EOF" or 'EOF': not
    chomp: bool = False              # <<-EOF: leading tabs were stripped


@dataclass
class Instruction:
    """One logical line of a Dockerfile."""

    keyword: str                     # upper case: COPY
    args: str                        # the text after the keyword and its flags
    line: int                        # the line it starts on (1-based)
    flags: dict[str, str] = field(default_factory=dict)
    exec_form: list[str] | None = None   # the JSON array form, when the args are one
    heredocs: list[Heredoc] = field(default_factory=list)

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
    """Split a Dockerfile into instructions, as BuildKit's parser does.

    A line ending in the escape character (trailing blanks allowed) continues on the next;
    the pieces are joined as they are, with no space added and indentation kept, so
    `ENV P=/a:\\` + `/b` is P=/a:/b. Comment lines and blank lines inside a continued
    instruction are skipped. RUN, COPY and ADD may end with here-documents (`<<EOF`):
    the lines up to the terminator are their bodies (Instruction.heredocs).
    """
    lines = text.splitlines()
    directives, first = _directives(lines)
    escape = directives.get("escape", "\\")
    if escape not in ("\\", "`"):
        raise BuildFileError(filename, 1, f"invalid escape directive {escape!r} (want \\ or `)")
    continued = re.compile(re.escape(escape) + r"[ \t]*$")
    instructions: list[Instruction] = []
    number = first
    while number < len(lines):
        start, raw = number + 1, lines[number].lstrip()
        number += 1
        if not raw.strip() or raw.startswith("#"):
            continue
        logical = raw
        while continued.search(logical):
            logical = continued.sub("", logical)
            while number < len(lines) and _skipped_inside(lines[number]):
                number += 1
            if number == len(lines):
                break
            logical += lines[number]
            number += 1
        ins = _instruction(filename, start, logical.strip())
        if ins.keyword in HEREDOC_INSTRUCTIONS:
            ins.heredocs, number = _read_heredocs(filename, start, ins.args, lines, number)
        instructions.append(ins)
    if not instructions:
        raise BuildFileError(filename, 1, "the Dockerfile has no instructions")
    return Dockerfile(filename, instructions, directives, escape)


def _skipped_inside(line: str) -> bool:
    """Blank and comment lines inside a continued instruction are left out."""
    return not line.strip() or line.lstrip().startswith("#")


def _read_heredocs(filename: str, line: int, args: str, lines: list[str], number: int):
    """The bodies of the here-documents `args` names, read from lines[number:]."""
    heredocs = []
    for m in HEREDOC_RE.finditer(args):
        strip_tabs, quote, name = m.group("dash") == "-", m.group("quote"), m.group("name")
        body: list[str] = []
        while True:
            if number >= len(lines):
                raise BuildFileError(filename, line, f"here-document <<{name} has no closing line {name!r}")
            text = lines[number]
            number += 1
            if strip_tabs:
                text = text.lstrip("\t")
            if text == name:
                break
            body.append(text + "\n")
        heredocs.append(Heredoc(name, "".join(body), expand=not quote, chomp=strip_tabs))
    return heredocs, number


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
    return Instruction(keyword, rest, line, flags, parse_exec_form(rest))


def parse_exec_form(args: str) -> list[str] | None:
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
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            exclude = not line.startswith("!")
            pattern = posixpath.normpath(line.lstrip("!").strip()).lstrip("/")
            if pattern == ".":
                continue
            try:
                self.rules.append((exclude, re.compile(_pattern_regex(pattern))))
            except re.error as e:                 # `[]`, `[z-a]`, `[\]`: as Docker, a syntax error
                raise BuildFileError(".dockerignore", number, f"syntax error in pattern {line!r}: {e.msg}") from None

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
