"""ObjectStore: one object per key, body and metadata together, on any fsspec filesystem.

Each protocol family has a small :class:`Transport` that issues the fewest requests its store
allows: one request per read (body and metadata together), write, delete; a clear is the
listing pages plus one batch delete per page. Transports are written once, as coroutines
taking the filesystem to use; :class:`ObjectStore` runs them either on fsspec's I/O loop
(sync calls) or on the caller's running loop with a filesystem bound to that loop (async
calls), so no logic exists twice.

Reads never go through s3fs/gcsfs listing caches: a store shared by many processes must see
what the others wrote (a cached listing answers "missing" for a key written since).

Failures are retried and translated in one place, :meth:`Transport.attempt`: one
:class:`RetryPolicy` per store (bounded exponential backoff with full jitter), applied to what
the client library does not already retry, so retries never multiply; what still fails raises a
:class:`~objstore_backend.errors.StoreError` naming the object and the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import os
import random
import re
import secrets
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Any, Literal, NoReturn, TypeVar
from urllib.parse import quote

import fsspec
import fsspec.asyn
import orjson
from fsspec.core import split_protocol

from objstore_backend.codec import check_json_document, decompress
from objstore_backend.errors import BucketNotFoundError, CorruptObjectError, StoreAccessDenied, StoreError
from objstore_backend.layout import LAYOUT_VERSION, MAX_BASE_KEY_BYTES, is_reserved

try:  # POSIX: writers and the GC's conditional delete on the local disk agree through flock
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

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

# Metadata names: lower case, no dash and no underscore, so S3 user metadata, boto3's
# head_object, s3fs and GCS custom metadata all spell them the same way.
META_LAYOUT = "objstorelayout"
META_MODE = "objstoremode"
META_EXPIRES = "objstoreexpires"
#: Set when the server side adopted an object the worker side wrote (both modes configured).
META_ADOPTED = "objstoreadopted"
#: S3 only: how many bytes of JSON whitespace follow the body (see :meth:`S3Transport.write`).
META_PAD = "objstorepad"
#: Local disk only: a nonce per write, the version the GC compares (see :meth:`LocalTransport._version`).
META_WRITE = "objstorewrite"
#: When the value was last set (by Airflow, or in the DB row it was imported from): which of
#: two copies of a key is newer. Absent on objects written before it existed.
META_UPDATED = "objstoreupdated"

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
    updated_at: datetime | None = None  # None: written by a version that did not record it

    def to_strings(self) -> dict[str, str]:
        meta = {META_LAYOUT: str(LAYOUT_VERSION), META_MODE: self.mode}
        if self.expires_at is not None:
            meta[META_EXPIRES] = format_time(self.expires_at)
        if self.adopted:
            meta[META_ADOPTED] = "1"
        if self.updated_at is not None:
            meta[META_UPDATED] = format_time(self.updated_at)
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
        )

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or datetime.now(timezone.utc))


#: An object's body as read: S3 reads fill a ``bytearray`` (one buffer, the pad cut off in place).
Body = bytes | bytearray


@dataclass(frozen=True, slots=True)
class StoredObject:
    """A body (decompressed) and its metadata, read in one request."""

    body: Body
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


_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often, and how patiently, a request that failed for a passing reason is tried again.

    ``attempts`` tries in all (the first included). Before try ``n + 1`` the policy sleeps a
    random time between 0 and ``min(max_delay, base_delay * 2 ** (n - 1))`` seconds
    (exponential backoff with full jitter, so many clients throttled together spread out).
    Defaults: 5 tries, waits capped at 0.2, 0.4, 0.8 and 1.6 s (at most 3 s in all, 1.5 s on
    average). Only errors that can pass are retried (throttling, 5xx, timeouts, dropped or
    truncated connections); refusals (access denied, a missing bucket) fail at once.

    Set it with the storage option ``"retry": {"attempts": 5, "base_delay": 0.2, "max_delay": 10}``
    (or ``"retry": N`` for N attempts); the option is read by the store, never passed to fsspec.
    """

    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"retry attempts must be a whole number >= 1, got {self.attempts!r}")
        for name in ("base_delay", "max_delay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"retry {name} must be a number of seconds >= 0, got {value!r}")

    @classmethod
    def from_option(cls, raw: Any) -> RetryPolicy:
        """From the ``retry`` storage option: ``None``, a number of attempts, or a mapping."""
        if raw is None:
            return cls()
        if isinstance(raw, RetryPolicy):
            return raw
        if isinstance(raw, int) and not isinstance(raw, bool):
            return cls(attempts=raw)
        if isinstance(raw, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(raw) - known)
            if unknown:
                raise ValueError(f"unknown retry settings {unknown}: use {sorted(known)}")
            return cls(**raw)
        raise ValueError(f"the retry storage option must be a number of attempts or an object, got {raw!r}")

    def backoff(self, failed: int) -> float:
        """Seconds to wait after the ``failed``-th failed try."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (failed - 1)))


#: The option the store reads out of ``storage_options`` for its :class:`RetryPolicy`.
RETRY_OPTION = "retry"

_MAX_CAUSE_CHARS = 500


def _service_error(exc: BaseException) -> tuple[str | None, int | None, str | None]:
    """(error code, HTTP status, message) the service answered, if ``exc`` carries an answer.

    Looks through the chain: s3fs turns botocore's ``ClientError`` into a built-in ``OSError``
    and keeps it as ``__cause__``; gcsfs raises an ``HttpError`` with ``code`` and ``message``.
    """
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 5:
        response = getattr(current, "response", None)
        if isinstance(response, dict) and "Error" in response:
            error = response.get("Error", {})
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return error.get("Code"), status, error.get("Message")
        code = getattr(current, "code", None)
        if type(current).__name__ == "HttpError" and isinstance(code, int):
            return None, code, getattr(current, "message", None)
        current = current.__cause__
        seen += 1
    return None, None, None


def describe_cause(exc: BaseException) -> str:
    """A one-line description of what went wrong: the service's code and message, or the error."""
    code, status, message = _service_error(exc)
    if code or status:
        if code and status and code != str(status):
            head = f"{code} (HTTP {status})"
        else:
            head = f"HTTP {status}" if status else str(code)
        text = f"{head}: {message}" if message else head
    else:
        text = _name_and_detail(exc)
        root = exc
        for _ in range(6):  # botocore names the request, the innermost error what happened
            inner = root.__cause__ or root.__context__
            if inner is None:
                break
            root = inner
        if type(root) is not type(exc) and not isinstance(root, asyncio.CancelledError):
            text += f" ({_name_and_detail(root)})"
    text = " ".join(text.split())
    return text if len(text) <= _MAX_CAUSE_CHARS else text[: _MAX_CAUSE_CHARS - 3] + "..."


def _name_and_detail(exc: BaseException) -> str:
    detail = str(exc) or ("no answer within the timeout" if isinstance(exc, TimeoutError) else "")
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _is_access_denied(exc: BaseException) -> bool:
    if isinstance(exc, PermissionError):
        return True
    _, status, _ = _service_error(exc)
    return status in (401, 403) or str(exc).startswith("Forbidden")  # gcsfs: OSError("Forbidden: ...")


def translate_error(exc: Exception, action: str, where: str, attempts: int) -> Exception:
    """The error to raise for ``exc``, which ended ``action`` on ``where`` after ``attempts`` tries.

    Our own errors pass unchanged; callers' mistakes (``ValueError``, ``TypeError``) too. The
    rest become a :class:`StoreError` (a :class:`StoreAccessDenied` when the store refused the
    credentials), naming the object and the cause. ``where`` never holds credentials.
    """
    if isinstance(exc, (StoreError, ValueError, TypeError)):
        return exc
    after = f" after {attempts} attempts" if attempts > 1 else ""
    cause = describe_cause(exc)
    if _is_access_denied(exc):
        return StoreAccessDenied(f"{action} {where}: access denied{after}: {cause}")
    if isinstance(exc, (FileNotFoundError, FileExistsError)):  # "missing" / "changed": callers decide
        return exc
    return StoreError(f"{action} {where} failed{after}: {cause}")


def _display_as_is(path: str) -> str:
    return path


class Transport(ABC):
    """The requests of one protocol family. Paths are full fsspec paths without protocol."""

    #: The filesystem's methods are coroutines (s3fs, gcsfs): bind one instance per loop.
    is_async: bool = True

    def __init__(self, retry: RetryPolicy | None = None, display: Callable[[str], str] | None = None) -> None:
        self.retry = retry or RetryPolicy()
        #: full path -> what messages show (protocol, bucket, key; never credentials)
        self.display = display or _display_as_is

    def retriable(self, exc: BaseException) -> bool:
        """Whether a failure can pass, and is not retried by the client library already."""
        return False

    def client_attempts(self, exc: BaseException) -> int:
        """How many times the client library itself sent the request that failed with ``exc``."""
        return 1

    async def attempt(self, action: str, path: str, call: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``call`` under the retry policy; raise the translated error if it still fails.

        ``action`` and ``path`` name the operation in messages ("writing s3://b/p/k failed
        after 5 attempts: SlowDown (HTTP 503): Please reduce your request rate.").
        """
        tries = 0
        while True:
            tries += 1
            try:
                return await call()
            except Exception as exc:
                if tries < self.retry.attempts and not isinstance(exc, StoreError) and self.retriable(exc):
                    delay = self.retry.backoff(tries)
                    logger.debug(
                        "%s %s: try %d of %d failed (%s); again in %.3f s",
                        action,
                        self.display(path),
                        tries,
                        self.retry.attempts,
                        describe_cause(exc),
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                translated = translate_error(exc, action, self.display(path), tries - 1 + self.client_attempts(exc))
                if translated is exc:
                    raise
                raise translated from exc

    @abstractmethod
    async def read(self, fs: Any, path: str) -> tuple[Body, dict[str, str]] | None:
        """Body and metadata in one request, or ``None`` if there is no such object."""

    @abstractmethod
    async def write(
        self, fs: Any, path: str, body: Body, metadata: dict[str, str], *, create_only: bool = False
    ) -> None:
        """Body and metadata in one request; readers see the old or the new object, whole.

        ``create_only``: write only if there is no object at ``path`` yet, in the same request
        (S3 ``If-None-Match: *``, GCS ``ifGenerationMatch=0``); else raise ``FileExistsError``.
        """

    @abstractmethod
    async def delete(self, fs: Any, path: str) -> None:
        """Delete one object; no error if it is missing."""

    @abstractmethod
    async def head(self, fs: Any, path: str) -> dict[str, str] | None:
        """The metadata alone, or ``None`` if there is no such object."""

    @abstractmethod
    def list_pages(
        self, fs: Any, prefix: str, start_after: str | None = None, end_at: str | None = None
    ) -> AsyncIterator[list[ListedObject]]:
        """The objects under ``prefix`` (which ends in ``/``), a page at a time, paths full, in key order.

        With ``start_after`` / ``end_at`` (full paths), only those with ``start_after < path <= end_at``:
        one slice of the key space (the GC's shards and listers, see :mod:`objstore_backend.partition`).
        """

    @abstractmethod
    async def list_prefixes(self, fs: Any, prefix: str, *, max_pages: int = 2) -> tuple[list[str], int]:
        """The "directories" right under ``prefix`` (full paths ending in ``/``), at most ``max_pages``
        pages of them, and the listing requests that took (the GC's split-point discovery)."""

    @abstractmethod
    async def delete_batch(
        self, fs: Any, items: Sequence[tuple[str, str | None]], *, batched: bool = True, concurrency: int = 16
    ) -> list[tuple[str, str]]:
        """Delete up to one page of ``(path, version)`` in as few requests as the store allows.

        With a version, the delete happens only if the object is still that version (a key
        rewritten since it was listed survives: reason :data:`CHANGED`). ``batched=False``
        sends one conditional request per object, ``concurrency`` at a time, for servers that
        ignore conditions inside batch requests. Returns ``(path, reason)`` for every object
        not deleted; :data:`GONE` when it was already missing.
        """

    async def close(self, fs: Any) -> None:
        """Close the connections of ``fs``, an instance bound to an event loop that is ending.

        Only async filesystems are bound to a loop; the others have nothing to close.
        """
        return None

    async def remove_abandoned(self, fs: Any, prefix: str, before: datetime, *, dry_run: bool) -> int:
        """Remove what writers killed mid-write left under ``prefix`` before ``before``: how many.

        Object stores keep nothing of a write that did not finish; the local disk overrides this.
        """
        return 0


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


#: S3 error codes that can pass (throttling, server trouble): retried. Statuses likewise.
_S3_RETRY_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequests",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
        "XAmzContentSHA256Mismatch",
    }
)
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_JSON_WHITESPACE = b" \t\n\r"


def _s3_network_errors() -> tuple[type[BaseException], ...]:
    """Dropped, stalled or truncated exchanges, as botocore, aiohttp and the stdlib raise them."""
    import http.client

    import aiohttp
    import botocore.exceptions as bce  # type: ignore[import-untyped]
    from botocore.parsers import ResponseParserError  # type: ignore[import-untyped]

    return (
        TimeoutError,
        asyncio.TimeoutError,
        ConnectionError,
        http.client.IncompleteRead,
        bce.HTTPClientError,  # read/connect timeouts, connection closed, proxy errors
        bce.ConnectionError,  # endpoint connection errors (a reset looks like one)
        ResponseParserError,  # a throttling answer with a broken body
        bce.IncompleteReadError,
        aiohttp.ClientPayloadError,  # the body ended before its Content-Length
        aiohttp.ClientConnectionError,
    )


async def _read_body(stream: Any, length: int | None) -> bytearray:
    """A whole S3 body in one buffer of its announced length.

    aiohttp's ``read()`` gathers the chunks and joins them, holding the body twice at the end;
    filling a buffer of the announced size holds it once, and lets the pad be cut off in place.
    """
    if length is None:
        return bytearray(await stream.read())
    body = bytearray(length)
    filled = 0
    with memoryview(body) as view:
        while filled < length:
            got = await stream.readinto(view[filled:])  # at the end of the stream, checks the length
            if not got:
                break
            filled += got
    if filled < length:
        import botocore.exceptions as bce

        raise bce.IncompleteReadError(actual_bytes=filled, expected_bytes=length)
    return body


class S3Transport(Transport):
    """S3 through s3fs's raw client calls: no HEAD, no listing cache.

    Retries are this transport's alone: the store turns botocore's off (``total_max_attempts``
    1), requests bypass s3fs's retry loop (:meth:`_call`), and :meth:`attempt` retries
    throttling (503 SlowDown, 429), 5xx, timeouts, dropped connections and truncated bodies,
    the body read included (which neither botocore nor s3fs's ``_call_s3`` covers).
    """

    _network_errors: tuple[type[BaseException], ...] | None = None

    @staticmethod
    async def _call(fs: Any, operation: str, **kwargs: Any) -> Any:
        """One request with s3fs's client and per-request settings (``s3_additional_kwargs``,
        requester pays), its error translation, and none of its retry loop (``_call_s3``'s)."""
        from botocore.exceptions import ClientError
        from s3fs.errors import translate_boto_error

        await fs.set_session()
        method = getattr(await fs.get_s3(kwargs.get("Bucket")), operation)
        try:
            return await method(**fs._get_s3_method_kwargs(method, **kwargs))
        except ClientError as exc:
            raise translate_boto_error(exc) from exc

    async def close(self, fs: Any) -> None:
        creator = getattr(fs, "_s3creator", None)  # s3fs closes it only for sync instances, at exit
        if creator is not None:
            await creator.__aexit__(None, None, None)

    def retriable(self, exc: BaseException) -> bool:
        code, status, _ = _service_error(exc)
        if code is not None or status is not None:
            return code in _S3_RETRY_CODES or status in _RETRY_STATUSES
        if S3Transport._network_errors is None:
            S3Transport._network_errors = _s3_network_errors()
        return isinstance(exc, S3Transport._network_errors)

    @staticmethod
    def _split(fs: Any, path: str) -> tuple[str, str]:
        bucket, key, _ = fs.split_path(path)
        return bucket, key

    @staticmethod
    def _reraise(exc: OSError, bucket: str) -> NoReturn:
        """Raise ``exc`` again (its cause, the S3 error, kept), or :class:`BucketNotFoundError`."""
        if _client_error_code(exc) == "NoSuchBucket":
            raise BucketNotFoundError(f"bucket {bucket!r} does not exist") from exc
        raise exc

    async def read(self, fs: Any, path: str) -> tuple[Body, dict[str, str]] | None:
        bucket, key = self._split(fs, path)

        async def get_and_read_body() -> tuple[bytearray, dict[str, str]] | None:
            try:
                response = await self._call(fs, "get_object", Bucket=bucket, Key=key)
            except FileNotFoundError as exc:
                if _client_error_code(exc) == "NoSuchKey":
                    return None
                self._reraise(exc, bucket)
            async with response["Body"] as stream:
                body = await _read_body(stream, response.get("ContentLength"))
            return body, response.get("Metadata", {})

        found = await self.attempt("reading", path, get_and_read_body)
        return None if found is None else self._unpad(*found, path)

    def _unpad(self, body: bytearray, metadata: dict[str, str], path: str) -> tuple[bytearray, dict[str, str]]:
        """Cut the write's pad (see :meth:`_with_nonce`) off the body, in place."""
        pad = metadata.get(META_PAD)
        if pad is None:
            return body, metadata
        size = int(pad) if pad.isdigit() else -1
        if not 0 <= size <= len(body) or body[len(body) - size :].strip(_JSON_WHITESPACE):
            raise CorruptObjectError(f"{self.display(path)}: its {META_PAD} metadata does not match the body")
        del body[len(body) - size :]
        return body, metadata

    @staticmethod
    def _with_nonce(body: Body, metadata: dict[str, str]) -> tuple[Body, dict[str, str]]:
        """Make this write's bytes, hence its ETag, unlike any earlier write's.

        The ETag of a plain PUT is the MD5 of the body, and the GC deletes with ``If-Match``
        on the ETag it checked: a key rewritten with the same value and a fresh expiry
        between the check and the delete would keep its ETag and be deleted though live.
        A gzip body gets an empty gzip member with a random timestamp (readers see the same
        bytes: gzip decompresses members one after another); a JSON body gets 16 bytes of
        random JSON whitespace, counted in the ``objstorepad`` metadata and stripped on read.
        """
        if body[:2] == b"\x1f\x8b":
            return body + gzip.compress(b"", mtime=secrets.randbits(32)), metadata
        pad = bytes(secrets.choice(_JSON_WHITESPACE) for _ in range(16))
        return body + pad, {**metadata, META_PAD: str(len(pad))}

    async def write(
        self, fs: Any, path: str, body: Body, metadata: dict[str, str], *, create_only: bool = False
    ) -> None:
        bucket, key = self._split(fs, path)
        body, metadata = self._with_nonce(body, metadata)
        condition = {"IfNoneMatch": "*"} if create_only else {}

        async def put() -> None:
            try:
                await self._call(
                    fs,
                    "put_object",
                    Bucket=bucket,
                    Key=key,
                    Body=body,
                    Metadata=metadata,
                    ContentType="application/json",
                    **condition,
                )
            except FileNotFoundError as exc:
                self._reraise(exc, bucket)
            except OSError as exc:
                if create_only and _client_error_code(exc) == "PreconditionFailed":
                    raise FileExistsError(f"{self.display(path)} exists") from exc
                raise

        await self.attempt("writing", path, put)

    async def head(self, fs: Any, path: str) -> dict[str, str] | None:
        bucket, key = self._split(fs, path)

        async def head_object() -> Any:
            try:
                response = await self._call(fs, "head_object", Bucket=bucket, Key=key)
            except FileNotFoundError as exc:
                if _client_error_code(exc) in ("404", "NoSuchKey"):
                    return None
                self._reraise(exc, bucket)
            return response.get("Metadata", {})

        return await self.attempt("reading the metadata of", path, head_object)

    async def bucket_setting(self, fs: Any, bucket: str, operation: str) -> Any:
        """One of the bucket's settings (``operation``: ``get_bucket_lifecycle_configuration``...),
        or ``None`` when it is not set; under the retry policy like every other request."""

        async def read_setting() -> Any:
            try:
                return await self._call(fs, operation, Bucket=bucket)
            except OSError as exc:
                code = _client_error_code(exc) or ""
                if code != "NoSuchBucket" and (code.startswith("NoSuch") or "NotFound" in code):
                    return None  # NoSuchLifecycleConfiguration...: not set
                self._reraise(exc, bucket)

        return await self.attempt(f"{operation} of", bucket, read_setting)

    async def delete(self, fs: Any, path: str) -> None:
        bucket, key = self._split(fs, path)

        async def delete_object() -> None:
            try:
                await self._call(fs, "delete_object", Bucket=bucket, Key=key)
            except FileNotFoundError as exc:
                self._reraise(exc, bucket)

        await self.attempt("deleting", path, delete_object)

    async def _list_call(self, fs: Any, prefix: str, **params: Any) -> Any:
        bucket, key_prefix = self._split(fs, prefix)

        async def list_page() -> Any:
            try:
                return await self._call(
                    fs, "list_objects_v2", Bucket=bucket, Prefix=key_prefix, MaxKeys=S3_DELETE_BATCH, **params
                )
            except FileNotFoundError as exc:
                self._reraise(exc, bucket)

        return await self.attempt("listing", prefix, list_page)

    async def list_pages(
        self, fs: Any, prefix: str, start_after: str | None = None, end_at: str | None = None
    ) -> AsyncIterator[list[ListedObject]]:
        bucket = self._split(fs, prefix)[0]
        # StartAfter starts the listing at the slice; the slice ends where the next one starts.
        params = {"StartAfter": self._split(fs, start_after)[1]} if start_after else {}
        last = None if end_at is None else self._split(fs, end_at)[1]
        while True:
            page = await self._list_call(fs, prefix, **params)
            items = page.get("Contents", [])
            past_end = last is not None and bool(items) and items[-1]["Key"] > last
            yield [
                ListedObject(f"{bucket}/{item['Key']}", item["Size"], item.get("ETag"), None, item["LastModified"])
                for item in items
                if last is None or item["Key"] <= last
            ]
            if past_end or not page.get("IsTruncated"):
                return
            params = {"ContinuationToken": page["NextContinuationToken"]}

    async def list_prefixes(self, fs: Any, prefix: str, *, max_pages: int = 2) -> tuple[list[str], int]:
        bucket = self._split(fs, prefix)[0]
        found: list[str] = []
        params: dict[str, str] = {}
        requests = 0
        while requests < max_pages:
            requests += 1
            page = await self._list_call(fs, prefix, Delimiter="/", **params)
            found += [f"{bucket}/{item['Prefix']}" for item in page.get("CommonPrefixes", [])]
            if not page.get("IsTruncated"):
                break
            params = {"ContinuationToken": page["NextContinuationToken"]}
        return found, requests

    _REASONS = {"PreconditionFailed": CHANGED, "NoSuchKey": GONE}

    async def _delete_if_match(self, fs: Any, path: str, etag: str | None) -> None:
        bucket, key = self._split(fs, path)
        condition = {"IfMatch": etag} if etag else {}

        async def delete_object() -> None:
            await self._call(fs, "delete_object", Bucket=bucket, Key=key, **condition)

        await self.attempt("deleting", path, delete_object)

    async def delete_batch(
        self, fs: Any, items: Sequence[tuple[str, str | None]], *, batched: bool = True, concurrency: int = 16
    ) -> list[tuple[str, str]]:
        if not items:
            return []
        if not batched:
            results = await _bounded(concurrency, [self._delete_if_match(fs, p, v) for p, v in items])
            return [
                (path, self._REASONS.get(_service_error(result)[0] or "", str(result)))
                for (path, _), result in zip(items, results, strict=True)
                if isinstance(result, Exception)
            ]
        bucket = self._split(fs, items[0][0])[0]
        objects = [{"Key": self._split(fs, p)[1], **({"ETag": v} if v else {})} for p, v in items]

        async def delete_objects() -> Any:
            return await self._call(fs, "delete_objects", Bucket=bucket, Delete={"Objects": objects, "Quiet": True})

        try:
            response = await self.attempt(f"deleting {len(items)} objects in", bucket, delete_objects)
        except StoreError as exc:  # the request failed as a whole: every key is reported, none dropped
            return [(path, str(exc)) for path, _ in items]
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

    def retriable(self, exc: BaseException) -> bool:
        """gcsfs retries 429, 5xx, dropped and truncated connections itself (6 tries, jittered
        exponential backoff); a timeout (``requests_timeout``) it gives up on at once: retry that."""
        import aiohttp

        return isinstance(exc, (TimeoutError, asyncio.TimeoutError)) and not isinstance(exc, aiohttp.ClientError)

    async def close(self, fs: Any) -> None:
        session = getattr(fs, "_session", None)
        if session is not None and not session.closed:
            await session.close()

    def client_attempts(self, exc: BaseException) -> int:
        import gcsfs
        from gcsfs.retry import is_retriable

        return int(gcsfs.GCSFileSystem.retries) if is_retriable(exc) else 1

    async def read(self, fs: Any, path: str) -> tuple[Body, dict[str, str]] | None:
        bucket, key, _ = fs.split_path(path)

        async def download() -> Any:
            try:
                return await fs._call("GET", "b/{}/o/{}", bucket, key, alt="media")
            except FileNotFoundError:
                return None

        found = await self.attempt("reading", path, download)
        if found is None:
            return None
        headers, body = found
        prefix = len(self._META_HEADER)
        return body, {k[prefix:].lower(): v for k, v in headers.items() if k.lower().startswith(self._META_HEADER)}

    async def head(self, fs: Any, path: str) -> dict[str, str] | None:
        bucket, key, _ = fs.split_path(path)

        async def get_resource() -> Any:
            try:
                info = await fs._call("GET", "b/{}/o/{}", bucket, key, json_out=True)
            except FileNotFoundError:
                return None
            return info.get("metadata", {})

        return await self.attempt("reading the metadata of", path, get_resource)

    async def write(
        self, fs: Any, path: str, body: Body, metadata: dict[str, str], *, create_only: bool = False
    ) -> None:
        fixed: dict[str, Any] = {}
        if META_EXPIRES in metadata:  # lets a daysSinceCustomTime=0 lifecycle rule expire it
            fixed["custom_time"] = metadata[META_EXPIRES]

        async def upload() -> None:
            try:
                await fs._pipe_file(
                    path,
                    body,
                    content_type="application/json",
                    metadata=metadata,
                    fixed_key_metadata=fixed or None,
                    mode="create" if create_only else "overwrite",  # create: ifGenerationMatch=0, 412 -> exists
                )
            except FileNotFoundError as exc:  # an upload only 404s when the bucket is missing
                raise BucketNotFoundError(f"bucket {fs.split_path(path)[0]!r} does not exist") from exc

        await self.attempt("writing", path, upload)

    async def delete(self, fs: Any, path: str) -> None:
        bucket, key, _ = fs.split_path(path)

        async def delete_object() -> None:
            try:
                await fs._call("DELETE", "b/{}/o/{}", bucket, key)
            except FileNotFoundError:
                pass

        await self.attempt("deleting", path, delete_object)

    async def _list_call(self, fs: Any, prefix: str, **params: Any) -> Any:
        bucket, key_prefix, _ = fs.split_path(prefix)

        async def list_page() -> Any:
            try:
                return await fs._call(
                    "GET", "b/{}/o", bucket, prefix=key_prefix, maxResults=1000, json_out=True, **params
                )
            except FileNotFoundError as exc:  # listing a missing bucket
                raise BucketNotFoundError(f"bucket {bucket!r} does not exist") from exc

        return await self.attempt("listing", prefix, list_page)

    async def list_pages(
        self, fs: Any, prefix: str, start_after: str | None = None, end_at: str | None = None
    ) -> AsyncIterator[list[ListedObject]]:
        bucket = fs.split_path(prefix)[0]
        first = None if start_after is None else fs.split_path(start_after)[1]
        last = None if end_at is None else fs.split_path(end_at)[1]
        # startOffset is inclusive (the key equal to it belongs to the slice before); endOffset is
        # exclusive while a slice's end is inclusive: the listing stops at the first key past it.
        params = {"startOffset": first} if first else {}
        while True:
            page = await self._list_call(fs, prefix, **params)
            items = page.get("items", [])
            past_end = last is not None and bool(items) and items[-1]["name"] > last
            yield [
                ListedObject(
                    f"{bucket}/{item['name']}",
                    int(item["size"]),
                    item.get("generation"),
                    item.get("metadata", {}),
                    parse_time(item["updated"]) if "updated" in item else None,
                )
                for item in items
                if (first is None or item["name"] > first) and (last is None or item["name"] <= last)
            ]
            if past_end or "nextPageToken" not in page:
                return
            params = {**params, "pageToken": page["nextPageToken"]}

    async def list_prefixes(self, fs: Any, prefix: str, *, max_pages: int = 2) -> tuple[list[str], int]:
        bucket = fs.split_path(prefix)[0]
        found: list[str] = []
        params: dict[str, str] = {}
        requests = 0
        while requests < max_pages:
            requests += 1
            page = await self._list_call(fs, prefix, delimiter="/", **params)
            found += [f"{bucket}/{name}" for name in page.get("prefixes", [])]
            if "nextPageToken" not in page:
                break
            params = {"pageToken": page["nextPageToken"]}
        return found, requests

    def batch_supported(self, fs: Any) -> bool:
        """Real GCS takes batch requests; emulators answer their items with errors."""
        return bool(fs.on_google)

    async def _delete_if_generation(self, fs: Any, path: str, generation: str | None) -> None:
        bucket, key, _ = fs.split_path(path)
        condition = {"ifGenerationMatch": generation} if generation else {}

        async def delete_object() -> None:
            await fs._call("DELETE", "b/{}/o/{}", bucket, key, **condition)

        await self.attempt("deleting", path, delete_object)

    async def _delete_one_batch(self, fs: Any, items: Sequence[tuple[str, str | None]]) -> list[tuple[str, str]]:
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

        async def post_batch() -> Any:
            return await fs._call(
                "POST",
                fs.batch_url_base,
                headers={"Content-Type": f"multipart/mixed; boundary={self._BOUNDARY}"},
                data=body,
            )

        headers, content = await self.attempt(
            f"deleting {len(items)} objects in", items[0][0].split("/")[0], post_batch
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
        self, fs: Any, items: Sequence[tuple[str, str | None]], *, batched: bool = True, concurrency: int = 16
    ) -> list[tuple[str, str]]:
        if batched and self.batch_supported(fs):
            chunks = [items[i : i + self.BATCH_CALLS] for i in range(0, len(items), self.BATCH_CALLS)]
            results = await _bounded(concurrency, [self._delete_one_batch(fs, chunk) for chunk in chunks])
            failures: list[tuple[str, str]] = []
            for chunk, result in zip(chunks, results, strict=True):
                failures += [(path, str(result)) for path, _ in chunk] if isinstance(result, Exception) else result
            return failures
        results = await _bounded(concurrency, [self._delete_if_generation(fs, p, v) for p, v in items])
        reasons: dict[type[BaseException], str] = {FileNotFoundError: GONE, FileExistsError: CHANGED}  # 404, 412
        return [
            (path, reasons.get(type(result), str(result)))
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
    def pack(body: Body, metadata: dict[str, str]) -> bytes:
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

    def _read(self, fs: Any, path: str) -> tuple[Body, dict[str, str]] | None:
        try:
            data = fs.cat_file(path)
        except (FileNotFoundError, IsADirectoryError):
            return None
        return self.unpack(data, self.display(path))

    def _head(self, fs: Any, path: str) -> dict[str, str] | None:
        try:
            start = fs.cat_file(path, start=0, end=self.HEADER_LIMIT)
        except (FileNotFoundError, IsADirectoryError):
            return None
        if b"\n" not in start[len(ENVELOPE_MAGIC) :]:
            start += b"\n"  # a header longer than the limit is unreadable: unpack says so
        return self.unpack(start, self.display(path))[1]

    def _write(self, fs: Any, path: str, data: bytes, create_only: bool = False) -> None:
        if create_only and fs.exists(path):  # memory filesystem: one process, no race to guard
            raise FileExistsError(f"{self.display(path)} exists")
        fs.pipe_file(path, data)

    def _delete(self, fs: Any, path: str) -> None:
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass

    def _list(self, fs: Any, prefix: str, start_after: str | None, end_at: str | None) -> list[ListedObject]:
        try:
            found = fs.find(prefix, detail=True)
        except FileNotFoundError:
            return []
        return [
            ListedObject(p, int(info.get("size", 0)), None, None)
            for p, info in sorted(found.items())
            if _in_slice(p, start_after, end_at)
        ]

    def _list_prefixes(self, fs: Any, prefix: str) -> list[str]:
        try:
            found = fs.ls(prefix, detail=True)
        except FileNotFoundError:
            return []
        return sorted(info["name"].rstrip("/") + "/" for info in found if info.get("type") == "directory")

    # The filesystem is local (disk or memory): nothing to retry, but errors are translated alike.

    async def read(self, fs: Any, path: str) -> tuple[Body, dict[str, str]] | None:
        return await self.attempt("reading", path, lambda: asyncio.to_thread(self._read, fs, path))

    async def head(self, fs: Any, path: str) -> dict[str, str] | None:
        return await self.attempt("reading the metadata of", path, lambda: asyncio.to_thread(self._head, fs, path))

    async def write(
        self, fs: Any, path: str, body: Body, metadata: dict[str, str], *, create_only: bool = False
    ) -> None:
        data = self.pack(body, metadata)
        await self.attempt("writing", path, lambda: asyncio.to_thread(self._write, fs, path, data, create_only))

    async def delete(self, fs: Any, path: str) -> None:
        await self.attempt("deleting", path, lambda: asyncio.to_thread(self._delete, fs, path))

    async def list_pages(
        self, fs: Any, prefix: str, start_after: str | None = None, end_at: str | None = None
    ) -> AsyncIterator[list[ListedObject]]:
        entries = await self.attempt(
            "listing", prefix, lambda: asyncio.to_thread(self._list, fs, prefix, start_after, end_at)
        )
        for start in range(0, len(entries), S3_DELETE_BATCH):
            yield entries[start : start + S3_DELETE_BATCH]

    async def list_prefixes(self, fs: Any, prefix: str, *, max_pages: int = 2) -> tuple[list[str], int]:
        found = await self.attempt("listing", prefix, lambda: asyncio.to_thread(self._list_prefixes, fs, prefix))
        return found, 1

    def _delete_if_unchanged(self, fs: Any, path: str, version: str | None) -> str | None:
        self._delete(fs, path)
        return None

    def _delete_items(self, fs: Any, items: Sequence[tuple[str, str | None]]) -> list[tuple[str, str]]:
        failures = []
        for path, version in items:
            try:
                reason = self._delete_if_unchanged(fs, path, version)
            except OSError as exc:
                reason = str(translate_error(exc, "deleting", self.display(path), 1))
            if reason is not None:
                failures.append((path, reason))
        return failures

    async def delete_batch(
        self, fs: Any, items: Sequence[tuple[str, str | None]], *, batched: bool = True, concurrency: int = 16
    ) -> list[tuple[str, str]]:
        return await asyncio.to_thread(self._delete_items, fs, items)


class LocalTransport(EnvelopeTransport):
    """The local disk: atomic writes (temp file + rename) and a streamed listing.

    A writer that dies mid-``set`` leaves at most a ``~tmp-`` file beside the key, which every
    read and listing ignores; the key itself is the old value or the new one, whole. Writers
    hold a shared ``flock`` on the key's directory while they rename, the GC's conditional
    delete an exclusive one while it compares and unlinks: a key rewritten since the GC checked
    it is never deleted, and readers never see a live key vanish for a moment.
    """

    #: Temporary files start with "~", which no escaped segment does.
    TEMP_MARKER = "~tmp-"
    GRAVE_MARKER = "~gc-"
    #: How often a writer makes its directory again when a delete removed it, empty, meanwhile.
    MKDIR_ATTEMPTS = 20

    def __init__(self, retry: RetryPolicy | None = None, display: Callable[[str], str] | None = None) -> None:
        super().__init__(retry, display)
        #: The store's base directory: deletes remove the directories they empty, up to here.
        self.root = ""

    def _create_temp(self, directory: str) -> tuple[str, Any]:
        """A new temp file in ``directory`` (made if missing), open for writing.

        A delete removes a directory it leaves empty (:meth:`_prune`), which can happen between
        this writer's ``makedirs`` and its ``open``: the writer then makes the directory again.
        Once the temp file exists the directory is not empty, and no ``rmdir`` can remove it.
        """
        temp = os.path.join(directory, f"{self.TEMP_MARKER}{uuid.uuid4().hex}")
        for attempt in range(1, self.MKDIR_ATTEMPTS + 1):
            try:
                os.makedirs(directory, exist_ok=True)
                return temp, open(temp, "wb")  # noqa: SIM115 - closed by the caller
            except (FileNotFoundError, FileExistsError):  # makedirs: made by another, then removed
                if attempt == self.MKDIR_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _write(self, fs: Any, path: str, data: bytes, create_only: bool = False) -> None:
        directory = os.path.dirname(path)
        temp, handle = self._create_temp(directory)
        try:
            with handle:
                handle.write(data)
            with _directory_lock(directory, exclusive=False):
                if create_only:
                    os.link(temp, path)  # atomic: FileExistsError if the key exists
                    os.unlink(temp)
                else:
                    os.replace(temp, path)
        except BaseException:
            with _suppress_os_error():
                os.unlink(temp)
            raise

    def _prune(self, directory: str) -> None:
        """Remove ``directory`` and its parents below the base while they are empty.

        ``rmdir`` refuses a directory that is not empty, atomically: a key (or a writer's temp
        file) created meanwhile keeps its directory. See :meth:`_create_temp` for the writer's side.
        """
        while directory.startswith(self.root + os.sep):
            try:
                os.rmdir(directory)
            except OSError:  # not empty, or already gone
                return
            directory = os.path.dirname(directory)

    def _delete_items(self, fs: Any, items: Sequence[tuple[str, str | None]]) -> list[tuple[str, str]]:
        failures = super()._delete_items(fs, items)
        for directory in sorted({os.path.dirname(path) for path, _ in items}, key=len, reverse=True):
            self._prune(directory)
        return failures

    async def write(
        self, fs: Any, path: str, body: Body, metadata: dict[str, str], *, create_only: bool = False
    ) -> None:
        # A nonce per write, in the header: the version the GC's conditional delete compares.
        await super().write(fs, path, body, {**metadata, META_WRITE: secrets.token_hex(8)}, create_only=create_only)

    @staticmethod
    def _unlink(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def _delete(self, fs: Any, path: str) -> None:
        self._unlink(path)
        self._prune(os.path.dirname(path))

    def _list(self, fs: Any, prefix: str, start_after: str | None, end_at: str | None) -> list[ListedObject]:
        entries = []
        for directory, dirs, files in os.walk(prefix.rstrip("/") or "/"):
            # only the directories whose subtree can hold keys of the slice are walked
            dirs[:] = sorted(d for d in dirs if _may_hold_slice(os.path.join(directory, d) + "/", start_after, end_at))
            for name in sorted(files):
                full = os.path.join(directory, name)
                if name.startswith("~") or not _in_slice(full, start_after, end_at):
                    continue
                with _suppress_os_error():
                    stat = os.stat(full)
                    modified = datetime.fromtimestamp(stat.st_mtime, timezone.utc)
                    entries.append(ListedObject(full, stat.st_size, self._version(full, stat), None, modified))
        entries.sort(key=lambda entry: entry.path)  # key order, as object stores list
        return entries

    def _list_prefixes(self, fs: Any, prefix: str) -> list[str]:
        try:
            with os.scandir(prefix) as found:
                return sorted(os.path.join(prefix, e.name) + "/" for e in found if e.is_dir() and e.name[0] != "~")
        except (FileNotFoundError, NotADirectoryError):
            return []

    async def remove_abandoned(self, fs: Any, prefix: str, before: datetime, *, dry_run: bool) -> int:
        return await asyncio.to_thread(self._remove_abandoned, prefix, before.timestamp(), dry_run)

    def _remove_abandoned(self, prefix: str, cutoff: float, dry_run: bool) -> int:
        """The temp files of killed writers, last written before ``cutoff``, and the directories
        left empty (by them, or by versions that did not remove emptied directories). A grave
        (``~gc-``) may hold a value a killed GC moved aside and had still to put back: those are
        left alone."""
        removed = 0
        for directory, _, files in os.walk(prefix.rstrip("/") or "/", topdown=False):
            for name in files:
                full = os.path.join(directory, name)
                with _suppress_os_error():
                    if name.startswith(self.TEMP_MARKER) and os.stat(full).st_mtime < cutoff:
                        if not dry_run:
                            os.unlink(full)
                        removed += 1
            if not dry_run and directory.startswith(self.root + os.sep):
                with _suppress_os_error():
                    os.rmdir(directory)  # only if empty
        return removed

    def _version(self, path: str, stat: os.stat_result) -> str:
        """What tells one write of a file from another: its write nonce, inode, mtime and size.

        Inode, mtime and size alone are not enough: a freed inode is soon reused, and many
        filesystems stamp times from a coarse clock (a few ms, or whole seconds), so two quick
        writes of the same size can share all three. The nonce in the header (files written by
        this package since it has one) cannot. Read as :meth:`_head` does, a few bytes at most.
        """
        nonce = ""
        with _suppress_os_error():
            with open(path, "rb") as handle:
                start = handle.read(self.HEADER_LIMIT)
            header = start[len(ENVELOPE_MAGIC) : start.find(b"\n", len(ENVELOPE_MAGIC))]
            if start.startswith(ENVELOPE_MAGIC) and header:
                with contextlib.suppress(ValueError):
                    document = orjson.loads(header)
                    nonce = str(document.get(META_WRITE, "")) if isinstance(document, dict) else ""
        return f"{stat.st_ino}:{stat.st_mtime_ns}:{stat.st_size}:{nonce}"

    def _delete_if_unchanged(self, fs: Any, path: str, version: str | None) -> str | None:
        """Delete the file only if it is still the version checked (its directory: see :meth:`_delete_items`)."""
        if version is None:
            self._unlink(path)
            return None
        try:
            with _directory_lock(os.path.dirname(path), exclusive=True) as locked:
                if locked:  # no writer can rename over the key until we are done
                    if self._version(path, os.stat(path)) != version:
                        return CHANGED
                    os.unlink(path)
                    return None
                return self._delete_by_rename(path, version)
        except FileNotFoundError:
            return GONE

    def _delete_by_rename(self, path: str, version: str) -> str | None:
        """Without flock (some network filesystems): move aside, compare, put back if rewritten."""
        grave = os.path.join(os.path.dirname(path), f"{self.GRAVE_MARKER}{uuid.uuid4().hex}")
        os.rename(path, grave)
        if self._version(grave, os.stat(grave)) == version:
            os.unlink(grave)
            return None
        with _suppress_os_error():  # rewritten since checked: put it back unless a newer one landed
            os.link(grave, path)
        os.unlink(grave)
        return CHANGED


@contextlib.contextmanager
def _directory_lock(directory: str, *, exclusive: bool) -> Iterator[bool]:
    """``flock`` a directory (shared or exclusive); yields False where flock is unavailable."""
    if fcntl is None:
        yield False
        return
    descriptor = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except OSError:  # e.g. ENOLCK / EBADF on a network filesystem
            yield False
            return
        yield True
    finally:
        os.close(descriptor)


def _in_slice(path: str, start_after: str | None, end_at: str | None) -> bool:
    return (start_after is None or path > start_after) and (end_at is None or path <= end_at)


def _may_hold_slice(directory: str, start_after: str | None, end_at: str | None) -> bool:
    """Whether some path under ``directory`` (ending in ``/``) can fall in the slice."""
    if end_at is not None and directory > end_at:
        return False  # every path under it is past the end
    # the largest path under it starts with the directory, then anything: below the start only
    # if the start is past every such path (it starts with the directory and nothing sorts after)
    return start_after is None or start_after < directory or start_after.startswith(directory)


class _suppress_os_error:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        return exc_type is not None and issubclass(exc_type, OSError)


#: Azure Blob Storage's transport lives in a module of its own, which imports this one.
_AZURE_PROTOCOLS = ("abfs", "abfss", "az")

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

#: botocore settings under s3fs (``config_kwargs``): a pool large enough for the GC's fan-out,
#: and no botocore retries (its "legacy" default retries 5xx and throttling up to 5 times, on
#: top of s3fs's own loop): :class:`RetryPolicy` is the one retry layer.
_S3_CONFIG_DEFAULTS: dict[str, Any] = {
    "max_pool_connections": 64,
    "retries": {"mode": "standard", "total_max_attempts": 1},
}


def _transport_class(protocol: str) -> type[Transport]:
    if protocol in _AZURE_PROTOCOLS:
        from objstore_backend.transports_azure import AzureTransport

        return AzureTransport
    return _TRANSPORTS.get(protocol, EnvelopeTransport)


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
        transport_class = _transport_class(self.protocol)
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
                options["config_kwargs"] = {**_S3_CONFIG_DEFAULTS, **options.get("config_kwargs", {})}
            if loop is not None:
                options["loop"] = loop
        elif self.protocol == "memory":
            options.setdefault("skip_instance_cache", True)
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
        display = self.display_path(relative)
        return StoredObject(_decompress(body, display), ObjectMetadata.from_strings(metadata, display))

    async def _head(self, fs: Any, relative: str) -> ObjectMetadata | None:
        found = await self.transport.head(fs, self.full_path(relative))
        return None if found is None else ObjectMetadata.from_strings(found, self.display_path(relative))

    async def _write(
        self, fs: Any, relative: str, body: bytes, metadata: ObjectMetadata, create_only: bool = False
    ) -> None:
        await self.transport.write(fs, self.full_path(relative), body, metadata.to_strings(), create_only=create_only)

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
        await self.transport.write(fs, self.full_path(target), found[0], metadata.to_strings())
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
