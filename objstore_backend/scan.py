"""Streaming scan of a store: each object with its parsed location and metadata.

Shared by the GC and the audit, over the whole store or one key range (the GC's shards and
listers, see :mod:`objstore_backend.partition`). The listing is read a page at a time (the next page is fetched
while the current one is processed), so memory stays flat whatever the bucket holds; metadata
comes from the listing where the store includes it (GCS) and otherwise from HEAD requests,
``concurrency`` in flight on async I/O (S3).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from objstore_backend.errors import CorruptObjectError
from objstore_backend.layout import Location, is_reserved, parse
from objstore_backend.partition import KeyRange
from objstore_backend.store import ListedObject, ObjectMetadata, ObjectStore

__all__ = ["Recall", "ScanCounts", "Scanned", "scan_pages"]


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


EVERY_KEY = KeyRange()


@dataclass
class ScanCounts:
    """Requests a scan made: listing pages, metadata reads (HEADs), and reads the index spared."""

    list_requests: int = 0
    metadata_reads: int = 0
    index_hits: int = 0


#: ``(relative path, version, modified)`` -> the metadata already known for that write, or ``None``.
Recall = Callable[[str, str | None, datetime | None], Awaitable[ObjectMetadata | None]]


async def _inspect(store: ObjectStore, fs: Any, listed: ListedObject, full_path: str, counts: ScanCounts) -> Scanned:
    location = parse(listed.path)
    if location is None:
        return Scanned(listed, full_path, None)
    display = store.display_path(listed.path)
    try:
        raw = listed.metadata
        if raw is None:
            counts.metadata_reads += 1
            raw = await store.transport.head(fs, full_path)
        metadata = None if raw is None else ObjectMetadata.from_strings(raw, display)
    except CorruptObjectError as exc:
        return Scanned(listed, full_path, location, unreadable=str(exc))
    except OSError as exc:
        return Scanned(listed, full_path, location, error=f"reading {listed.path}: {exc!r}")
    return Scanned(listed, full_path, location, metadata)


async def scan_pages(
    store: ObjectStore,
    fs: Any,
    *,
    concurrency: int = 32,
    key_range: KeyRange = EVERY_KEY,
    recall: Recall | None = None,
    counts: ScanCounts | None = None,
) -> AsyncIterator[list[Scanned]]:
    """The objects of one key range, a listing page at a time, in key order.

    ``recall`` is asked first, in key order, for each object of the layout whose listing carries
    no metadata: what it answers is used instead of a HEAD. The GC's index lives under the
    reserved prefix and is never scanned.
    """
    counts = counts if counts is not None else ScanCounts()
    semaphore = asyncio.Semaphore(concurrency)

    async def bounded(listed: ListedObject, full_path: str) -> Scanned:
        async with semaphore:
            return await _inspect(store, fs, listed, full_path, counts)

    def edge(key: str | None) -> str | None:
        return None if key is None else store.full_path(key)

    pages = store.transport.list_pages(fs, store.full_path(""), edge(key_range.after), edge(key_range.upto))
    upcoming = asyncio.ensure_future(anext(pages, None))
    while (entries := await upcoming) is not None:
        counts.list_requests += 1
        upcoming = asyncio.ensure_future(anext(pages, None))  # list the next page meanwhile
        scans: list[Awaitable[Scanned]] = []
        for entry in entries:
            relative = store.relative(entry.path)
            if is_reserved(relative):
                continue
            listed = ListedObject(relative, entry.size, entry.version, entry.metadata, entry.modified)
            known = None
            if recall is not None and listed.metadata is None and parse(relative) is not None:
                known = await recall(relative, entry.version, entry.modified)
            if known is not None:
                counts.index_hits += 1
                scans.append(_known(Scanned(listed, entry.path, parse(relative), known)))
            else:
                scans.append(bounded(listed, entry.path))
        yield list(await asyncio.gather(*scans))


async def _known(found: Scanned) -> Scanned:
    return found
