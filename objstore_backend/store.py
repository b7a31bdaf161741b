"""ObjectStore: one object per key, body and metadata together, on any fsspec filesystem.

Each protocol family has a small :class:`Transport` that issues the fewest requests its store
allows: one request per read (body and metadata together), write, delete; a clear is the
listing pages plus one batch delete per page. Transports are written once, as coroutines
taking the filesystem to use; :class:`ObjectStore` runs them either on fsspec's I/O loop
(sync calls) or on the caller's running loop with a filesystem bound to that loop (async
calls), so no logic exists twice.

Reads never go through s3fs/gcsfs listing caches: a store shared by many processes must see
what the others wrote (a cached listing answers "missing" for a key written since).
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import re
import uuid
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal
from urllib.parse import quote

import fsspec
import fsspec.asyn
import orjson
from fsspec.core import split_protocol

from objstore_backend.codec import decompress
from objstore_backend.errors import BucketNotFoundError, CorruptObjectError, StoreError
from objstore_backend.layout import LAYOUT_VERSION, MAX_BASE_KEY_BYTES

__all__ = ["ListedObject", "Mode", "ObjectMetadata", "ObjectStore", "StoredObject"]

logger = logging.getLogger(__name__)

Mode = Literal["primary", "offload"]

# Metadata names: lower case, no dash and no underscore, so S3 user metadata, boto3's
# head_object, s3fs and GCS custom metadata all spell them the same way.
META_LAYOUT = "objstorelayout"
META_MODE = "objstoremode"
META_EXPIRES = "objstoreexpires"
#: Set when the server side adopted an object the worker side wrote (both modes configured).
META_ADOPTED = "objstoreadopted"

#: Filesystems without per-object metadata (local disk, memory) keep it in a header line
#: before the body, in the same file, so body and metadata are still written at once.
ENVELOPE_MAGIC = b"\x00objstore-backend\n"

#: S3 DeleteObjects takes at most 1000 keys; GCS JSON batches at most 100 calls.
S3_DELETE_BATCH = 1000


@dataclass(frozen=True, slots=True)
class ObjectMetadata:
    """What the store records beside each body."""

    mode: Mode
    expires_at: datetime | None = None
    adopted: bool = False

    def to_strings(self) -> dict[str, str]:
        meta = {META_LAYOUT: str(LAYOUT_VERSION), META_MODE: self.mode}
        if self.expires_at is not None:
            meta[META_EXPIRES] = format_time(self.expires_at)
        if self.adopted:
            meta[META_ADOPTED] = "1"
        return meta

    @classmethod
    def from_strings(cls, meta: dict[str, str], path: str) -> ObjectMetadata:
        """Parse metadata read back; anything not written by this package is corrupt."""
        meta = {k.lower(): v for k, v in meta.items()}
        if meta.get(META_LAYOUT) != str(LAYOUT_VERSION) or meta.get(META_MODE) not in ("primary", "offload"):
            raise CorruptObjectError(f"{path}: not a state object of this package (metadata {meta!r})")
        expires = meta.get(META_EXPIRES)
        try:
            expires_at = parse_time(expires) if expires else None
        except ValueError as exc:
            raise CorruptObjectError(f"{path}: unreadable expiry {expires!r}") from exc
        return cls(meta[META_MODE], expires_at, meta.get(META_ADOPTED) == "1")  # type: ignore[arg-type]

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or datetime.now(timezone.utc))


@dataclass(frozen=True, slots=True)
class StoredObject:
    """A body (decompressed) and its metadata, read in one request."""

    body: bytes
    metadata: ObjectMetadata


@dataclass(frozen=True, slots=True)
class ListedObject:
    """One listing entry. ``metadata`` is ``None`` where the listing does not carry it (S3)."""

    path: str  # relative to the store's base path
    size: int
    version: str | None  # S3 ETag / GCS generation / local inode, for conditional deletes
    metadata: dict[str, str] | None
    modified: datetime | None = None


def format_time(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError(f"expires_at must be timezone-aware (UTC), got naive {moment!r}")
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"time without a zone: {text!r}")
    return moment


class Transport(ABC):
    """The requests of one protocol family. Paths are full fsspec paths without protocol."""

    #: The filesystem's methods are coroutines (s3fs, gcsfs): bind one instance per loop.
    is_async: bool = True

    @abstractmethod
    async def read(self, fs: Any, path: str) -> tuple[bytes, dict[str, str]] | None:
        """Body and metadata in one request, or ``None`` if there is no such object."""

    @abstractmethod
    async def write(self, fs: Any, path: str, body: bytes, metadata: dict[str, str]) -> None:
        """Body and metadata in one request; readers see the old or the new object, whole."""

    @abstractmethod
    async def delete(self, fs: Any, path: str) -> None:
        """Delete one object; no error if it is missing."""

    @abstractmethod
    async def head(self, fs: Any, path: str) -> dict[str, str] | None:
        """The metadata alone, or ``None`` if there is no such object."""

    @abstractmethod
    def list_pages(self, fs: Any, prefix: str) -> AsyncIterator[list[ListedObject]]:
        """The objects under ``prefix`` (which ends in ``/``), a page at a time, paths full."""

    @abstractmethod
    async def delete_batch(
        self, fs: Any, items: list[tuple[str, str | None]], *, batched: bool = True, concurrency: int = 16
    ) -> list[tuple[str, str]]:
        """Delete up to one page of ``(path, version)`` in as few requests as the store allows.

        With a version, the delete happens only if the object is still that version (a key
        rewritten since it was listed survives: reason :data:`CHANGED`). ``batched=False``
        sends one conditional request per object, ``concurrency`` at a time, for servers that
        ignore conditions inside batch requests. Returns ``(path, reason)`` for every object
        not deleted; :data:`GONE` when it was already missing.
        """


#: Reasons :meth:`Transport.delete_batch` gives for objects it did not delete that are no error.
CHANGED = "changed since listed"
GONE = "already gone"


async def _bounded(concurrency: int, calls: list[Any]) -> list[Any]:
    """Await the coroutines, at most ``concurrency`` at a time, results (or errors) in order."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(call: Any) -> Any:
        async with semaphore:
            return await call

    return await asyncio.gather(*(one(call) for call in calls), return_exceptions=True)


def _client_error_code(exc: BaseException) -> str | None:
    cause = exc.__cause__ or exc
    response = getattr(cause, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


class S3Transport(Transport):
    """S3 through s3fs's raw client calls: no HEAD, no listing cache."""

    @staticmethod
    def _split(fs: Any, path: str) -> tuple[str, str]:
        bucket, key, _ = fs.split_path(path)
        return bucket, key

    @staticmethod
    def _missing_bucket(exc: FileNotFoundError, bucket: str) -> FileNotFoundError:
        if _client_error_code(exc) == "NoSuchBucket":
            return BucketNotFoundError(f"bucket {bucket!r} does not exist")
        return exc

    async def read(self, fs: Any, path: str) -> tuple[bytes, dict[str, str]] | None:
        bucket, key = self._split(fs, path)
        try:
            response = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        except FileNotFoundError as exc:
            if _client_error_code(exc) == "NoSuchKey":
                return None
            raise self._missing_bucket(exc, bucket) from exc
        async with response["Body"] as stream:
            body = await stream.read()
        return body, response.get("Metadata", {})

    async def write(self, fs: Any, path: str, body: bytes, metadata: dict[str, str]) -> None:
        bucket, key = self._split(fs, path)
        try:
            await fs._call_s3(
                "put_object",
                Bucket=bucket,
                Key=key,
                Body=body,
                Metadata=metadata,
                ContentType="application/json",
            )
        except FileNotFoundError as exc:
            raise self._missing_bucket(exc, bucket) from exc

    async def head(self, fs: Any, path: str) -> dict[str, str] | None:
        bucket, key = self._split(fs, path)
        try:
            response = await fs._call_s3("head_object", Bucket=bucket, Key=key)
        except FileNotFoundError as exc:
            if _client_error_code(exc) in ("404", "NoSuchKey"):
                return None
            raise self._missing_bucket(exc, bucket) from exc
        return response.get("Metadata", {})

    async def delete(self, fs: Any, path: str) -> None:
        bucket, key = self._split(fs, path)
        try:
            await fs._call_s3("delete_object", Bucket=bucket, Key=key)
        except FileNotFoundError as exc:
            raise self._missing_bucket(exc, bucket) from exc

    async def list_pages(self, fs: Any, prefix: str) -> AsyncIterator[list[ListedObject]]:
        bucket, key_prefix = self._split(fs, prefix)
        token: dict[str, str] = {}
        while True:
            try:
                page = await fs._call_s3(
                    "list_objects_v2", Bucket=bucket, Prefix=key_prefix, MaxKeys=S3_DELETE_BATCH, **token
                )
            except FileNotFoundError as exc:
                raise self._missing_bucket(exc, bucket) from exc
            yield [
                ListedObject(f"{bucket}/{item['Key']}", item["Size"], item.get("ETag"), None, item["LastModified"])
                for item in page.get("Contents", [])
            ]
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}

    _REASONS = {"PreconditionFailed": CHANGED, "NoSuchKey": GONE}

    async def _delete_if_match(self, fs: Any, path: str, etag: str | None) -> None:
        bucket, key = self._split(fs, path)
        await fs._call_s3("delete_object", Bucket=bucket, Key=key, **({"IfMatch": etag} if etag else {}))

    async def delete_batch(
        self, fs: Any, items: list[tuple[str, str | None]], *, batched: bool = True, concurrency: int = 16
    ) -> list[tuple[str, str]]:
        if not items:
            return []
        if not batched:
            results = await _bounded(concurrency, [self._delete_if_match(fs, p, v) for p, v in items])
            return [
                (path, self._REASONS.get(_client_error_code(result) or "", repr(result)))
                for (path, _), result in zip(items, results, strict=True)
                if isinstance(result, Exception)
            ]
        bucket = self._split(fs, items[0][0])[0]
        objects = [{"Key": self._split(fs, p)[1], **({"ETag": v} if v else {})} for p, v in items]
        response = await fs._call_s3("delete_objects", Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
        return [
            (
                f"{bucket}/{err['Key']}",
                self._REASONS.get(err.get("Code"), f"{err.get('Code')}: {err.get('Message')}"),
            )
            for err in response.get("Errors", [])
        ]


class GCSTransport(Transport):
    """Google Cloud Storage through gcsfs's JSON API session: one request per read, write, delete.

    A media download carries the custom metadata as ``x-goog-meta-*`` headers, so a read is
    one request. Writes set ``customTime`` to the expiry in the same upload, so a bucket
    lifecycle rule ``daysSinceCustomTime: 0`` can delete expired keys by itself. Deletes of
    many objects go in JSON batch requests of at most 100 calls, each with ``ifGenerationMatch``.
    """

    BATCH_CALLS = 100
    _META_HEADER = "x-goog-meta-"
    _BOUNDARY = "objstore-backend-batch"

    async def read(self, fs: Any, path: str) -> tuple[bytes, dict[str, str]] | None:
        bucket, key, _ = fs.split_path(path)
        try:
            headers, body = await fs._call("GET", "b/{}/o/{}", bucket, key, alt="media")
        except FileNotFoundError:
            return None
        prefix = len(self._META_HEADER)
        return body, {k[prefix:].lower(): v for k, v in headers.items() if k.lower().startswith(self._META_HEADER)}

    async def head(self, fs: Any, path: str) -> dict[str, str] | None:
        bucket, key, _ = fs.split_path(path)
        try:
            info = await fs._call("GET", "b/{}/o/{}", bucket, key, json_out=True)
        except FileNotFoundError:
            return None
        return info.get("metadata", {})

    async def write(self, fs: Any, path: str, body: bytes, metadata: dict[str, str]) -> None:
        fixed: dict[str, Any] = {}
        if META_EXPIRES in metadata:  # lets a daysSinceCustomTime=0 lifecycle rule expire it
            fixed["custom_time"] = metadata[META_EXPIRES]
        try:
            await fs._pipe_file(
                path, body, content_type="application/json", metadata=metadata, fixed_key_metadata=fixed or None
            )
        except FileNotFoundError as exc:  # an upload only 404s when the bucket is missing
            raise BucketNotFoundError(f"bucket {fs.split_path(path)[0]!r} does not exist") from exc

    async def delete(self, fs: Any, path: str) -> None:
        bucket, key, _ = fs.split_path(path)
        try:
            await fs._call("DELETE", "b/{}/o/{}", bucket, key)
        except FileNotFoundError:
            pass

    async def list_pages(self, fs: Any, prefix: str) -> AsyncIterator[list[ListedObject]]:
        bucket, key_prefix, _ = fs.split_path(prefix)
        token: dict[str, str] = {}
        while True:
            try:
                page = await fs._call(
                    "GET", "b/{}/o", bucket, prefix=key_prefix, maxResults=1000, json_out=True, **token
                )
            except FileNotFoundError as exc:  # listing a missing bucket
                raise BucketNotFoundError(f"bucket {bucket!r} does not exist") from exc
            yield [
                ListedObject(
                    f"{bucket}/{item['name']}",
                    int(item["size"]),
                    item.get("generation"),
                    item.get("metadata", {}),
                    parse_time(item["updated"]) if "updated" in item else None,
                )
                for item in page.get("items", [])
            ]
            if "nextPageToken" not in page:
                return
            token = {"pageToken": page["nextPageToken"]}

    def batch_supported(self, fs: Any) -> bool:
        """Real GCS takes batch requests; emulators answer their items with errors."""
        return bool(fs.on_google)

    async def _delete_if_generation(self, fs: Any, path: str, generation: str | None) -> None:
        bucket, key, _ = fs.split_path(path)
        await fs._call("DELETE", "b/{}/o/{}", bucket, key, **({"ifGenerationMatch": generation} if generation else {}))

    async def _delete_one_batch(self, fs: Any, items: list[tuple[str, str | None]]) -> list[tuple[str, str]]:
        """One JSON batch request of up to 100 conditional deletes; failures by path."""
        parts = []
        for index, (path, generation) in enumerate(items):
            bucket, key, _ = fs.split_path(path)
            query = f"?ifGenerationMatch={generation}" if generation else ""
            parts.append(
                f"--{self._BOUNDARY}\r\nContent-Type: application/http\r\nContent-ID: <{index}>\r\n\r\n"
                f"DELETE /storage/v1/b/{quote(bucket, safe='')}/o/{quote(key, safe='')}{query} HTTP/1.1\r\n\r\n"
            )
        body = "".join(parts) + f"--{self._BOUNDARY}--\r\n"
        headers, content = await fs._call(
            "POST",
            fs.batch_url_base,
            headers={"Content-Type": f"multipart/mixed; boundary={self._BOUNDARY}"},
            data=body,
        )
        statuses = _batch_statuses(headers, content)
        failures = []
        for index, (path, _) in enumerate(items):
            status = statuses.get(index)
            if status in (200, 204):
                continue
            failures.append((path, {404: GONE, 412: CHANGED}.get(status or 0, f"batch item answered {status}")))
        return failures

    async def delete_batch(
        self, fs: Any, items: list[tuple[str, str | None]], *, batched: bool = True, concurrency: int = 16
    ) -> list[tuple[str, str]]:
        if batched and self.batch_supported(fs):
            chunks = [items[i : i + self.BATCH_CALLS] for i in range(0, len(items), self.BATCH_CALLS)]
            results = await _bounded(concurrency, [self._delete_one_batch(fs, chunk) for chunk in chunks])
            failures = []
            for chunk, result in zip(chunks, results, strict=True):
                failures += [(path, repr(result)) for path, _ in chunk] if isinstance(result, Exception) else result
            return failures
        results = await _bounded(concurrency, [self._delete_if_generation(fs, p, v) for p, v in items])
        reasons = {FileNotFoundError: GONE, FileExistsError: CHANGED}  # gcsfs: 404 and 412
        return [
            (path, reasons.get(type(result), repr(result)))
            for (path, _), result in zip(items, results, strict=True)
            if isinstance(result, Exception)
        ]


def _batch_statuses(headers: Any, content: bytes) -> dict[int, int]:
    """HTTP status of each item of a JSON batch response, by the Content-ID we gave it."""
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    boundary = content_type.split("boundary=", 1)[-1].strip('"')
    statuses = {}
    for part in content.decode("utf-8", "replace").split(f"--{boundary}"):
        ident = re.search(r"Content-ID:\s*<response-(\d+)>", part, re.IGNORECASE)
        status = re.search(r"HTTP/[0-9.]+ (\d{3})", part)
        if ident and status:
            statuses[int(ident.group(1))] = int(status.group(1))
    return statuses


class EnvelopeTransport(Transport):
    """Filesystems without object metadata (memory, and the base of the local one).

    The metadata is a JSON header line before the body in the same file. The filesystem
    is synchronous: its calls run in a worker thread so an async caller's loop stays free.
    """

    is_async = False
    HEADER_LIMIT = 4096

    @staticmethod
    def pack(body: bytes, metadata: dict[str, str]) -> bytes:
        return ENVELOPE_MAGIC + orjson.dumps(metadata) + b"\n" + body

    @staticmethod
    def unpack(data: bytes, path: str) -> tuple[bytes, dict[str, str]]:
        if not data.startswith(ENVELOPE_MAGIC):
            raise CorruptObjectError(f"{path}: not a state object of this package (no header)")
        header, sep, body = data[len(ENVELOPE_MAGIC) :].partition(b"\n")
        try:
            metadata = orjson.loads(header)
        except orjson.JSONDecodeError as exc:
            raise CorruptObjectError(f"{path}: unreadable metadata header") from exc
        if not sep or not isinstance(metadata, dict):
            raise CorruptObjectError(f"{path}: unreadable metadata header")
        return body, metadata

    def _read(self, fs: Any, path: str) -> tuple[bytes, dict[str, str]] | None:
        try:
            data = fs.cat_file(path)
        except (FileNotFoundError, IsADirectoryError):
            return None
        return self.unpack(data, path)

    def _head(self, fs: Any, path: str) -> dict[str, str] | None:
        try:
            start = fs.cat_file(path, start=0, end=self.HEADER_LIMIT)
        except (FileNotFoundError, IsADirectoryError):
            return None
        if b"\n" not in start[len(ENVELOPE_MAGIC) :]:
            start += b"\n"  # a header longer than the limit is unreadable: unpack says so
        return self.unpack(start, path)[1]

    def _write(self, fs: Any, path: str, data: bytes) -> None:
        fs.pipe_file(path, data)

    def _delete(self, fs: Any, path: str) -> None:
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass

    def _list(self, fs: Any, prefix: str) -> list[ListedObject]:
        try:
            found = fs.find(prefix, detail=True)
        except FileNotFoundError:
            return []
        return [ListedObject(p, int(info.get("size", 0)), None, None) for p, info in sorted(found.items())]

    async def read(self, fs: Any, path: str) -> tuple[bytes, dict[str, str]] | None:
        return await asyncio.to_thread(self._read, fs, path)

    async def head(self, fs: Any, path: str) -> dict[str, str] | None:
        return await asyncio.to_thread(self._head, fs, path)

    async def write(self, fs: Any, path: str, body: bytes, metadata: dict[str, str]) -> None:
        await asyncio.to_thread(self._write, fs, path, self.pack(body, metadata))

    async def delete(self, fs: Any, path: str) -> None:
        await asyncio.to_thread(self._delete, fs, path)

    async def list_pages(self, fs: Any, prefix: str) -> AsyncIterator[list[ListedObject]]:
        entries = await asyncio.to_thread(self._list, fs, prefix)
        for start in range(0, len(entries), S3_DELETE_BATCH):
            yield entries[start : start + S3_DELETE_BATCH]

    def _delete_if_unchanged(self, fs: Any, path: str, version: str | None) -> str | None:
        self._delete(fs, path)
        return None

    def _delete_items(self, fs: Any, items: list[tuple[str, str | None]]) -> list[tuple[str, str]]:
        failures = []
        for path, version in items:
            try:
                reason = self._delete_if_unchanged(fs, path, version)
            except OSError as exc:
                reason = repr(exc)
            if reason is not None:
                failures.append((path, reason))
        return failures

    async def delete_batch(
        self, fs: Any, items: list[tuple[str, str | None]], *, batched: bool = True, concurrency: int = 16
    ) -> list[tuple[str, str]]:
        return await asyncio.to_thread(self._delete_items, fs, items)


class LocalTransport(EnvelopeTransport):
    """The local disk: atomic writes (temp file + rename) and a streamed listing."""

    #: Temporary files start with "~", which no escaped segment does.
    TEMP_MARKER = "~tmp-"
    GRAVE_MARKER = "~gc-"

    def _write(self, fs: Any, path: str, data: bytes) -> None:
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        temp = os.path.join(directory, f"{self.TEMP_MARKER}{uuid.uuid4().hex}")
        try:
            with open(temp, "wb") as handle:
                handle.write(data)
            os.replace(temp, path)
        except BaseException:
            with _suppress_os_error():
                os.unlink(temp)
            raise

    def _delete(self, fs: Any, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def _list(self, fs: Any, prefix: str) -> list[ListedObject]:
        entries = []
        for directory, dirs, files in os.walk(prefix.rstrip("/") or "/"):
            dirs.sort()
            for name in sorted(files):
                if name.startswith("~"):
                    continue
                full = os.path.join(directory, name)
                with _suppress_os_error():
                    stat = os.stat(full)
                    modified = datetime.fromtimestamp(stat.st_mtime, timezone.utc)
                    entries.append(ListedObject(full, stat.st_size, self._version(stat), None, modified))
        return entries

    @staticmethod
    def _version(stat: os.stat_result) -> str:
        return f"{stat.st_ino}:{stat.st_mtime_ns}"  # every write is a new file (temp + rename)

    def _delete_if_unchanged(self, fs: Any, path: str, version: str | None) -> str | None:
        """Move the file aside atomically, then delete it only if it is the version checked."""
        if version is None:
            self._delete(fs, path)
            return None
        grave = os.path.join(os.path.dirname(path), f"{self.GRAVE_MARKER}{uuid.uuid4().hex}")
        try:
            os.rename(path, grave)
        except FileNotFoundError:
            return GONE
        if self._version(os.stat(grave)) == version:
            os.unlink(grave)
            return None
        with _suppress_os_error():  # rewritten since checked: put it back unless a newer one landed
            os.link(grave, path)
        os.unlink(grave)
        return CHANGED


class _suppress_os_error:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        return exc_type is not None and issubclass(exc_type, OSError)


_TRANSPORTS: dict[str, type[Transport]] = {
    "s3": S3Transport,
    "s3a": S3Transport,
    "gs": GCSTransport,
    "gcs": GCSTransport,
    "file": LocalTransport,
    "local": LocalTransport,
}

#: Options that make s3fs/gcsfs answer from the store, never from a process-local cache.
_NO_CACHE = {"skip_instance_cache": True, "use_listings_cache": False}


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
    ) -> None:
        protocol, _ = split_protocol(url)
        self.protocol = protocol or "file"
        self.storage_options = dict(storage_options or {})
        self.transport = _TRANSPORTS.get(self.protocol, EnvelopeTransport)()
        if filesystem is None:
            filesystem = self._make_filesystem(asynchronous=False)
        self.fs = filesystem
        self.root = self.fs._strip_protocol(url).rstrip("/")
        self._check_root_length()
        self._loop_fs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        if isinstance(self.transport, LocalTransport):  # state is private to the Airflow user
            os.makedirs(self.root, mode=0o700, exist_ok=True)

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

    def relative(self, full: str) -> str:
        return full[len(self.root) + 1 :]

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
            if isinstance(self.transport, S3Transport):  # botocore's pool of 10 would cap the GC's fan-out
                options["config_kwargs"] = {"max_pool_connections": 64, **options.get("config_kwargs", {})}
            if loop is not None:
                options["loop"] = loop
        elif self.protocol == "memory":
            options.setdefault("skip_instance_cache", True)
        return cls(**options)

    # -- running a transport coroutine, sync or on the caller's loop ---------------------

    def _run(self, method: Any, *args: Any) -> Any:
        loop = self.fs.loop if self.transport.is_async else fsspec.asyn.get_loop()
        return fsspec.asyn.sync(loop, method, self.fs, *args)

    async def _bound_fs(self) -> Any:
        """The filesystem instance bound to the running loop (async filesystems are per loop)."""
        if not self.transport.is_async:
            return self.fs
        loop = asyncio.get_running_loop()
        if loop is getattr(self.fs, "loop", None):
            return self.fs
        fs = self._loop_fs.get(loop)
        if fs is None:
            fs = self._loop_fs[loop] = self._make_filesystem(asynchronous=True, loop=loop)
        return fs

    async def _arun(self, method: Any, *args: Any) -> Any:
        return await method(await self._bound_fs(), *args)

    # -- operations, each written once as a coroutine ----------------------------------

    async def _read(self, fs: Any, relative: str) -> StoredObject | None:
        path = self.full_path(relative)
        found = await self.transport.read(fs, path)
        if found is None:
            return None
        body, metadata = found
        display = self.display_path(relative)
        return StoredObject(_decompress(body, display), ObjectMetadata.from_strings(metadata, display))

    async def _head(self, fs: Any, relative: str) -> ObjectMetadata | None:
        found = await self.transport.head(fs, self.full_path(relative))
        return None if found is None else ObjectMetadata.from_strings(found, self.display_path(relative))

    async def _write(self, fs: Any, relative: str, body: bytes, metadata: ObjectMetadata) -> None:
        await self.transport.write(fs, self.full_path(relative), body, metadata.to_strings())

    async def _delete(self, fs: Any, relative: str) -> None:
        await self.transport.delete(fs, self.full_path(relative))

    async def _restamp(self, fs: Any, relative: str, metadata: ObjectMetadata) -> bool:
        path = self.full_path(relative)
        found = await self.transport.read(fs, path)
        if found is None:
            return False
        await self.transport.write(fs, path, found[0], metadata.to_strings())
        return True

    async def _clear_prefix(self, fs: Any, relative_prefix: str) -> int:
        deleted = 0
        failures: list[tuple[str, str]] = []
        async for page in self.transport.list_pages(fs, self.full_path(relative_prefix)):
            items = [(entry.path, None) for entry in page]
            failures += [f for f in await self.transport.delete_batch(fs, items) if f[1] != GONE]
            deleted += len(items)
        if failures:
            shown = ", ".join(f"{self.relative(p)} ({why})" for p, why in failures[:5])
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

    def write(self, relative: str, body: bytes, metadata: ObjectMetadata) -> None:
        """Write body and metadata in one request."""
        self._run(self._write, relative, body, metadata)

    async def awrite(self, relative: str, body: bytes, metadata: ObjectMetadata) -> None:
        await self._arun(self._write, relative, body, metadata)

    def delete(self, relative: str) -> None:
        """Delete one object in one request; missing is fine."""
        self._run(self._delete, relative)

    async def adelete(self, relative: str) -> None:
        await self._arun(self._delete, relative)

    def restamp(self, relative: str, metadata: ObjectMetadata) -> bool:
        """Replace an object's metadata, keeping its body as stored; ``False`` if it is missing."""
        return self._run(self._restamp, relative, metadata)

    async def arestamp(self, relative: str, metadata: ObjectMetadata) -> bool:
        return await self._arun(self._restamp, relative, metadata)

    def clear_prefix(self, relative_prefix: str) -> int:
        """Delete every object under a prefix: listing pages plus one batch delete per page."""
        return self._run(self._clear_prefix, relative_prefix)

    async def aclear_prefix(self, relative_prefix: str) -> int:
        return await self._arun(self._clear_prefix, relative_prefix)

    def iter_objects(self, relative_prefix: str = "") -> Iterator[ListedObject]:
        """Stream the objects under a prefix, paths relative to the base, a page in memory."""
        pages = self.transport.list_pages(self.fs, self.full_path(relative_prefix))
        loop = self.fs.loop if self.transport.is_async else fsspec.asyn.get_loop()
        while True:
            try:
                page = fsspec.asyn.sync(loop, pages.__anext__)
            except StopAsyncIteration:
                return
            for entry in page:
                yield ListedObject(self.relative(entry.path), entry.size, entry.version, entry.metadata, entry.modified)


def _decompress(body: bytes, path: str) -> bytes:
    try:
        return decompress(body)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise CorruptObjectError(f"{path}: compressed body is damaged") from exc
