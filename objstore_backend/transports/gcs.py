"""Google Cloud Storage (``gs://``, ``gcs://``) through gcsfs's JSON API session.

Retries are gcsfs's own (429, 5xx, dropped connections), plus the timeouts gcsfs gives up on
(:meth:`GCSTransport.retriable`). Batch deletes (real GCS only: emulators answer their items
with errors) are multipart JSON batch requests, read back by :func:`_batch_statuses`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import quote

from objstore_backend.errors import BucketNotFoundError
from objstore_backend.transports.base import (
    CHANGED,
    GONE,
    META_EXPIRES,
    Body,
    ListedObject,
    Transport,
    bounded,
    delete_in_batches,
    in_slice,
    parse_time,
)

__all__ = ["GCSTransport"]


class GCSTransport(Transport):
    """Google Cloud Storage through gcsfs's JSON API session: one request per read, write, delete.

    A media download carries the custom metadata as ``x-goog-meta-*`` headers, so a read is
    one request. Writes set ``customTime`` to the expiry in the same upload, so a bucket
    lifecycle rule ``daysSinceCustomTime: 0`` can delete expired keys by itself. Deletes of
    many objects go in JSON batch requests of at most 100 calls, each with ``ifGenerationMatch``.
    """

    BATCH_CALLS = 100
    _META_HEADER = "x-goog-meta-"
    #: GCS custom metadata: 8 KB per object, names and values.
    metadata_bytes = 8192
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
                if in_slice(item["name"], first, last)
            ]
            if past_end or "nextPageToken" not in page:
                return
            params = {**params, "pageToken": page["nextPageToken"]}

    async def list_prefixes(
        self, fs: Any, prefix: str, *, max_pages: int = 2, start_after: str | None = None
    ) -> tuple[list[str], int]:
        bucket = fs.split_path(prefix)[0]
        found: list[str] = []
        first = {"startOffset": fs.split_path(start_after)[1]} if start_after else {}
        params: dict[str, str] = {}
        requests = 0
        while requests < max_pages:
            requests += 1
            page = await self._list_call(fs, prefix, delimiter="/", **first, **params)
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
            return await delete_in_batches(
                items, self.BATCH_CALLS, concurrency, lambda chunk: self._delete_one_batch(fs, chunk)
            )
        results = await bounded(concurrency, [self._delete_if_generation(fs, p, v) for p, v in items])
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
