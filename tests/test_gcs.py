"""GCS specifics, through gcsfs against fake-gcs-server behind a counting, fault-injecting proxy.

The backend contract, the GC and the inventory also run on GCS through the ``gcs`` store kind
of the shared fixtures; this file covers what only GCS has: requests per operation,
``customTime``, listing-borne metadata, generation-conditional deletes, JSON batch requests,
and the service's 429 and 412 answers. Where fake-gcs-server differs from GCS (it ignores
``ifGenerationMatch`` on DELETE and answers batch items with 400), the proxy answers as GCS does.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from airflow.sdk.state import AssetScope, TaskScope

from objstore_backend.backend import ObjectStoreBackend
from objstore_backend.config import StoreSettings
from objstore_backend.gc import GCOptions, run_gc
from objstore_backend.layout import object_path
from objstore_backend.transports import GCSTransport
from tests.gc_race import gc_racing_a_rewrite

TASK = TaskScope("etl", "run", "load", 0)
PAST = datetime.now(timezone.utc) - timedelta(minutes=1)
FUTURE = datetime.now(timezone.utc) + timedelta(days=1)


@pytest.fixture
def gcs_backend(gcs_bucket: str, gcs_options: dict[str, Any]) -> ObjectStoreBackend:
    return ObjectStoreBackend(StoreSettings(path=f"gs://{gcs_bucket}/state", storage_options=gcs_options))


@pytest.fixture
def proxy(gcs_proxy: Any) -> Any:
    gcs_proxy.log.clear()
    yield gcs_proxy
    gcs_proxy.respond = None


def methods(proxy: Any) -> list[str]:
    return [method for method, _, _ in proxy.log.snapshot()]


def object_resource(proxy: Any, bucket: str, name: str) -> dict[str, Any]:
    url = f"{proxy.url}/storage/v1/b/{bucket}/o/{urllib.request.quote(name, safe='')}"
    with urllib.request.urlopen(url) as response:
        return json.loads(response.read())


def test_one_request_per_set_get_delete(gcs_backend: ObjectStoreBackend, proxy: Any) -> None:
    for operation, expected in (
        (lambda: gcs_backend.set(TASK, "k", '{"a": 1}'), ["POST"]),  # one multipart upload
        (lambda: gcs_backend.get(TASK, "k"), ["GET"]),  # media with x-goog-meta-* headers
        (lambda: gcs_backend.get(TASK, "missing"), ["GET"]),
        (lambda: gcs_backend.delete(TASK, "k"), ["DELETE"]),
        (lambda: gcs_backend.serialize_task_state_store_to_ref(value=[1], key="o", scope=TASK), ["POST"]),
        (lambda: gcs_backend.deserialize_task_state_store_from_ref("objstore:" + object_path(TASK, "o")), ["GET"]),
        (lambda: asyncio.run(gcs_backend.aset(TASK, "k", "1")), ["POST"]),
        (lambda: asyncio.run(gcs_backend.aget(TASK, "k")), ["GET"]),
        (lambda: asyncio.run(gcs_backend.adelete(TASK, "k")), ["DELETE"]),
    ):
        proxy.log.clear()
        operation()
        assert methods(proxy) == expected


def test_expiry_is_custom_metadata_and_custom_time_in_the_same_upload(
    gcs_backend: ObjectStoreBackend, gcs_bucket: str, proxy: Any
) -> None:
    gcs_backend.set(TASK, "expiring", "1", expires_at=FUTURE)
    gcs_backend.set(TASK, "forever", "2")
    expiring = object_resource(proxy, gcs_bucket, "state/" + object_path(TASK, "expiring"))
    forever = object_resource(proxy, gcs_bucket, "state/" + object_path(TASK, "forever"))
    assert abs(datetime.fromisoformat(expiring["customTime"].replace("Z", "+00:00")) - FUTURE) < timedelta(seconds=1)
    assert expiring["metadata"]["objstoremode"] == "primary" and "objstoreexpires" in expiring["metadata"]
    assert "customTime" not in forever and "objstoreexpires" not in forever["metadata"]


def test_gc_reads_expiry_from_the_listing_with_no_request_per_object(
    gcs_backend: ObjectStoreBackend, proxy: Any
) -> None:
    for index in range(30):
        gcs_backend.set(TaskScope("d", "r", "t", index), "k", "1", expires_at=PAST if index % 2 else FUTURE)
    proxy.log.clear()
    report = run_gc(gcs_backend.store, GCOptions(dry_run=True))
    assert (report.scanned, report.expired, report.live) == (30, 15, 15)
    kinds = proxy.log.by_kind()
    # one listing page and two delimiter listings (where the DAGs start), no request per object:
    # the other GETs read the GC's plan and index manifest (missing in a first run)
    assert (kinds["LIST"], kinds["GET-META"], kinds["GET"]) == (3, 0, 2)
    assert report.list_requests == 3 and report.metadata_reads == 0


def enforce_generation_preconditions(proxy: Any) -> None:
    """fake-gcs-server ignores ``ifGenerationMatch`` on DELETE; GCS answers 412. Answer as GCS does."""
    upstream = f"http://{proxy.upstream.hostname}:{proxy.upstream.port}"

    def answer(method: str, path: str, query: str, body: bytes) -> Any:
        wanted = re.search(r"ifGenerationMatch=(\d+)", query)
        if method != "DELETE" or wanted is None:
            return None
        with urllib.request.urlopen(upstream + path) as response:
            current = json.loads(response.read())["generation"]
        if current == wanted.group(1):
            return None
        error = {"error": {"code": 412, "message": "At least one of the pre-conditions you specified did not hold."}}
        return 412, {"Content-Type": "application/json"}, json.dumps(error).encode()

    proxy.respond = answer


def test_gc_deletes_with_if_generation_match_and_a_rewritten_key_survives(
    gcs_backend: ObjectStoreBackend, proxy: Any
) -> None:
    enforce_generation_preconditions(proxy)
    scope = TaskScope("d", "r", "progress")
    gcs_backend.set(scope, "k", '"old"', expires_at=PAST)
    gcs_backend.set(scope, "other", '"old"', expires_at=PAST)
    report = gc_racing_a_rewrite(gcs_backend, scope, "k", GCOptions())
    assert gcs_backend.get(scope, "k") == '"new"' and gcs_backend.get(scope, "other") is None
    assert (report.deleted, report.kept, report.errors) == (1, 1, 0)  # the 412 is "kept", not an error
    deletes = [query for method, _, query in proxy.log.snapshot() if method == "DELETE"]
    assert len(deletes) == 2 and all(re.fullmatch(r"ifGenerationMatch=\d+", q) for q in deletes)


def _batch_answer(statuses: list[int]) -> tuple[int, dict[str, str], bytes]:
    parts = "".join(
        f"--batch_x\r\nContent-Type: application/http\r\nContent-ID: <response-{i}>\r\n\r\n"
        f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n"
        for i, status in enumerate(statuses)
    )
    return 200, {"Content-Type": "multipart/mixed; boundary=batch_x"}, (parts + "--batch_x--\r\n").encode()


def test_batched_deletes_carry_at_most_100_conditional_calls(
    gcs_backend: ObjectStoreBackend, proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The emulator answers batch items with 400, so the proxy answers as GCS does."""
    for index in range(150):
        gcs_backend.set(TaskScope("d", "r", "t", index), "k", "1", expires_at=PAST)
    monkeypatch.setattr(GCSTransport, "batch_supported", lambda self, fs: True)
    batches: list[list[str]] = []

    def answer(method: str, path: str, query: str, body: bytes) -> Any:
        if method != "POST" or not path.endswith("/batch/storage/v1"):
            return None
        calls = re.findall(r"DELETE (/storage/v1/b/[^ ]+) HTTP/1.1", body.decode())
        batches.append(calls)
        return _batch_answer([412 if i == 0 else 204 for i in range(len(calls))])

    proxy.respond = answer
    report = run_gc(gcs_backend.store)
    assert sorted(len(b) for b in batches) == [50, 100]
    assert all(
        re.search(r"/o/state%2Ftask%2Fd%2Fr%2Ft%2F\d+%2Fk\?ifGenerationMatch=\d+$", c) for b in batches for c in b
    )
    assert (report.deleted, report.kept, report.errors) == (148, 2, 0)


def test_429_on_a_write_is_retried_and_the_value_lands(gcs_backend: ObjectStoreBackend, proxy: Any) -> None:
    """GCS allows about one write per second to one object name; a rewritten progress key hits 429."""
    refused = []

    def rate_limit(method: str, path: str, query: str, body: bytes) -> Any:
        if method == "POST" and path.startswith("/upload/") and len(refused) < 2:
            refused.append(path)
            error = {"error": {"code": 429, "message": "The object exceeded the rate limit for object mutation"}}
            return 429, {"Content-Type": "application/json"}, json.dumps(error).encode()
        return None

    proxy.respond = rate_limit
    gcs_backend.set(AssetScope(name="orders"), "progress", '{"percent": 50}')
    assert len(refused) == 2 and methods(proxy).count("POST") == 3
    proxy.respond = None
    assert gcs_backend.get(AssetScope(name="orders"), "progress") == '{"percent": 50}'


def test_a_missing_bucket_is_named(gcs_options: dict[str, Any]) -> None:
    from objstore_backend.errors import BucketNotFoundError

    backend = ObjectStoreBackend(StoreSettings(path="gs://no-such-bucket/state", storage_options=gcs_options))
    with pytest.raises(BucketNotFoundError, match="no-such-bucket"):
        backend.set(TASK, "k", "1")
    assert run_gc(backend.store).errors == 1
