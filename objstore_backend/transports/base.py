"""What every transport shares: the listing entry, the retry policy, error translation, the ABC.

A :class:`Transport` issues the requests of one protocol family (one module each in this
package), written once as coroutines taking the filesystem to use. Failures are retried and
translated in one place, :meth:`Transport.attempt`: one :class:`RetryPolicy` per store
(bounded exponential backoff with full jitter), applied to what the client library does not
already retry, so retries never multiply; what still fails raises a
:class:`~objstore_backend.errors.StoreError` naming the object and the cause.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Any, TypeVar

from objstore_backend.errors import StoreAccessDenied, StoreError, StoreThrottled
from objstore_backend.store_metrics import note_retry

__all__ = [
    "CHANGED",
    "GONE",
    "META_ADOPTED",
    "META_EXPIRES",
    "META_KEY",
    "META_LAYOUT",
    "META_MODE",
    "META_ORIGIN",
    "META_UPDATED",
    "S3_DELETE_BATCH",
    "THROTTLING_CODES",
    "Body",
    "ListedObject",
    "RetryPolicy",
    "Transport",
    "bounded",
    "delete_in_batches",
    "describe_cause",
    "format_key",
    "format_time",
    "in_slice",
    "parse_key",
    "parse_time",
    "service_error",
    "translate_error",
]

logger = logging.getLogger(__name__)

# Metadata names: lower case, no dash and no underscore, so S3 user metadata, boto3's
# head_object, s3fs, GCS custom metadata and Azure blob metadata all spell them the same way.
META_LAYOUT = "objstorelayout"
META_MODE = "objstoremode"
META_EXPIRES = "objstoreexpires"
#: Set when the server side adopted an object the worker side wrote (both modes configured).
META_ADOPTED = "objstoreadopted"
#: On an adopted copy at another path (an asset key by id): the worker's path it was copied from,
#: so a worker follows the server's reference only to a copy of its own asset's object.
META_ORIGIN = "objstoreorigin"
#: When the value was last set (by Airflow, or in the DB row it was imported from): which of
#: two copies of a key is newer. Absent on objects written before it existed.
META_UPDATED = "objstoreupdated"

#: The key itself, base64url (ASCII for every store), on objects whose path holds it hashed.
META_KEY = "objstorekey"

#: S3 DeleteObjects takes at most 1000 keys, and S3 lists 1000 a page; the local listings page alike.
S3_DELETE_BATCH = 1000

#: An object's body as read: S3 reads fill a ``bytearray`` (one buffer, the pad cut off in place).
Body = bytes | bytearray


@dataclass(frozen=True, slots=True)
class ListedObject:
    """One listing entry. ``metadata`` is ``None`` where the listing does not carry it (S3)."""

    path: str  # relative to the store's base path
    size: int
    version: str | None  # S3 ETag / GCS generation / local inode, for conditional deletes
    metadata: dict[str, str] | None
    modified: datetime | None = None


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC, the year always four digits (``strftime("%Y")`` writes year 999 as ``999``)."""
    if moment.tzinfo is None:
        raise ValueError(f"expires_at must be timezone-aware (UTC), got naive {moment!r}")
    try:
        utc = moment.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(f"{moment.isoformat()} is outside the years 1 to 9999 in UTC") from None
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def format_key(key: str) -> str:
    """A key as metadata every store takes: base64url of its UTF-8, unpadded (S3 metadata is ASCII)."""
    return base64.urlsafe_b64encode(key.encode("utf-8", "surrogatepass")).rstrip(b"=").decode("ascii")


def parse_key(text: str) -> str | None:
    """Reverse :func:`format_key`; ``None`` for text it did not write."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("utf-8", "surrogatepass")
    except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError
        return None


#: A year of fewer than four digits: how years before 1000 were written before they were padded.
_SHORT_YEAR = re.compile(r"^([0-9]{1,3})-")


def parse_time(text: str) -> datetime:
    text = _SHORT_YEAR.sub(lambda found: found.group(1).zfill(4) + "-", text)
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


_MAX_CAUSE_CHARS = 500


def service_error(exc: BaseException) -> tuple[str | None, int | None, str | None]:
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
    code, status, message = service_error(exc)
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


#: The error codes of a store throttling its callers (S3's, Azure's ``ServerBusy``); HTTP 429 says
#: the same on every store.
THROTTLING_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequests",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "ServerBusy",
    }
)


def _is_throttled(exc: BaseException) -> bool:
    code, status, _ = service_error(exc)
    return status == 429 or code in THROTTLING_CODES


def _is_access_denied(exc: BaseException) -> bool:
    if isinstance(exc, PermissionError):
        return True
    _, status, _ = service_error(exc)
    return status in (401, 403) or str(exc).startswith("Forbidden")  # gcsfs: OSError("Forbidden: ...")


def translate_error(exc: Exception, action: str, where: str, attempts: int) -> Exception:
    """The error to raise for ``exc``, which ended ``action`` on ``where`` after ``attempts`` tries.

    Our own errors pass unchanged; callers' mistakes (``ValueError``, ``TypeError``) too. The
    rest become a :class:`StoreError` (a :class:`StoreAccessDenied` when the store refused the
    credentials, a :class:`StoreThrottled` when it kept throttling them), naming the object and
    the cause. ``where`` never holds credentials.
    """
    if isinstance(exc, (StoreError, ValueError, TypeError)):
        return exc
    after = f" after {attempts} attempts" if attempts > 1 else ""
    cause = describe_cause(exc)
    if _is_access_denied(exc):
        return StoreAccessDenied(f"{action} {where}: access denied{after}: {cause}")
    if isinstance(exc, (FileNotFoundError, FileExistsError)):  # "missing" / "changed": callers decide
        return exc
    failure = StoreThrottled if _is_throttled(exc) else StoreError
    return failure(f"{action} {where} failed{after}: {cause}")


def _display_as_is(path: str) -> str:
    return path


class Transport(ABC):
    """The requests of one protocol family. Paths are full fsspec paths without protocol."""

    #: The filesystem's methods are coroutines (s3fs, gcsfs): bind one instance per loop.
    is_async: bool = True
    #: :meth:`delete_batch` deletes an object only if it is still the version given (the GC relies on it).
    supports_conditional_delete: bool = True
    #: ``write(create_only=True)`` is decided by the store in the same request (``import`` relies on it).
    supports_create_only: bool = True
    #: The bytes of user metadata (names and values) the store takes per object, ``None``: no limit.
    metadata_bytes: int | None = None

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
                    note_retry()
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
    async def list_prefixes(
        self, fs: Any, prefix: str, *, max_pages: int = 2, start_after: str | None = None
    ) -> tuple[list[str], int]:
        """The "directories" right under ``prefix`` (full paths ending in ``/``), at most ``max_pages``
        pages of them, those after ``start_after`` (a full path) only if given, and the listing
        requests that took (the GC's split-point discovery)."""

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


async def bounded(concurrency: int, calls: list[Any]) -> list[Any]:
    """Await the coroutines, at most ``concurrency`` at a time, results (or errors) in order."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(call: Any) -> Any:
        async with semaphore:
            return await call

    return await asyncio.gather(*(one(call) for call in calls), return_exceptions=True)


async def delete_in_batches(
    items: Sequence[tuple[str, str | None]],
    size: int,
    concurrency: int,
    one_batch: Callable[[Sequence[tuple[str, str | None]]], Awaitable[list[tuple[str, str]]]],
) -> list[tuple[str, str]]:
    """Send ``items`` in batch requests of at most ``size``, ``concurrency`` at a time: the failures
    of all. A batch request that failed as a whole reports every one of its items, none dropped."""
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    results = await bounded(concurrency, [one_batch(chunk) for chunk in chunks])
    failures: list[tuple[str, str]] = []
    for chunk, result in zip(chunks, results, strict=True):
        failures += [(path, str(result)) for path, _ in chunk] if isinstance(result, Exception) else result
    return failures


def in_slice(path: str, start_after: str | None, end_at: str | None) -> bool:
    """Whether ``start_after < path <= end_at`` (either bound may be absent): one slice of the key space."""
    return (start_after is None or path > start_after) and (end_at is None or path <= end_at)
