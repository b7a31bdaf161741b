"""Where each (scope, key) lives: the object layout, both ways.

::

    task/{dag_id}/{run_id}/{task_id}/{map_index}/{key}
    task/{dag_id}/{run_id}/region={region_id}/{task_id}/{map_index}/{key}   (Airflow 3.4 regions)
    asset/id/{asset_id}/{key}
    asset/name/{name}/{key}
    asset/uri/{uri}/{key}

Paths here are relative to the store's base path. Every id and key is one escaped segment,
so no id can leave its prefix or collide with another, and every prefix ends in ``/`` so
clearing task ``t`` never touches ``t2``, nor map index ``1`` index ``10``. The GC and the
audit parse paths back with :func:`parse`; what does not parse is foreign and never deleted.
A segment too long for a path is hashed; for a key, the object records the key itself
(:func:`recorded_key`, :func:`original_key`), so ``export`` and listings can give it back.
A region (3.4's mapped tasks and task loops) is a non-zero UUID, written canonically; the zero
region is 3.3's path, so a region's prefix and the zero region's never contain one another.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import quote, unquote
from uuid import UUID

__all__ = [
    "LAYOUT_VERSION",
    "MAX_SEGMENT_BYTES",
    "RESERVED_PREFIX",
    "Location",
    "ScopeKind",
    "decode_segment",
    "encode_segment",
    "is_hashed",
    "is_reserved",
    "object_path",
    "original_key",
    "parse",
    "recorded_key",
    "scope_prefix",
]

LAYOUT_VERSION = 1

#: An escaped segment longer than this is replaced by a readable stem and a hash. The
#: bound keeps every path under the 1024-byte key limit of S3 and GCS (five variable
#: segments plus the fixed ones and a base prefix of up to :data:`MAX_BASE_KEY_BYTES`) and
#: every file name under the 255-byte limit of local filesystems.
MAX_SEGMENT_BYTES = 160
MAX_BASE_KEY_BYTES = 150

#: Where the GC keeps its index and key-range plan, under the base. No state path starts with
#: it (state paths start with ``task/`` or ``asset/``, and an escaped segment never starts with
#: ``~``): the GC, the audit, ``ls`` and clears skip it, and it is never reported as foreign.
RESERVED_PREFIX = "~gc-index/"

# Characters left as they are; everything else, "~" included, is percent-encoded, so a
# "~" in a segment can only come from hashing and an escaped segment is pure ASCII.
_SAFE = "-_."
_EMPTY = "%"  # quote() never writes a lone "%": it is free to stand for the empty string
_HASHED = re.compile(r"^[A-Za-z0-9%._-]*~[0-9a-f]{64}$")
_STEM_BYTES = 48
_REGION = "region="  # an escaped id never holds "=": no task id can pass for a region segment


class ScopeKind(str, Enum):
    """The namespace an object belongs to: its first path segments."""

    TASK = "task"
    ASSET_ID = "asset/id"
    ASSET_NAME = "asset/name"
    ASSET_URI = "asset/uri"


@dataclass(frozen=True, slots=True)
class Location:
    """A path parsed back into its scope kind, ids and key.

    ``ids`` are the decoded scope ids in path order (for a task: dag_id, run_id, [region],
    task_id, map_index). An id too long to keep whole stays in its hashed form.
    """

    kind: ScopeKind
    ids: tuple[str, ...]
    key: str

    @property
    def dag_id(self) -> str | None:
        return self.ids[0] if self.kind is ScopeKind.TASK else None


def is_hashed(segment: str) -> bool:
    """True for a segment too long to keep whole: its id cannot be recovered from the path."""
    return _HASHED.match(segment) is not None


def is_reserved(path: str) -> bool:
    """True for a path (relative to the base) under :data:`RESERVED_PREFIX`: the GC's, not state."""
    return path.startswith(RESERVED_PREFIX)


def encode_segment(value: str) -> str:
    """Escape one id or key into a path segment that is injective, ASCII and bounded."""
    if not isinstance(value, str):
        raise TypeError(f"state store ids and keys must be str, got {type(value).__name__}: {value!r}")
    if value == "":
        return _EMPTY
    escaped = quote(value, safe=_SAFE).replace("~", "%7E")  # quote() keeps "~"; hashing owns it
    if escaped.strip(".") == "":  # "." and ".." would walk the tree
        escaped = escaped.replace(".", "%2E")
    if len(escaped) <= MAX_SEGMENT_BYTES:
        return escaped
    stem = escaped[:_STEM_BYTES]
    stem = stem[: stem.rfind("%")] if "%" in stem[-2:] else stem  # never cut a %XX in half
    return f"{stem}~{hashlib.sha256(value.encode('utf-8', 'surrogatepass')).hexdigest()}"


def recorded_key(key: str) -> str | None:
    """``key`` itself when its segment is hashed, else ``None``: what the object must record,
    since its path cannot give the key back."""
    return key if is_hashed(encode_segment(key)) else None


def original_key(location: Location, recorded: str | None) -> str | None:
    """The key of the object at ``location``: from its path, or, for a hashed segment, the key the
    object recorded (:func:`recorded_key`), if it hashes to that very segment; ``None`` if neither."""
    if not is_hashed(location.key):
        return location.key
    return recorded if recorded is not None and encode_segment(recorded) == location.key else None


def decode_segment(segment: str) -> str:
    """Reverse :func:`encode_segment`; a hashed segment is returned as it is written."""
    if segment == _EMPTY:
        return ""
    if is_hashed(segment):
        return segment
    if "~" in segment or "/" in segment or not segment:
        raise ValueError(f"not a segment of this layout: {segment!r}")
    decoded = unquote(segment, errors="strict")
    if encode_segment(decoded) != segment:  # not canonical: written by someone else
        raise ValueError(f"not a segment of this layout: {segment!r}")
    return decoded


def _region_segment(scope: Any) -> list[str]:
    """Airflow 3.4's ``TaskScope.region_id`` (a mapped task's or a task loop's dynamic region): part
    of the identity when non-zero. Only a UUID is a region; the zero UUID (and 3.3's scope, which has
    none) is "no region" and keeps 3.3's path."""
    region = getattr(scope, "region_id", None)
    if region is None:
        return []
    if not isinstance(region, UUID):
        raise TypeError(f"region_id must be a UUID, got {type(region).__name__}: {region!r}")
    return [] if region.int == 0 else [f"{_REGION}{region}"]


def _region_of(segment: str) -> str | None:
    """The segment itself if it is a region segment as :func:`_region_segment` writes it, else ``None``."""
    if not segment.startswith(_REGION):
        return None
    try:
        region = UUID(segment[len(_REGION) :])
    except ValueError:
        return None
    return segment if region.int != 0 and f"{_REGION}{region}" == segment else None


def _is_task_scope(scope: Any) -> bool:
    # Duck-typed: Airflow ships two TaskScope classes (task SDK and core), both accepted.
    return hasattr(scope, "dag_id") and hasattr(scope, "task_id")


def _map_index(scope: Any) -> str:
    # 3.4 calls it region_index (map_index is a read-only alias); 3.3 has only map_index
    map_index = getattr(scope, "region_index", None)
    if map_index is None:
        map_index = scope.map_index
    if isinstance(map_index, bool) or not isinstance(map_index, int):
        raise TypeError(f"map_index must be an int, got {type(map_index).__name__}: {map_index!r}")
    return str(map_index)


def _asset_prefix(scope: Any) -> list[str]:
    asset_id = getattr(scope, "asset_id", None)
    name = getattr(scope, "name", None)
    uri = getattr(scope, "uri", None)
    if asset_id is not None:
        if isinstance(asset_id, bool) or not isinstance(asset_id, int):
            raise TypeError(f"asset_id must be an int, got {type(asset_id).__name__}: {asset_id!r}")
        return ["asset", "id", str(asset_id)]
    if name is not None:
        return ["asset", "name", encode_segment(name)]
    if uri is not None:
        return ["asset", "uri", encode_segment(uri)]
    raise ValueError(f"an asset scope needs an asset_id, a name or a uri: {scope!r}")


def _task_prefix(scope: Any) -> list[str]:
    return [
        "task",
        encode_segment(scope.dag_id),
        encode_segment(scope.run_id),
        *_region_segment(scope),
        encode_segment(scope.task_id),
    ]


def scope_prefix(scope: Any, *, all_map_indices: bool = False) -> str:
    """The prefix (ending in ``/``) holding every key of ``scope``.

    For a task scope, ``all_map_indices`` widens it to every map index of the task.
    """
    if _is_task_scope(scope):
        parts = _task_prefix(scope)
        if not all_map_indices:
            parts.append(_map_index(scope))
    else:
        parts = _asset_prefix(scope)
    return "/".join(parts) + "/"


def object_path(scope: Any, key: str) -> str:
    """The path of one key, relative to the base path."""
    return scope_prefix(scope) + encode_segment(key)


_ASSET_KINDS = {"id": ScopeKind.ASSET_ID, "name": ScopeKind.ASSET_NAME, "uri": ScopeKind.ASSET_URI}


def parse(path: str) -> Location | None:
    """Parse a relative path back into its :class:`Location`; ``None`` if it is foreign."""
    parts = path.split("/")
    try:
        if parts[0] == "task" and len(parts) in (6, 7):
            ids = parts[1:-1]
            region = _region_of(ids[2]) if len(parts) == 7 else None
            if len(parts) == 7 and region is None:  # 7 parts are only a task in a region
                return None
            if not re.fullmatch(r"-?[0-9]+", ids[-1]) or str(int(ids[-1])) != ids[-1]:
                return None
            decoded = tuple(
                seg if i == len(ids) - 1 or seg == region else decode_segment(seg) for i, seg in enumerate(ids)
            )
            return Location(ScopeKind.TASK, decoded, decode_segment(parts[-1]))
        if parts[0] == "asset" and len(parts) == 4 and parts[1] in _ASSET_KINDS:
            kind = _ASSET_KINDS[parts[1]]
            if kind is ScopeKind.ASSET_ID:
                if not re.fullmatch(r"-?[0-9]+", parts[2]) or str(int(parts[2])) != parts[2]:
                    return None
                scope_id = parts[2]
            else:
                scope_id = decode_segment(parts[2])
            return Location(kind, (scope_id,), decode_segment(parts[3]))
    except ValueError:
        return None
    return None
