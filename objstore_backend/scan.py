"""Streaming scan of a store: each object with its parsed location and metadata.

Shared by the GC and the audit. The listing is read a page at a time (the next page is fetched
while the current one is processed), so memory stays flat whatever the bucket holds; metadata
comes from the listing where the store includes it (GCS) and otherwise from HEAD requests,
``concurrency`` in flight on async I/O (S3).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from objstore_backend.errors import CorruptObjectError
from objstore_backend.layout import Location, parse
from objstore_backend.store import ListedObject, ObjectMetadata, ObjectStore

__all__ = ["Scanned", "scan_pages", "shard_of"]


@dataclass(frozen=True, slots=True)
class Scanned:
    """One object as the scan found it. Exactly one of the outcomes applies:

    ``location is None``: foreign (does not parse as the layout; its metadata is not read);
    ``unreadable``: metadata missing or garbage (not written by this package);
    ``error``: reading its metadata failed; ``metadata is None`` otherwise: deleted since listed.
    """

    entry: ListedObject  # path relative to the base
    full_path: str
    location: Location | None
    metadata: ObjectMetadata | None = None
    unreadable: str | None = None
    error: str | None = None


def shard_of(location: Location | None, count: int) -> int:
    """Which shard owns an object: by DAG run (tasks) or asset, so a scope stays together.

    Foreign objects go to shard 0, so every object under the base belongs to exactly one shard.
    """
    if count == 1 or location is None:
        return 0
    owner = location.ids[:2] if location.kind.value == "task" else location.ids[:1]
    return zlib.crc32("/".join((location.kind.value, *owner)).encode()) % count


async def _inspect(store: ObjectStore, fs: Any, entry: ListedObject) -> Scanned:
    relative = store.relative(entry.path)
    listed = ListedObject(relative, entry.size, entry.version, entry.metadata, entry.modified)
    location = parse(relative)
    if location is None:
        return Scanned(listed, entry.path, None)
    display = store.display_path(relative)
    try:
        raw = entry.metadata if entry.metadata is not None else await store.transport.head(fs, entry.path)
        metadata = None if raw is None else ObjectMetadata.from_strings(raw, display)
    except CorruptObjectError as exc:
        return Scanned(listed, entry.path, location, unreadable=str(exc))
    except OSError as exc:
        return Scanned(listed, entry.path, location, error=f"reading {relative}: {exc!r}")
    return Scanned(listed, entry.path, location, metadata)


async def scan_pages(
    store: ObjectStore, fs: Any, *, concurrency: int = 32, shard: tuple[int, int] = (0, 1)
) -> AsyncIterator[list[Scanned]]:
    """The objects of one shard, a listing page at a time."""
    index, count = shard
    semaphore = asyncio.Semaphore(concurrency)

    async def bounded(entry: ListedObject) -> Scanned:
        async with semaphore:
            return await _inspect(store, fs, entry)

    pages = store.transport.list_pages(fs, store.full_path(""))
    upcoming = asyncio.ensure_future(anext(pages, None))
    while (entries := await upcoming) is not None:
        upcoming = asyncio.ensure_future(anext(pages, None))  # list the next page meanwhile
        mine = [e for e in entries if shard_of(parse(store.relative(e.path)), count) == index]
        yield list(await asyncio.gather(*(bounded(entry) for entry in mine)))
