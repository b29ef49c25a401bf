"""json.loads for the runtime's short-lived calls, without `import json`.

Every `pykvm-runc` call reads the container's state.json, and `start` and `delete` read
little else.  `import json` costs those calls ~9 ms of their ~30: json.decoder imports `re`
for its pure-Python fallback, and `re` imports `enum`, `functools` and `collections`.  Yet
the parsing itself is done in C: json.loads hands the text to the scanner of CPython's
`_json` module, built from the decoder's settings.  This module builds that scanner itself,
with json.JSONDecoder's defaults, and so gives the same values for about the cost of
importing `_json`; a text that is not JSON is handed to json.loads, for json's own error.

    loads('{"pid": 42, "hooks": {}}')  ->  {'pid': 42, 'hooks': {}}

Where `_json` is missing (another Python implementation), it is json.loads.  Writing JSON
stays with the json module: only `create` and the container's monitor write state.
"""
from __future__ import annotations

__all__ = ["loads"]

WHITESPACE = " \t\n\r"          # RFC 8259 section 2: the only whitespace between tokens


class DecoderSettings:
    """What the C scanner reads from a json.JSONDecoder: its defaults."""
    strict = True                                # no control characters inside strings
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"NaN": float("nan"), "Infinity": float("inf"),
                      "-Infinity": float("-inf")}.__getitem__      # json.decoder's _CONSTANTS


try:
    from _json import make_scanner
    _scan = make_scanner(DecoderSettings())
except ImportError:                              # pragma: no cover - not CPython
    _scan = None


def loads(text: str):
    """One JSON value, with nothing but whitespace around it (json.loads' rule);
    ValueError (json.JSONDecodeError) otherwise."""
    if _scan is None:                            # pragma: no cover - not CPython
        import json
        return json.loads(text)
    start = len(text) - len(text.lstrip(WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as e:                   # no value begins at e.value
        raise ValueError(f"Expecting value: char {e.value}") from None
    except SystemError:
        # The scanner reports a syntax error with json.decoder's JSONDecodeError, which
        # CPython 3.11 looks up in sys.modules only: with json not imported, that lookup
        # fails and the call returns no exception.  An error is rare: let json say it.
        import json
        return json.loads(text)
    if text[end:].strip(WHITESPACE):
        raise ValueError(f"Extra data: char {end}")
    return value
