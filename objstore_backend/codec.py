"""JSON in and out of object bodies, strictly, and the optional compression of bodies.

orjson writes NaN and Infinity as ``null`` without a word, and the stdlib writes them as
invalid JSON; both lose the value. Here they, ``None`` values, non-str dict keys and other
non-JSON types are refused with an error naming what and where, before any I/O.
Values are encoded with orjson (it refuses sets, bytes and non-str keys that msgspec would
convert), checked and decoded with msgspec (it checks without building objects, and decodes
without orjson's intermediate document tree).
Compression is recognised from the body's own magic bytes, never from the path, so changing
the setting never strands existing keys.
"""

from __future__ import annotations

import gc
import gzip
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import msgspec
import orjson

__all__ = [
    "COMPRESSIONS",
    "check_json_document",
    "compress",
    "decode_json",
    "decompress",
    "encode_json",
    "validate_json_text",
]

COMPRESSIONS = ("none", "gzip")
_GZIP_MAGIC = b"\x1f\x8b"
#: Documents from this size on decode with the cyclic GC paused.
_LARGE_DOCUMENT = 1 << 20


def _holds_non_finite(value: Any) -> bool:
    """Whether a NaN or Infinity hides anywhere in ``value``; a walk that builds nothing.

    Exact types are tested first: they are nearly every node, and ``type() is`` costs a
    fraction of ``isinstance`` on a value of millions of nodes.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str or kind is int or kind is bool or item is None:
            continue
        if kind is dict or isinstance(item, dict):
            stack.extend(item.values())
        elif kind is list or isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, float) and not math.isfinite(item):
            return True
    return False


def _where_non_finite(value: Any, at: str = "$") -> str:
    """The path of a NaN or Infinity in ``value`` (which holds one), for the error message."""
    children = (
        value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    )
    for key, child in children:
        if _holds_non_finite(child):
            return _where_non_finite(child, f"{at}[{key!r}]")
    return at


def encode_json(value: Any) -> bytes:
    """Encode a task's value (what ``task_state_store.set`` was given) as JSON bytes."""
    if value is None:
        raise ValueError("cannot store None as a state value: delete the key instead")
    try:
        encoded = orjson.dumps(value)
    except TypeError as exc:  # sets, bytes, non-str keys, ints over 64 bits, too deep...
        raise TypeError(f"state value is not JSON-serialisable: {exc}") from exc
    # orjson turns NaN/Infinity into null; only a document with a null can hide one.
    if b"null" in encoded and _holds_non_finite(value):
        raise ValueError(
            f"state value holds a non-finite float (NaN or Infinity) at {_where_non_finite(value)}: JSON has none"
        )
    return encoded


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic GC while a large document becomes objects.

    Decoding allocates millions of containers, each allocation counting towards the next
    collection, and each collection walking all of them again: a 64 MiB document decodes ~5x
    faster with the collector paused. JSON builds no cycles, so nothing is left for it to do.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def decode_json(data: bytes | bytearray | str) -> Any:
    """Decode a stored JSON document into Python values.

    With msgspec, which builds the Python values straight from the text: orjson first builds
    a document tree of its own, ~3.5x the text more at the peak for a large value.
    """
    try:
        with _cyclic_gc_paused() if len(data) >= _LARGE_DOCUMENT else nullcontext():
            return msgspec.json.decode(data)
    except RecursionError:
        raise ValueError("JSON document nested too deeply") from None


def check_json_document(data: bytes | bytearray) -> None:
    """Raise ``ValueError`` unless ``data`` is one strict JSON document (its UTF-8 is the caller's to check).

    Checks the syntax without building Python objects (msgspec skips over the document as
    raw JSON), so checking a large value costs a pass over its bytes, not its size in objects.
    Numbers beyond a double's range (``1e400``) are valid JSON text and pass: the text is kept
    verbatim, so nothing is lost (Python's ``json`` reads them as infinity).
    """
    try:
        msgspec.json.decode(data, type=msgspec.Raw)
    except RecursionError:
        raise ValueError("not a valid JSON document: nested too deeply") from None
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a valid JSON document: {_what_is_wrong(data, str(exc))}") from exc


_AT_BYTE = re.compile(r"^(?:JSON is malformed: )?(.*?)(?: \(byte (\d+)\))?$")
_NON_FINITE = (b"NaN", b"Infinity", b"-Infinity")
_EXCERPT_BYTES = 24


def _what_is_wrong(data: bytes | bytearray, reason: str) -> str:
    """The decoder's reason, where it is (byte offset) and the text there, naming NaN or Infinity
    only when the document holds one there."""
    found = _AT_BYTE.match(reason)
    if found is None or found.group(2) is None:
        return reason[0].lower() + reason[1:] if reason else "unreadable"
    what, at = found.group(1), int(found.group(2))
    start = at - 1 if at and data[at - 1 : at] == b"-" else at
    literal = next((name for name in _NON_FINITE if data[start : start + len(name)] == name), None)
    if literal is not None:
        what, at = f"{literal.decode()} is not JSON (it has no NaN or Infinity)", start
    excerpt = bytes(data[max(0, at - _EXCERPT_BYTES // 2) : at + _EXCERPT_BYTES // 2]).decode("utf-8", "replace")
    return f"{what} at byte {at}, near {excerpt!r}"


def validate_json_text(value: str) -> bytes:
    """Check that the JSON text Airflow hands to ``set()`` is one valid, strict document.

    Returns its UTF-8 bytes, to be stored verbatim. Refuses ``NaN``/``Infinity`` literals,
    which the stdlib's ``json.dumps`` writes but no JSON parser (nor Airflow's reader) accepts.
    """
    if not isinstance(value, str):
        raise TypeError(f"state value must be a JSON-encoded str, got {type(value).__name__}")
    try:
        body = value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate
        raise ValueError(
            f"state value is not a valid JSON document: no UTF-8 for character {exc.start} ({exc.reason})"
        ) from None
    try:
        check_json_document(body)
    except ValueError as exc:
        raise ValueError(f"state value is {exc}") from None
    return body


def compress(body: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(body, compresslevel=6, mtime=0)
    if compression == "none":
        return body
    raise ValueError(f"unknown compression {compression!r}: choose one of {', '.join(COMPRESSIONS)}")


def decompress(body: bytes | bytearray) -> bytes | bytearray:
    """Undo :func:`compress`, whatever the setting was when the body was written."""
    if body[:2] == _GZIP_MAGIC:
        return gzip.decompress(body)
    return body
