"""Azure Blob Storage: one request per read, write and delete; conditional batch deletes of 256.

The filesystem is adlfs's ``AzureBlobFileSystem`` (``abfs://``, ``abfss://``, ``az://``), which
turns the storage options into credentials (a connection string, an account key, a SAS token,
a service principal, or ``DefaultAzureCredential`` for managed and workload identity); every
request goes through the azure-storage-blob SDK's async client it holds, never through adlfs's
listing cache or its ``pipe_file`` (which cannot carry metadata):

* a write is one ``Put Blob`` with the metadata (``upload_blob(..., metadata=...)``, whole
  bodies up to the SDK's 64 MiB single-put size; larger ones are staged as blocks and
  committed at once, so readers still see the old or the new body);
* a read is one ``Get Blob``: body, metadata and ETag together (a body over the SDK's 32 MiB
  first range is read on in ranged GETs of 4 MiB, each conditional on the first answer's ETag);
* the listing carries each blob's metadata, ETag and last-modified time (5,000 a page), so
  the GC needs no request per object;
* deletes of many blobs go in blob batch requests of at most 256 deletes, each conditional on
  the ETag the GC checked (412 ``ConditionNotMet``: rewritten since, kept; 404: gone), with a
  status per blob; a lease on the blob (412 ``LeaseIdMissing``) or its snapshots (409
  ``SnapshotsPresent``) leave the expired blob in place: an error naming it, never "kept". The batch is
  sent by the SDK's synchronous client in a worker thread: its async client frames the batch
  body in a way Azurite 3.35 refuses as a whole (400 InvalidInput).

Retries: the store's :class:`~objstore_backend.transports.base.RetryPolicy` is the one layer. Every
request is sent with the SDK's own retries off (``retry_total=0``); 429, 500, 502, 503
(``ServerBusy``), 504, timeouts and dropped connections are retried by the policy. One
exception: a body cut short on a read is retried by the SDK's downloader itself (3 tries, 1 s
apart, not configurable), so the policy does not retry it a second time.
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

from objstore_backend.errors import BucketNotFoundError
from objstore_backend.transports.base import (
    CHANGED,
    GONE,
    Body,
    ListedObject,
    Transport,
    bounded,
    delete_in_batches,
    in_slice,
)

__all__ = ["AZURE_DELETE_BATCH", "AzureServiceError", "AzureTransport", "sdk_call"]

#: A blob batch takes at most 256 sub-requests (257 is a 400 for the whole batch).
AZURE_DELETE_BATCH = 256
#: Blobs per listing page: the service's maximum.
LIST_PAGE = 5000
#: How often the SDK's downloader reads a body cut short before it gives up.
DOWNLOADER_BODY_TRIES = 3

_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: 3-63 characters: lower-case letters, digits and single hyphens, a letter or digit at each end.
_CONTAINER_NAME = re.compile(r"(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*|\$root|\$logs|\$web")

_T = TypeVar("_T")


def _sdk_request_log_options() -> dict[str, Any]:
    """The SDK logs every request and answer at INFO, which Airflow's task logs show (two dozen
    lines per state call): at DEBUG instead, per request, where the SDK lets a caller choose
    (``http_logging_level``, in recent azure-core releases); its logger's level is the application's."""
    from azure.core.pipeline.policies import HttpLoggingPolicy

    return {"http_logging_level": logging.DEBUG} if hasattr(HttpLoggingPolicy(), "http_logging_level") else {}


class AzureServiceError(OSError):
    """What the Blob service answered: its error code, HTTP status and message.

    ``response`` has the shape :func:`~objstore_backend.transports.base.describe_cause` reads, so messages
    read ``ServerBusy (HTTP 503): The server is busy.`` as they do for S3; the SDK's error is
    the ``__cause__``.
    """

    def __init__(self, code: str | None, status: int | None, message: str) -> None:
        super().__init__(f"{code} (HTTP {status}): {message}")
        self.code, self.status = code, status
        self.response = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}


class _BlobMissing(AzureServiceError):
    """404 for a blob (its container exists). Handled where it is expected; elsewhere an error naming the blob."""


class _BlobChanged(AzureServiceError):
    """412 ``ConditionNotMet``: the blob is not the version an ETag condition named."""


class _BlobConflict(AzureServiceError):
    """409, or a 412 for a lease: the blob exists (``BlobAlreadyExists``, a create-only write),
    is leased (``LeaseIdMissing``...), or has snapshots (``SnapshotsPresent``)."""


def _changed(status: int, code: str | None) -> bool:
    """Whether a 412 says the condition failed; the service sends 412 for a lease too."""
    return status == 412 and code in (None, "ConditionNotMet")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0].strip()


def _translate(exc: BaseException, container: str) -> BaseException:
    """The SDK's error as this module raises it; others pass unchanged."""
    from azure.core.exceptions import ClientAuthenticationError, DecodeError, HttpResponseError

    if not isinstance(exc, HttpResponseError) or isinstance(exc, DecodeError):  # DecodeError: an answer cut short
        return exc
    status = exc.status_code
    raw_code = getattr(exc, "error_code", None)  # set by the storage SDK on the errors it raises
    code = getattr(raw_code, "value", raw_code)
    if status is None and isinstance(exc, ClientAuthenticationError):  # no token at all (DefaultAzureCredential)
        return AzureServiceError("NoCredential", 401, _first_line(exc))
    if status is None:
        return exc
    message = _first_line(exc)
    if status == 404 and code == "ContainerNotFound":
        return BucketNotFoundError(f"container {container!r} does not exist")
    if status == 404:
        return _BlobMissing(code, status, message)
    if _changed(status, code):
        return _BlobChanged(code, status, message)
    if status in (409, 412):
        return _BlobConflict(code, status, message)
    return AzureServiceError(code, status, message)


async def sdk_call(container: str, request: Awaitable[_T]) -> _T:
    """Await one SDK request; its error translated (see :func:`_translate`), the SDK's as cause."""
    try:
        return await request
    except Exception as exc:
        translated = _translate(exc, container)
        if translated is exc:
            raise
        raise translated from exc


def _quoted(etag: str | None) -> str | None:
    """ETags come quoted from uploads and downloads, bare from listings: one form for conditions."""
    return None if etag is None else f'"{etag.strip(chr(34))}"'


class AzureTransport(Transport):
    """Azure Blob Storage through the azure-storage-blob SDK (see the module's docstring)."""

    #: Azure blob metadata: 8 KB per object, names and values.
    metadata_bytes = 8192

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: adlfs instance -> the SDK's synchronous service client, for blob batches (see module docstring)
        self._sync_services: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    async def close(self, fs: Any) -> None:
        """Close the client and credential of an adlfs instance whose event loop is ending.

        adlfs also registers exit hooks that close them through the instance's own loop, which is
        closed by then ("Loop is not running", "Unclosed client session"): they are dropped first.
        """
        from adlfs.utils import close_credential, close_service_client

        for finalizer in list(weakref.finalize._registry):  # type: ignore[attr-defined]
            found = finalizer.peek()
            if found is not None and found[0] is fs:
                finalizer.detach()
        await close_service_client(fs)
        await close_credential(fs)

    def retriable(self, exc: BaseException) -> bool:
        """Throttling, 5xx, timeouts and dropped connections; not a body the downloader already retried."""
        import aiohttp
        from azure.core.exceptions import (
            HttpResponseError,
            IncompleteReadError,
            ServiceRequestError,
            ServiceResponseError,
        )

        if isinstance(exc, AzureServiceError):
            return exc.status in _RETRY_STATUSES
        if isinstance(exc, HttpResponseError) and exc.status_code is None and self._downloader_retried(exc):
            return False
        return isinstance(
            exc,
            (
                ServiceRequestError,  # no connection, or reset before the request went out
                ServiceResponseError,  # reset or timed out waiting for the answer
                IncompleteReadError,  # an answer cut short (a read's body: see _downloader_retried)
                TimeoutError,
                asyncio.TimeoutError,
                ConnectionError,
                aiohttp.ClientPayloadError,
                aiohttp.ClientConnectionError,
            ),
        )

    @staticmethod
    def _downloader_retried(exc: BaseException) -> bool:
        """The SDK's downloader wraps the last of its own tries at a body in a status-less error."""
        from azure.core.exceptions import DecodeError, IncompleteReadError, ServiceResponseError

        return isinstance(exc.__cause__, (IncompleteReadError, DecodeError, ServiceResponseError))

    def client_attempts(self, exc: BaseException) -> int:
        from azure.core.exceptions import HttpResponseError

        if isinstance(exc, HttpResponseError) and exc.status_code is None and self._downloader_retried(exc):
            return DOWNLOADER_BODY_TRIES
        return 1

    _sdk_log_options: dict[str, Any] | None = None

    @classmethod
    def _request_options(cls, fs: Any) -> dict[str, Any]:
        """Per-request settings: the SDK's retries off (the policy retries), its request log at DEBUG,
        adlfs's timeouts."""
        if cls._sdk_log_options is None:
            cls._sdk_log_options = _sdk_request_log_options()
        return {"retry_total": 0, **cls._sdk_log_options, **getattr(fs, "_timeout_kwargs", {})}

    @staticmethod
    def _split(fs: Any, path: str) -> tuple[str, str]:
        container, blob, _ = fs.split_path(path)
        if not _CONTAINER_NAME.fullmatch(container):
            raise ValueError(
                f"{container!r} is not an Azure container name: 3-63 characters, lower-case letters, digits and "
                "single hyphens, starting and ending with a letter or digit (abfs://CONTAINER/prefix/)"
            )
        return container, blob

    def _blob(self, fs: Any, path: str) -> tuple[str, Any]:
        container, blob = self._split(fs, path)
        return container, fs.service_client.get_blob_client(container, blob)

    async def read(self, fs: Any, path: str) -> tuple[Body, dict[str, str]] | None:
        container, client = self._blob(fs, path)

        async def download() -> tuple[bytes, dict[str, str]] | None:
            try:
                downloader = await sdk_call(container, client.download_blob(**self._request_options(fs)))
                body = await sdk_call(container, downloader.readall())
            except _BlobMissing:
                return None
            return body, dict(downloader.properties.metadata or {})

        return await self.attempt("reading", path, download)

    async def write(
        self, fs: Any, path: str, body: Body, metadata: dict[str, str], *, create_only: bool = False
    ) -> None:
        from azure.storage.blob import ContentSettings

        container, client = self._blob(fs, path)
        data = body if isinstance(body, bytes) else bytes(body)

        async def upload() -> None:
            try:
                await sdk_call(
                    container,
                    client.upload_blob(
                        data,
                        overwrite=not create_only,  # create-only: 409 BlobAlreadyExists if the key exists
                        metadata=metadata,
                        content_settings=ContentSettings(content_type="application/json"),
                        **self._request_options(fs),
                    ),
                )
            except (_BlobChanged, _BlobConflict) as exc:  # a leased blob exists too
                if not create_only:
                    raise
                raise FileExistsError(f"{self.display(path)} exists") from exc

        await self.attempt("writing", path, upload)

    async def head(self, fs: Any, path: str) -> dict[str, str] | None:
        container, client = self._blob(fs, path)

        async def properties() -> dict[str, str] | None:
            try:
                found = await sdk_call(container, client.get_blob_properties(**self._request_options(fs)))
            except _BlobMissing:
                return None
            return dict(found.metadata or {})

        return await self.attempt("reading the metadata of", path, properties)

    async def _delete_blob(self, fs: Any, path: str, etag: str | None = None) -> str | None:
        """One Delete Blob, conditional on ``etag`` when given: ``None`` once deleted, else why not
        (:data:`GONE`, or :data:`CHANGED` when the blob is no longer the version ``etag`` names).
        A lease on the blob, or snapshots, raise: an error, never a silent no-op."""
        from azure.core import MatchConditions

        container, client = self._blob(fs, path)
        condition = {"etag": _quoted(etag), "match_condition": MatchConditions.IfNotModified} if etag else {}

        async def delete_blob() -> str | None:
            try:
                await sdk_call(container, client.delete_blob(**condition, **self._request_options(fs)))
            except _BlobMissing:
                return GONE
            except _BlobChanged:
                return CHANGED
            return None

        return await self.attempt("deleting", path, delete_blob)

    async def delete(self, fs: Any, path: str) -> None:
        await self._delete_blob(fs, path)  # missing is fine

    async def _list_page(
        self, fs: Any, prefix: str, token: str | None, delimiter: str | None = None
    ) -> tuple[list[Any], str | None]:
        """One List Blobs request (``delimiter``: blob prefixes too) and its continuation token."""
        container, key_prefix = self._split(fs, prefix)
        client = fs.service_client.get_container_client(container)

        async def list_page() -> tuple[list[Any], str | None]:
            options = {"name_starts_with": key_prefix, "results_per_page": LIST_PAGE, **self._request_options(fs)}
            blobs = (
                client.walk_blobs(delimiter=delimiter, **options)
                if delimiter
                else client.list_blobs(include=["metadata"], **options)
            )
            pages = blobs.by_page(continuation_token=token)
            page = await sdk_call(container, pages.__anext__())  # the one request of this page
            return [blob async for blob in page], pages.continuation_token

        return await self.attempt("listing", prefix, list_page)

    async def list_pages(
        self, fs: Any, prefix: str, start_after: str | None = None, end_at: str | None = None
    ) -> AsyncIterator[list[ListedObject]]:
        """Azure's listing cannot start at a key (its marker is opaque): a slice is listed from the
        prefix's start and cut here, stopping at the first page past its end."""
        container = self._split(fs, prefix)[0]
        token: str | None = None
        while True:
            blobs, token = await self._list_page(fs, prefix, token)
            listed = [
                ListedObject(
                    f"{container}/{blob.name}",
                    int(blob.size),
                    _quoted(blob.etag),
                    dict(blob.metadata or {}),
                    blob.last_modified,
                )
                for blob in blobs
            ]
            yield [entry for entry in listed if in_slice(entry.path, start_after, end_at)]
            if not token or (end_at is not None and listed and listed[-1].path > end_at):
                return

    async def list_prefixes(
        self, fs: Any, prefix: str, *, max_pages: int = 2, start_after: str | None = None
    ) -> tuple[list[str], int]:
        """Listed from the prefix's start (Azure's marker is opaque), those up to ``start_after`` dropped."""
        from azure.storage.blob.aio import BlobPrefix

        container = self._split(fs, prefix)[0]
        found: list[str] = []
        token: str | None = None
        requests = 0
        while requests < max_pages:
            requests += 1
            items, token = await self._list_page(fs, prefix, token, delimiter="/")
            found += [
                f"{container}/{item.name}"
                for item in items
                if isinstance(item, BlobPrefix) and in_slice(f"{container}/{item.name}", start_after, None)
            ]
            if not token:
                break
        return found, requests

    def _sync_service(self, fs: Any) -> Any | None:
        """The SDK's synchronous service client with adlfs's credentials, or None without a usable one.

        adlfs holds async credentials; for managed identity and service principals it also keeps a
        synchronous twin (``sync_credential``). A credential object of the caller's own without one
        gets no batches (deletes then go one conditional request per blob).
        """
        if fs in self._sync_services:
            return self._sync_services[fs]
        from azure.storage.blob import BlobServiceClient

        service: Any | None
        if getattr(fs, "connection_string", None):
            service = BlobServiceClient.from_connection_string(fs.connection_string)
        else:
            credential = getattr(fs, "sync_credential", None) or fs.credential or fs.account_key
            if (
                credential is not None
                and not isinstance(credential, str)
                and asyncio.iscoroutinefunction(getattr(credential, "get_token", None))
            ):
                service = None  # an async credential of the caller's: no synchronous twin
            elif credential is not None:
                service = BlobServiceClient(fs.account_url, credential=credential)
            else:
                sas = fs.sas_token or ""
                service = BlobServiceClient(fs.account_url + (sas if not sas or sas.startswith("?") else f"?{sas}"))
        self._sync_services[fs] = service
        return service

    async def _delete_one_batch(
        self, fs: Any, service: Any, items: Sequence[tuple[str, str | None]]
    ) -> list[tuple[str, str]]:
        """One blob batch request of up to 256 conditional deletes; failures by path."""
        from azure.core import MatchConditions

        container = self._split(fs, items[0][0])[0]
        client = service.get_container_client(container)
        blobs = [
            {
                "name": self._split(fs, path)[1],
                **({"etag": _quoted(etag), "match_condition": MatchConditions.IfNotModified} if etag else {}),
            }
            for path, etag in items
        ]

        def send() -> list[tuple[int, str | None]]:
            answers = client.delete_blobs(*blobs, raise_on_any_failure=False, **self._request_options(fs))
            return [(int(answer.status_code), answer.headers.get("x-ms-error-code")) for answer in answers]

        statuses = await self.attempt(
            f"deleting {len(items)} blobs in", container, lambda: sdk_call(container, asyncio.to_thread(send))
        )
        if len(statuses) != len(items):
            return [
                (path, f"the batch answered {len(statuses)} statuses for {len(items)} deletes") for path, _ in items
            ]
        return [
            (
                path,
                GONE if status == 404 else CHANGED if _changed(status, code) else f"{code or 'error'} (HTTP {status})",
            )
            for (path, _), (status, code) in zip(items, statuses, strict=True)
            if status not in (200, 202)
        ]

    async def delete_batch(
        self, fs: Any, items: Sequence[tuple[str, str | None]], *, batched: bool = True, concurrency: int = 16
    ) -> list[tuple[str, str]]:
        if not items:
            return []
        service = self._sync_service(fs) if batched else None
        if service is not None:
            return await delete_in_batches(
                items, AZURE_DELETE_BATCH, concurrency, lambda chunk: self._delete_one_batch(fs, service, chunk)
            )
        results = await bounded(concurrency, [self._delete_blob(fs, path, etag) for path, etag in items])
        return [(path, str(result)) for (path, _), result in zip(items, results, strict=True) if result is not None]
