"""ObjectStore: one object per key, body and metadata together, on any fsspec filesystem.

The requests themselves are the transports' (:mod:`objstore_backend.transports`, one module per
store): each issues the fewest requests its store allows, one per read (body and metadata
together), write and delete; a clear is the listing pages plus one batch delete per page.
Transports are written once, as coroutines taking the filesystem to use; :class:`ObjectStore`
runs them either on fsspec's I/O loop (sync calls) or on the caller's running loop with a
filesystem bound to that loop (async calls), so no logic exists twice.

Reads never go through s3fs/gcsfs listing caches: a store shared by many processes must see
what the others wrote (a cached listing answers "missing" for a key written since).

Failures are retried and translated in one place, ``Transport.attempt``
(:mod:`objstore_backend.transports.base`), under the store's one :class:`RetryPolicy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import os
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, TypeVar

import fsspec
import fsspec.asyn
from fsspec.core import split_protocol

from objstore_backend.codec import check_json_document, decompress
from objstore_backend.errors import CorruptObjectError, StoreError, UnguardedStoreError
from objstore_backend.layout import LAYOUT_VERSION, MAX_BASE_KEY_BYTES, is_reserved
from objstore_backend.store_metrics import note_read, note_written
from objstore_backend.transports import GONE, GUARDED_STORES, LocalTransport, S3Transport, Transport, transport_for
from objstore_backend.transports.base import (
    META_ADOPTED,
    META_EXPIRES,
    META_KEY,
    META_LAYOUT,
    META_MODE,
    META_ORIGIN,
    META_UPDATED,
    Body,
    ListedObject,
    RetryPolicy,
    describe_cause,
    format_key,
    format_time,
    parse_key,
    parse_time,
)
from objstore_backend.transports.s3 import S3_CONFIG_DEFAULTS

__all__ = [
    "ListedObject",
    "Mode",
    "ObjectMetadata",
    "ObjectStore",
    "RetryPolicy",
    "StoredObject",
    "damage_named",
    "json_text",
]

logger = logging.getLogger(__name__)

Mode = Literal["primary", "offload"]


@dataclass(frozen=True, slots=True)
class ObjectMetadata:
    """What the store records beside each body."""

    mode: Mode
    expires_at: datetime | None = None
    adopted: bool = False
    updated_at: datetime | None = None  # None: written by a version that did not record it
    #: The key, on an object whose path holds it hashed (:func:`~objstore_backend.layout.recorded_key`).
    key: str | None = None
    origin: str | None = None  # an adopted copy's source path, where it differs from its own

    def to_strings(self) -> dict[str, str]:
        meta = {META_LAYOUT: str(LAYOUT_VERSION), META_MODE: self.mode}
        if self.expires_at is not None:
            meta[META_EXPIRES] = format_time(self.expires_at)
        if self.adopted:
            meta[META_ADOPTED] = "1"
        if self.updated_at is not None:
            meta[META_UPDATED] = format_time(self.updated_at)
        if self.key is not None:
            meta[META_KEY] = format_key(self.key)
        if self.origin is not None:
            meta[META_ORIGIN] = self.origin
        return meta

    @classmethod
    def from_strings(cls, meta: dict[str, str], path: str) -> ObjectMetadata:
        """Parse metadata read back; anything not written by this package is corrupt."""
        meta = {k.lower(): v for k, v in meta.items()}
        if meta.get(META_LAYOUT) != str(LAYOUT_VERSION) or meta.get(META_MODE) not in ("primary", "offload"):
            raise CorruptObjectError(f"{path}: not a state object of this package (metadata {meta!r})")
        times = {}
        for name, what in ((META_EXPIRES, "expiry"), (META_UPDATED, "update time")):
            text = meta.get(name)
            try:
                times[name] = parse_time(text) if text else None
            except ValueError as exc:
                raise CorruptObjectError(f"{path}: unreadable {what} {text!r}") from exc
        return cls(
            meta[META_MODE],  # type: ignore[arg-type]
            times[META_EXPIRES],
            meta.get(META_ADOPTED) == "1",
            times[META_UPDATED],
            key=parse_key(meta[META_KEY]) if META_KEY in meta else None,  # checked against the path by its reader
            origin=meta.get(META_ORIGIN),
        )

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or datetime.now(timezone.utc))


@dataclass(frozen=True, slots=True)
class StoredObject:
    """A body (decompressed) and its metadata, read in one request."""

    body: Body
    metadata: ObjectMetadata


_T = TypeVar("_T")

#: The option the store reads out of ``storage_options`` for its :class:`RetryPolicy`.
RETRY_OPTION = "retry"

#: Options that make s3fs/gcsfs (and ftp's, sftp's... clients) answer from the store, never from a process-local cache.
_NO_CACHE = {"skip_instance_cache": True, "use_listings_cache": False}


def _user_set_botocore_retries(transport_class: type[Transport], options: dict[str, Any]) -> bool:
    config = options.get("config_kwargs")
    return issubclass(transport_class, S3Transport) and isinstance(config, Mapping) and "retries" in config


class ObjectStore:
    """The objects under one base path, read and written whole, sync or async.

    ``url`` is a plain fsspec URL (``s3://bucket/prefix/``, ``gs://...``, ``/local/dir``,
    ``memory://...``); ``storage_options`` go to the filesystem. ``filesystem`` injects a
    ready synchronous filesystem instead (tests use the memory filesystem).
    """

    def __init__(
        self,
        url: str,
        storage_options: dict[str, Any] | None = None,
        *,
        filesystem: fsspec.AbstractFileSystem | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        protocol, _ = split_protocol(url)
        self.protocol = protocol or "file"
        options = dict(storage_options or {})
        retry_option = options.pop(RETRY_OPTION, None)
        self.storage_options = options
        transport_class = transport_for(self.protocol)
        if retry is None and retry_option is None and _user_set_botocore_retries(transport_class, options):
            retry = RetryPolicy(attempts=1)  # botocore retries as the user asked: one policy, not two
        self.retry = retry or RetryPolicy.from_option(retry_option)
        self.transport = transport_class(self.retry, self._display_full)
        if filesystem is None:
            filesystem = self._make_filesystem(asynchronous=False)
        self.fs = filesystem
        self.root = self.fs._strip_protocol(url).rstrip("/")
        self._check_bucket_name()
        self._check_root_length()
        #: loop -> (the filesystem bound to it, the generator that closes it when the loop shuts down)
        self._loop_fs: dict[asyncio.AbstractEventLoop, tuple[Any, AsyncGenerator[None, None]]] = {}
        if isinstance(self.transport, LocalTransport):  # state is private to the Airflow user
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            self.transport.root = self.root

    def __repr__(self) -> str:
        return f"ObjectStore({self.url!r})"

    @property
    def url(self) -> str:
        """The base URL, for messages: protocol and path, never credentials."""
        return self.root if self.protocol == "file" else f"{self.protocol}://{self.root}"

    def full_path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def display_path(self, relative: str) -> str:
        return f"{self.url}/{relative}"

    def _display_full(self, full: str) -> str:
        """A full path as messages show it: like :meth:`display_path`, never credentials."""
        return full if self.protocol == "file" else f"{self.protocol}://{full}"

    def relative(self, full: str) -> str:
        return full[len(self.root) + 1 :]

    def _check_bucket_name(self) -> None:
        """Refuse credentials in the URL (``s3://KEY:SECRET@bucket``): every message would print them.

        S3 and GCS bucket names never hold ``:`` or ``@`` (S3 access point ARNs aside). The URL
        itself is not repeated in the error.
        """
        bucket = self.root.split("/", 1)[0]
        if self.transport.is_async and ("@" in bucket or ":" in bucket) and not bucket.startswith("arn:"):
            raise ValueError(
                f"the base URL ({self.protocol}://...) does not start with a bucket name: its first part holds "
                "':' or '@', as credentials written into a URL do. Give credentials in storage_options "
                "(or an Airflow connection id, scheme://conn_id@bucket/...), never in the URL"
            )

    def check_guarded(self, command: Literal["gc", "import"], *, writers_stopped: bool = False) -> None:
        """Refuse to run ``command`` where the transport cannot make it safe against writers.

        The GC deletes a key only if it is still the version it found expired; ``import``
        writes a key only if none is there yet. Without that condition in the store, a key a
        writer sets meanwhile would be deleted, or overwritten. ``writers_stopped``: the
        operator has stopped every writer of the store for the run, so no condition is needed.
        """
        needed = "supports_conditional_delete" if command == "gc" else "supports_create_only"
        if writers_stopped or getattr(self.transport, needed):
            return
        what = "conditional deletes" if command == "gc" else "create-only writes"
        risk = "delete a key rewritten meanwhile" if command == "gc" else "overwrite a key set meanwhile"
        raise UnguardedStoreError(
            f"{command} refuses to run on {self.url}: the {self.protocol} filesystem has no {what}, so it "
            f"could {risk}. They run on {GUARDED_STORES}; on {self.protocol}, only with every writer of the "
            f"store stopped for the run (--writers-stopped)"
        )

    def _check_root_length(self) -> None:
        key_part = self.root.split("/", 1)[1] if self.transport.is_async and "/" in self.root else ""
        if len(key_part.encode()) > MAX_BASE_KEY_BYTES:
            raise ValueError(
                f"the base path's prefix {key_part!r} is longer than {MAX_BASE_KEY_BYTES} bytes: "
                "keys under it could exceed the store's 1024-byte limit"
            )

    def _make_filesystem(self, *, asynchronous: bool, loop: Any = None) -> fsspec.AbstractFileSystem:
        cls = fsspec.get_filesystem_class(self.protocol)
        options = dict(self.storage_options)
        if self.transport.is_async:
            options = {**_NO_CACHE, **options, "asynchronous": asynchronous}
            if isinstance(self.transport, S3Transport):
                # botocore's pool of 10 would cap the GC's fan-out; botocore's own retries are
                # off so the store's RetryPolicy is the only one (the user's config_kwargs win).
                options["config_kwargs"] = {**S3_CONFIG_DEFAULTS, **options.get("config_kwargs", {})}
            if loop is not None:
                options["loop"] = loop
        elif self.protocol == "memory":
            options.setdefault("skip_instance_cache", True)
        else:  # sftp, ftp, ...: no listing cached in this process, a client of the store's own
            options = {**_NO_CACHE, **options}
        return cls(**options)

    # -- running a transport coroutine, sync or on the caller's loop ---------------------

    def _run(self, method: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        loop = self.fs.loop if self.transport.is_async else fsspec.asyn.get_loop()
        result: _T = fsspec.asyn.sync(loop, method, self.fs, *args)
        return result

    async def _bound_fs(self) -> Any:
        """The filesystem instance bound to the running loop (async filesystems are per loop).

        Each is closed, and forgotten, when its loop shuts down: callers that run many
        short-lived loops (``asyncio.run`` per call, sync-to-async bridges) keep no client,
        connection pool or loop alive per call.
        """
        if not self.transport.is_async:
            return self.fs
        loop = asyncio.get_running_loop()
        if loop is getattr(self.fs, "loop", None):
            return self.fs
        bound = self._loop_fs.get(loop)
        if bound is None:
            await self._forget_closed_loops()
            fs = self._make_filesystem(asynchronous=True, loop=loop)
            closer = self._close_with_loop(loop, fs)
            bound = self._loop_fs[loop] = (fs, closer)
            await anext(closer)  # started: the loop now tracks it, and closes it in shutdown_asyncgens()
        return bound[0]

    async def _close_with_loop(self, loop: asyncio.AbstractEventLoop, fs: Any) -> AsyncGenerator[None, None]:
        """Suspended while ``loop`` runs; ``loop.shutdown_asyncgens()`` (``asyncio.run`` and
        ``asyncio.Runner`` call it before closing the loop) resumes it to close ``fs``."""
        try:
            yield
        finally:
            self._loop_fs.pop(loop, None)
            await self._close_fs(fs)

    async def _forget_closed_loops(self) -> None:
        """Loops closed without ``shutdown_asyncgens()``: their clients are marked closed and freed
        (aiohttp closes nothing more on a closed loop; the sockets go with their transports)."""
        for loop, (fs, _) in list(self._loop_fs.items()):
            if loop.is_closed() and self._loop_fs.pop(loop, None) is not None:
                await self._close_fs(fs)

    async def _close_fs(self, fs: Any) -> None:
        try:
            await self.transport.close(fs)
        except Exception as exc:  # a client that fails to close is no reason to fail the caller
            logger.debug("closing the filesystem of a finished event loop: %s", describe_cause(exc))

    async def _arun(self, method: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        return await method(await self._bound_fs(), *args)

    # -- operations, each written once as a coroutine ----------------------------------

    async def _read(self, fs: Any, relative: str) -> StoredObject | None:
        path = self.full_path(relative)
        found = await self.transport.read(fs, path)
        if found is None:
            return None
        body, metadata = found
        note_read(len(body))
        display = self.display_path(relative)
        return StoredObject(_decompress(body, display), ObjectMetadata.from_strings(metadata, display))

    async def _head(self, fs: Any, relative: str) -> ObjectMetadata | None:
        found = await self.transport.head(fs, self.full_path(relative))
        return None if found is None else ObjectMetadata.from_strings(found, self.display_path(relative))

    def _metadata_strings(self, relative: str, metadata: ObjectMetadata) -> dict[str, str]:
        """The metadata to write; a recorded key the store has no room for is left out, with a warning
        (the value is still stored: only ``export`` cannot give the key back, and names it)."""
        strings = metadata.to_strings()
        limit = self.transport.metadata_bytes
        if limit is not None and META_KEY in strings:
            size = sum(len(name.encode()) + len(value.encode()) for name, value in strings.items())
            if size > limit:
                del strings[META_KEY]
                logger.warning(
                    "%s: its key is too long to record in the object's metadata (%d bytes, the store takes %d): "
                    "export cannot give this key back",
                    self.display_path(relative),
                    size,
                    limit,
                )
        return strings

    async def _write(
        self, fs: Any, relative: str, body: bytes, metadata: ObjectMetadata, create_only: bool = False
    ) -> None:
        strings = self._metadata_strings(relative, metadata)
        await self.transport.write(fs, self.full_path(relative), body, strings, create_only=create_only)
        note_written(len(body))

    async def _delete(self, fs: Any, relative: str) -> None:
        await self.transport.delete(fs, self.full_path(relative))

    async def _adopt(self, fs: Any, source: str, target: str, metadata: ObjectMetadata) -> bool:
        """Copy the offload object at ``source`` to ``target`` (the same path: restamp it) with
        ``metadata``, its body as stored; ``False`` if ``source`` holds no offload object."""
        found = await self.transport.read(fs, self.full_path(source))
        if found is None:
            return False
        try:
            mode = ObjectMetadata.from_strings(found[1], self.display_path(source)).mode
        except CorruptObjectError:
            return False
        if mode != "offload":
            return False
        await self.transport.write(fs, self.full_path(target), found[0], self._metadata_strings(target, metadata))
        note_written(len(found[0]))
        return True

    async def _clear_prefix(self, fs: Any, relative_prefix: str) -> int:
        deleted = 0
        failures: list[tuple[str, str]] = []
        async for page in self.transport.list_pages(fs, self.full_path(relative_prefix)):
            items = [(entry.path, None) for entry in page]
            failures += [f for f in await self.transport.delete_batch(fs, items) if f[1] != GONE]
            deleted += len(items)
        if failures:
            by_reason: dict[str, list[str]] = {}
            for path, why in failures:
                by_reason.setdefault(why, []).append(self.relative(path))
            shown = "; ".join(
                f"{', '.join(paths[:5])}{f' and {len(paths) - 5} more' if len(paths) > 5 else ''} ({why})"
                for why, paths in list(by_reason.items())[:3]
            )
            raise StoreError(
                f"clearing {self.display_path(relative_prefix)}: {len(failures)} of {deleted} objects "
                f"could not be deleted: {shown}"
            )
        logger.debug("cleared %d objects under %s", deleted, self.display_path(relative_prefix))
        return deleted

    def read(self, relative: str) -> StoredObject | None:
        """The object at ``relative``, or ``None``; one request."""
        return self._run(self._read, relative)

    async def aread(self, relative: str) -> StoredObject | None:
        return await self._arun(self._read, relative)

    def head(self, relative: str) -> ObjectMetadata | None:
        """The metadata of the object at ``relative`` without its body, or ``None``."""
        return self._run(self._head, relative)

    async def ahead(self, relative: str) -> ObjectMetadata | None:
        return await self._arun(self._head, relative)

    def write(self, relative: str, body: bytes, metadata: ObjectMetadata, *, create_only: bool = False) -> None:
        """Write body and metadata in one request.

        ``create_only``: only if no object is there yet, decided by the store in the same
        request; ``FileExistsError`` otherwise (nothing is written).
        """
        self._run(self._write, relative, body, metadata, create_only)

    async def awrite(self, relative: str, body: bytes, metadata: ObjectMetadata, *, create_only: bool = False) -> None:
        await self._arun(self._write, relative, body, metadata, create_only)

    def delete(self, relative: str) -> None:
        """Delete one object in one request; missing is fine."""
        self._run(self._delete, relative)

    async def adelete(self, relative: str) -> None:
        await self._arun(self._delete, relative)

    def adopt(self, source: str, target: str, metadata: ObjectMetadata) -> bool:
        """Copy the offload object at ``source`` to ``target`` with ``metadata`` (2 requests);
        ``False``, writing nothing, if ``source`` is missing or not an offload object."""
        return self._run(self._adopt, source, target, metadata)

    async def aadopt(self, source: str, target: str, metadata: ObjectMetadata) -> bool:
        return await self._arun(self._adopt, source, target, metadata)

    def clear_prefix(self, relative_prefix: str) -> int:
        """Delete every object under a prefix: listing pages plus one batch delete per page."""
        return self._run(self._clear_prefix, relative_prefix)

    async def aclear_prefix(self, relative_prefix: str) -> int:
        return await self._arun(self._clear_prefix, relative_prefix)

    def iter_objects(self, relative_prefix: str = "") -> Iterator[ListedObject]:
        """Stream the objects under a prefix, paths relative to the base, a page in memory.

        The GC's index (under :data:`~objstore_backend.layout.RESERVED_PREFIX`) is no object of the store's.
        """
        pages = self.transport.list_pages(self.fs, self.full_path(relative_prefix))
        loop = self.fs.loop if self.transport.is_async else fsspec.asyn.get_loop()
        while True:
            try:
                page = fsspec.asyn.sync(loop, pages.__anext__)
            except StopAsyncIteration:
                return
            for entry in page:
                relative = self.relative(entry.path)
                if not is_reserved(relative):
                    yield ListedObject(relative, entry.size, entry.version, entry.metadata, entry.modified)


def _decompress(body: Body, path: str) -> Body:
    try:
        return decompress(body)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise CorruptObjectError(f"{path}: compressed body is damaged") from exc


@contextlib.contextmanager
def damage_named(where: str) -> Iterator[None]:
    """A stored body that is not UTF-8 JSON becomes a :class:`CorruptObjectError` naming ``where``."""
    try:
        yield
    except ValueError as exc:
        raise CorruptObjectError(f"{where}: the stored value is not a JSON document ({exc})") from exc


def json_text(body: Body, where: str) -> str:
    """A stored body as the JSON text it holds, verbatim: what ``get`` answers and ``objstore-backend get`` prints."""
    with damage_named(where):
        text = body.decode("utf-8")
        check_json_document(body)
    return text
