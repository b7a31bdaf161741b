"""JSON in and out of object bodies, strictly, and the optional compression of bodies.

orjson writes NaN and Infinity as ``null`` without a word, and the stdlib writes them as
invalid JSON; both lose the value. Here they, ``None`` values, non-str dict keys and other
non-JSON types are refused with an error naming what and where, before any I/O.
Compression is recognised from the body's own magic bytes, never from the path, so changing
the setting never strands existing keys.
"""

from __future__ import annotations

import gzip
import math
from typing import Any

import orjson

__all__ = ["COMPRESSIONS", "compress", "decode_json", "decompress", "encode_json", "validate_json_text"]

COMPRESSIONS = ("none", "gzip")
_GZIP_MAGIC = b"\x1f\x8b"


def _find_non_finite(value: Any, where: str = "$") -> str | None:
    """Path of the first NaN or Infinity inside ``value``, if any."""
    stack = [(value, where)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return at
        if isinstance(item, dict):
            stack.extend((v, f"{at}[{k!r}]") for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{at}[{i}]") for i, v in enumerate(item))
    return None


def encode_json(value: Any) -> bytes:
    """Encode a task's value (what ``task_state_store.set`` was given) as JSON bytes."""
    if value is None:
        raise ValueError("cannot store None as a state value: delete the key instead")
    try:
        encoded = orjson.dumps(value)
    except TypeError as exc:  # sets, bytes, non-str keys, ints over 64 bits, too deep...
        raise TypeError(f"state value is not JSON-serialisable: {exc}") from exc
    # orjson turns NaN/Infinity into null; only a document with a null can hide one.
    if b"null" in encoded and (at := _find_non_finite(value)) is not None:
        raise ValueError(f"state value holds a non-finite float (NaN or Infinity) at {at}: JSON has none")
    return encoded


def decode_json(data: bytes | str) -> Any:
    """Decode a stored JSON document."""
    return orjson.loads(data)


def validate_json_text(value: str) -> bytes:
    """Check that the JSON text Airflow hands to ``set()`` is one valid, strict document.

    Returns its UTF-8 bytes, to be stored verbatim. Refuses ``NaN``/``Infinity`` literals,
    which the stdlib's ``json.dumps`` writes but no JSON parser (nor Airflow's reader) accepts.
    """
    if not isinstance(value, str):
        raise TypeError(f"state value must be a JSON-encoded str, got {type(value).__name__}")
    try:
        orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"state value is not a valid JSON document (NaN and Infinity are not JSON): {exc}") from exc
    return value.encode("utf-8")


def compress(body: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(body, compresslevel=6, mtime=0)
    if compression == "none":
        return body
    raise ValueError(f"unknown compression {compression!r}: choose one of {', '.join(COMPRESSIONS)}")


def decompress(body: bytes) -> bytes:
    """Undo :func:`compress`, whatever the setting was when the body was written."""
    if body[:2] == _GZIP_MAGIC:
        return gzip.decompress(body)
    return body
