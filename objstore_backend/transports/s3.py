"""S3 through s3fs's raw client calls: one request per read, write and delete; batch deletes of 1000.

A write is one ``PutObject`` with the metadata, a read one ``GetObject`` (body and metadata
together), the listing ``ListObjectsV2`` (no metadata: the GC reads it per object, or from its
index), many deletes one ``DeleteObjects`` with an ``ETag`` condition per key. Every write's
bytes, hence its ETag, are unlike any earlier write's (:meth:`S3Transport._with_nonce`), so
the GC's conditional delete never removes a key rewritten since it was checked.
"""

from __future__ import annotations

import asyncio
import gzip
import secrets
from collections.abc import AsyncIterator, Sequence
from typing import Any, NoReturn

from objstore_backend.errors import BucketNotFoundError, CorruptObjectError, StoreError
from objstore_backend.transports.base import (
    CHANGED,
    GONE,
    S3_DELETE_BATCH,
    THROTTLING_CODES,
    Body,
    ListedObject,
    Transport,
    bounded,
    service_error,
)

__all__ = ["META_PAD", "S3_CONFIG_DEFAULTS", "S3Transport"]

#: How many bytes of JSON whitespace follow the body (see :meth:`S3Transport._with_nonce`).
META_PAD = "objstorepad"
#: Bytes of JSON whitespace each write of a JSON body ends with (see ``S3Transport._with_nonce``).
_PAD_BYTES = 16

#: botocore settings under s3fs (``config_kwargs``): a pool large enough for the GC's fan-out,
#: and no botocore retries (its "legacy" default retries 5xx and throttling up to 5 times, on
#: top of s3fs's own loop): :class:`~objstore_backend.transports.base.RetryPolicy` is the one retry layer.
S3_CONFIG_DEFAULTS: dict[str, Any] = {
    "max_pool_connections": 64,
    "retries": {"mode": "standard", "total_max_attempts": 1},
}


def _client_error_code(exc: BaseException) -> str | None:
    cause = exc.__cause__ or exc
    response = getattr(cause, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


#: S3 error codes that can pass (throttling, server trouble): retried. Statuses likewise.
_S3_RETRY_CODES = THROTTLING_CODES | frozenset(
    {
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
    #: S3's 2 KB of user metadata, less the pad entry this transport adds to each write.
    metadata_bytes = 2048 - len(META_PAD) - len(str(_PAD_BYTES))

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
        code, status, _ = service_error(exc)
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
        pad = bytes(secrets.choice(_JSON_WHITESPACE) for _ in range(_PAD_BYTES))
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

    async def list_prefixes(
        self, fs: Any, prefix: str, *, max_pages: int = 2, start_after: str | None = None
    ) -> tuple[list[str], int]:
        bucket = self._split(fs, prefix)[0]
        found: list[str] = []
        params = {"StartAfter": self._split(fs, start_after)[1]} if start_after else {}
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
            results = await bounded(concurrency, [self._delete_if_match(fs, p, v) for p, v in items])
            return [
                (path, self._REASONS.get(service_error(result)[0] or "", str(result)))
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
