"""Reading a command line without click, for the commands whose whole run is short.

Importing click costs ~25 ms here and 3.7 MiB that a VMM keeps for as long as its guest
runs: as much as the rest of `pykvm container run --rm ... true`, and more than all of
`runc run`.  So `pykvm` (pykvm/__main__.py) first offers `boot ...` and `container run ...`
to parse() below, with a table that mirrors the command's @click.option lines; the
command runs from there without click.  Anything parse() is not sure of (--help, an
unknown option, a missing or bad value, an option spelled the way only click knows) it
leaves to click, by returning None: click then says what is wrong in its words, so the
two paths never disagree about an error.  tests/unit/test_quickparse.py checks that each
table declares exactly what its click command does and that both parse a corpus and
thousands of random command lines alike.

A speed path kept beside the readable one: the click declarations (commands/boot.py,
commands/container/run.py) define the commands and their --help.
"""
from __future__ import annotations

import os
import sys

__all__ = ["FLAG", "TEXT", "INT", "POSITIVE_FLOAT", "OPTIONAL_VALUE", "choice", "path", "defaults", "parse",
           "run"]

# An option's kind of value.  FLAG takes none; TEXT a string; INT an integer (click.INT);
# POSITIVE_FLOAT a float > 0 (click.FloatRange(min=0, min_open=True)); OPTIONAL_VALUE
# a string that may be left out (is_flag=False with a flag_value: only `--opt=VALUE` is
# read here, click decides what a bare `--opt` takes).
FLAG, TEXT, INT, POSITIVE_FLOAT, OPTIONAL_VALUE = "flag", "text", "int", "float>0", "optional"


def choice(*values: str) -> tuple:
    """click.Choice(values)."""
    return ("choice",) + values


def path(file_okay: bool = True, dir_okay: bool = True, path_type=str) -> tuple:
    """click.Path(file_okay=, dir_okay=, path_type=) with exists=False."""
    return ("path", file_okay, dir_okay, path_type)


def defaults(options: dict, **given) -> dict:
    """Every parameter's value when its option is not given, as click's: False for a flag,
    () for a repeatable option, None otherwise; `given` names the options declared with a
    default of their own, and the positional parameter."""
    return {param: (False if kind == FLAG else () if multiple else None)
            for param, kind, multiple in options.values()} | given


def parse(argv: list[str], options: dict, defaults: dict, arguments: tuple[str, int],
          interspersed: bool) -> dict | None:
    """ARGV -> the command's parameters as click would pass them; None: ask click.

    options: each spelling -> (parameter, kind, multiple).  defaults: every parameter's
    value when not given.  arguments: the one positional parameter, (name, nargs): nargs 1
    is an optional single word, -1 gathers all the rest in a tuple.  interspersed: click's
    allow_interspersed_args, whether options may follow a positional word.

    click's rules: `--opt VALUE` and `--opt=VALUE`; short options group (`-it`), and one
    that takes a value takes the rest of its group or the next word (`-eK=V`, `-e K=V`),
    even a word that starts with "-"; `--` ends the options; a lone "-" is a word.
    """
    params = dict(defaults)
    words, rest = [], list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            words += rest
            break
        if not arg.startswith("-") or arg == "-":
            words.append(arg)
            if not interspersed:
                words += rest
                break
            continue
        if arg.startswith("--"):
            name, has_value, value = arg.partition("=")
            if name not in options:
                return None
            param, kind, multiple = options[name]
            if kind == FLAG:
                if has_value:
                    return None                 # click: "does not take a value"
                params[param] = True
                continue
            if not has_value:
                if not rest or kind == OPTIONAL_VALUE:
                    return None                 # click: "requires an argument"; or its own rule
                value = rest.pop(0)
            if not _store(params, param, kind, multiple, value):
                return None
            continue
        letters = arg[1:]
        while letters:
            name, letters = "-" + letters[0], letters[1:]
            if name not in options:
                return None
            param, kind, multiple = options[name]
            if kind == FLAG:
                params[param] = True
                continue
            if kind == OPTIONAL_VALUE:
                return None
            if letters:
                value, letters = letters, ""
            elif rest:
                value = rest.pop(0)
            else:
                return None
            if not _store(params, param, kind, multiple, value):
                return None
    name, nargs = arguments
    if nargs == -1:
        params[name] = tuple(words)
    elif len(words) > 1:
        return None                             # click: "Got unexpected extra argument"
    else:
        params[name] = words[0] if words else defaults[name]
    return params


def _store(params: dict, param: str, kind, multiple: bool, text: str) -> bool:
    """Convert one value as click would and put it in params; False where click would
    refuse it (or might: it then looks for itself)."""
    if kind == INT:
        try:
            value = int(text)
        except ValueError:
            return False
    elif kind == POSITIVE_FLOAT:
        try:
            value = float(text)
        except ValueError:
            return False
        if not value > 0:
            return False
    elif isinstance(kind, tuple) and kind[0] == "choice":
        if text not in kind[1:]:
            return False
        value = text
    elif isinstance(kind, tuple) and kind[0] == "path":
        _, file_okay, dir_okay, path_type = kind
        if os.path.exists(text):
            if (not file_okay and os.path.isfile(text)) or (not dir_okay and os.path.isdir(text)) \
                    or not os.access(text, os.R_OK):
                return False
        value = path_type(text)
    else:
        value = text
    if multiple:
        params[param] += (value,)
    else:
        params[param] = value
    return True


def run(command, params: dict) -> None:
    """Call command(**params) and end the process as cli.py ends it after click's path:
    its status, and an error that is not a bug as one line (fast_exit.error_line)."""
    from pykvm.commands.fast_exit import error_line, exit_now

    try:
        command(**params)
        code = 0
    except SystemExit as e:
        code = e.code
    except KeyboardInterrupt:
        print("pykvm: aborted", file=sys.stderr)          # what click's path says (cli.py)
        code = 130
    except Exception as e:
        ending = error_line(e)
        if ending is None:
            raise                                         # a bug: its traceback shows where
        line, code = ending
        if line:
            print(line, file=sys.stderr)
    exit_now(code)
