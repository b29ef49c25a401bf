"""The OCI image spec's JSON documents, checked before anything reads a field of them.

A manifest, an index or an image config comes from outside: a registry, a
`load`ed archive, or a store another process (or a crash) wrote.  Content
addressing proves a blob is the one that was named, not that it is
well-formed, so each document is checked against the fields pykvm reads, and a
bad one is one ContainerError, never a KeyError from deep inside `run`:

    descriptor   descriptor.md     mediaType (string), digest (sha256), size (integer >= 0),
                                   annotations (string -> string), platform (object)
    manifest     manifest.md       config: a descriptor; layers: a list of descriptors
    index        image-index.md    manifests: a list of descriptors (index.json is one too)
    config       config.md         rootfs.diff_ids: digests; config.Env/Cmd/Entrypoint:
                                   lists of strings; WorkingDir/User: strings

Only what pykvm uses is checked; unknown fields are kept, as the spec asks.
"""
from __future__ import annotations

import json

from pykvm.errors import ContainerError

__all__ = ["parse_document", "check_descriptor", "check_manifest", "check_index", "check_config"]

DIGEST_PREFIX = "sha256:"
HEX_DIGITS = frozenset("0123456789abcdef")
DIGEST_HEX_LENGTH = 64
CONFIG_LISTS = ("Env", "Cmd", "Entrypoint")      # config.md: arrays of strings
CONFIG_STRINGS = ("WorkingDir", "User")          # config.md: strings


class DocumentError(ContainerError):
    """An image document that is not what the spec says (`what` names it)."""

    def __init__(self, what: str, problem: str):
        self.what = what
        super().__init__(f"{what} is malformed: {problem}")


def parse_document(data: bytes, what: str) -> dict:
    """A JSON object from `data`, or DocumentError."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:                  # UnicodeDecodeError is a ValueError
        raise DocumentError(what, f"not JSON ({str(e)[:80]})") from None
    return _object(doc, what, "the document")


def check_descriptor(d, what: str, field: str = "descriptor") -> dict:
    """descriptor.md: the fields of a descriptor that pykvm follows."""
    _object(d, what, field)
    _digest(d.get("digest"), what, f"{field}.digest")
    size = d.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise DocumentError(what, f"{field}.size {size!r} is not a byte count")
    if not isinstance(d.get("mediaType", ""), str):
        raise DocumentError(what, f"{field}.mediaType is not a string")
    annotations = d.get("annotations", {})
    if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
        raise DocumentError(what, f"{field}.annotations is not an object of strings")
    _object(d.get("platform", {}), what, f"{field}.platform")
    return d


def check_manifest(doc, what: str = "image manifest") -> dict:
    """manifest.md: a config descriptor and a list of layer descriptors."""
    _object(doc, what, "the document")
    check_descriptor(doc.get("config"), what, "config")
    for i, layer in enumerate(_list(doc.get("layers"), what, "layers")):
        check_descriptor(layer, what, f"layers[{i}]")
    return doc


def check_index(doc, what: str = "image index") -> dict:
    """image-index.md (and image-layout.md's index.json): a list of descriptors."""
    _object(doc, what, "the document")
    for i, entry in enumerate(_list(doc.get("manifests"), what, "manifests")):
        check_descriptor(entry, what, f"manifests[{i}]")
    return doc


def check_config(doc, what: str = "image config") -> dict:
    """config.md: the fields `run` and `build` read."""
    _object(doc, what, "the document")
    rootfs = _object(doc.get("rootfs", {}), what, "rootfs")
    for i, diff_id in enumerate(_list(rootfs.get("diff_ids", []), what, "rootfs.diff_ids")):
        _digest(diff_id, what, f"rootfs.diff_ids[{i}]")
    config = _object(doc.get("config") or {}, what, "config")
    for name in CONFIG_LISTS:
        if not all(isinstance(s, str) for s in _list(config.get(name) or [], what, f"config.{name}")):
            raise DocumentError(what, f"config.{name} is not a list of strings")
    for name in CONFIG_STRINGS:
        if not isinstance(config.get(name) or "", str):
            raise DocumentError(what, f"config.{name} is not a string")
    return doc


def _digest(value, what: str, field: str) -> str:
    """descriptor.md "Digests", as pykvm stores them: sha256 only (a digest becomes a file name)."""
    if not (isinstance(value, str) and value.startswith(DIGEST_PREFIX)
            and len(value) == len(DIGEST_PREFIX) + DIGEST_HEX_LENGTH
            and set(value[len(DIGEST_PREFIX):]) <= HEX_DIGITS):
        raise DocumentError(what, f"{field} {str(value)[:80]!r} is not sha256:<64 hex digits>")
    return value


def _object(value, what: str, field: str) -> dict:
    return _typed(value, dict, "an object", what, field)


def _list(value, what: str, field: str) -> list:
    return _typed(value, list, "a list", what, field)


def _typed(value, kind: type, noun: str, what: str, field: str):
    """`value` if it is a `kind` (JSON object or array), else DocumentError naming `field`."""
    if value is None:
        raise DocumentError(what, f"{field} is missing")
    if not isinstance(value, kind):
        raise DocumentError(what, f"{field} is a {type(value).__name__}, not {noun}")
    return value
