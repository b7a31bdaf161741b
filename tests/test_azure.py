"""Azure Blob Storage specifics, through adlfs and the azure-storage-blob SDK against Azurite behind a
counting, fault-injecting proxy.

The backend contract, the GC and the inventory also run on Azure through the ``azure`` store kind
of the shared fixtures (and the hostile, concurrency and fault suites name it too); this file covers
what only Azure has: requests per operation, listing-borne metadata, ETag-conditional blob
batches of at most 256 deletes, and the service's answers to bad input: a missing container, a
bad connection string, wrong keys, a SAS token without delete permission, throttling.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.state import AssetScope, TaskScope

from objstore_backend import cli
from objstore_backend.backend import ObjectStoreBackend
from objstore_backend.config import StoreSettings
from objstore_backend.errors import BucketNotFoundError, StoreAccessDenied, StoreError
from objstore_backend.gc import GCOptions, run_gc
from objstore_backend.layout import object_path
from objstore_backend.store import ObjectStore
from tests.gc_race import gc_racing_a_rewrite
from tests.servers import AZURITE_ACCOUNT, AZURITE_KEY, CountingProxy, ProxiedRequest, azurite_connection_string

TASK = TaskScope("etl", "run", "load", 0)
PAST = datetime.now(timezone.utc) - timedelta(minutes=1)
FUTURE = datetime.now(timezone.utc) + timedelta(days=1)


@pytest.fixture
def proxy(azure_fault_proxy: CountingProxy) -> CountingProxy:
    return azure_fault_proxy


@pytest.fixture
def azure_backend(azure_container: str, azure_options: dict[str, Any]) -> ObjectStoreBackend:
    return ObjectStoreBackend(StoreSettings(path=f"abfs://{azure_container}/state", storage_options=azure_options))


def kinds(proxy: CountingProxy) -> dict[str, int]:
    return dict(proxy.log.by_kind())


def batch_bodies(proxy: CountingProxy) -> list[str]:
    bodies: list[str] = []

    def keep(request: ProxiedRequest) -> None:
        if request.method == "POST" and "comp=batch" in request.query:
            bodies.append(request.body.decode())

    proxy.answer = keep
    return bodies


def test_one_request_per_set_get_delete(azure_backend: ObjectStoreBackend, proxy: CountingProxy) -> None:
    ref = "objstore:" + object_path(TASK, "o")
    for operation, expected in (
        (lambda: azure_backend.set(TASK, "k", '{"a": 1}'), {"PUT": 1}),  # body and metadata together
        (lambda: azure_backend.get(TASK, "k"), {"GET": 1}),  # body, metadata and ETag together
        (lambda: azure_backend.get(TASK, "missing"), {"GET": 1}),
        (lambda: azure_backend.delete(TASK, "k"), {"DELETE": 1}),
        (lambda: azure_backend.delete(TASK, "missing"), {"DELETE": 1}),
        (lambda: azure_backend.serialize_task_state_store_to_ref(value=[1], key="o", scope=TASK), {"PUT": 1}),
        (lambda: azure_backend.deserialize_task_state_store_from_ref(ref), {"GET": 1}),
        (lambda: asyncio.run(azure_backend.aset(TASK, "k", "1")), {"PUT": 1}),
        (lambda: asyncio.run(azure_backend.aget(TASK, "k")), {"GET": 1}),
        (lambda: asyncio.run(azure_backend.adelete(TASK, "k")), {"DELETE": 1}),
        (lambda: azure_backend.clear(TaskScope("etl", "run", "idle")), {"LIST": 1}),  # a task that wrote nothing
    ):
        proxy.log.clear()
        operation()
        assert kinds(proxy) == expected
    assert azure_backend.get(TASK, "k") is None and azure_backend.deserialize_task_state_store_from_ref(ref) == [1]


def without_listings(proxy: CountingProxy) -> dict[str, int]:
    """The requests but the listings, which must be one of the blobs plus the delimiter listings
    that find the sweep's key ranges (task/, task/d/): at most 3 here."""
    counted = kinds(proxy)
    assert 1 <= counted.pop("LIST", 0) <= 3, counted
    return counted


def test_metadata_is_written_with_the_body_and_read_back_from_the_listing(
    azure_backend: ObjectStoreBackend, proxy: CountingProxy, tmp_path: Path
) -> None:
    for index in range(30):
        azure_backend.set(TaskScope("d", "r", "t", index), "k", "1", expires_at=PAST if index % 2 else FUTURE)
    proxy.log.clear()
    # the sweep's key-range plan kept elsewhere: only the state's requests are counted here
    report = run_gc(azure_backend.store, GCOptions(dry_run=True, index_url=str(tmp_path)))
    assert (report.scanned, report.expired, report.live) == (30, 15, 15)
    assert without_listings(proxy) == {}  # no request per object: the listing carries the metadata


def test_clear_of_600_keys_is_one_listing_and_three_batches(
    azure_backend: ObjectStoreBackend, azure_container: str, proxy: CountingProxy
) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(lambda i: azure_backend.set(TaskScope("etl", "run", "load", i // 2), f"k{i % 2}", "1"), range(600))
        )
    azure_backend.set(TaskScope("etl", "run", "load2", 0), "k", "1")  # a neighbour that must stay
    proxy.log.clear()
    bodies = batch_bodies(proxy)
    azure_backend.clear(TASK, all_map_indices=True)
    assert kinds(proxy) == {"LIST": 1, "BATCH": 3}
    assert sorted(body.count("DELETE /") for body in bodies) == [88, 256, 256]
    assert [o.path for o in azure_backend.store.iter_objects()] == [
        object_path(TaskScope("etl", "run", "load2", 0), "k")
    ]


def test_gc_deletes_in_batches_conditional_on_the_etag_it_checked(
    azure_backend: ObjectStoreBackend, proxy: CountingProxy, tmp_path: Path
) -> None:
    scope = TaskScope("d", "r", "progress")
    azure_backend.set(scope, "k", '"old"', expires_at=PAST)
    azure_backend.set(scope, "other", '"old"', expires_at=PAST)
    proxy.log.clear()
    bodies = batch_bodies(proxy)
    report = gc_racing_a_rewrite(azure_backend, scope, "k", GCOptions(index_url=str(tmp_path)))
    assert without_listings(proxy) == {"PUT": 1, "BATCH": 1}
    assert azure_backend.get(scope, "k") == '"new"' and azure_backend.get(scope, "other") is None
    assert (report.deleted, report.kept, report.errors) == (1, 1, 0)  # the 412 is "kept", not an error
    [body] = bodies
    assert len(re.findall(r'If-Match: "0x[0-9A-F]+"', body, re.IGNORECASE)) == 2  # ETags quoted, as uploads give them


def test_gc_one_conditional_delete_per_blob_when_asked(
    azure_backend: ObjectStoreBackend, proxy: CountingProxy, tmp_path: Path
) -> None:
    scope = TaskScope("d", "r", "progress")
    azure_backend.set(scope, "k", '"old"', expires_at=PAST)
    azure_backend.set(scope, "other", '"old"', expires_at=PAST)
    proxy.log.clear()
    report = gc_racing_a_rewrite(azure_backend, scope, "k", GCOptions(batched_deletes=False, index_url=str(tmp_path)))
    assert without_listings(proxy) == {"PUT": 1, "DELETE": 2}
    assert azure_backend.get(scope, "k") == '"new"' and azure_backend.get(scope, "other") is None
    assert (report.deleted, report.kept, report.errors) == (1, 1, 0)


def test_throttling_is_retried_and_the_value_lands(azure_backend: ObjectStoreBackend, proxy: CountingProxy) -> None:
    """503 ServerBusy is how a storage account says it is over its request rate."""
    rule = proxy.inject("503", when=lambda r: r.method == "PUT", times=2)
    azure_backend.set(AssetScope(name="orders"), "progress", '{"percent": 50}')
    assert sum(rule.injected.values()) == 2 and kinds(proxy) == {"PUT": 3}
    assert azure_backend.get(AssetScope(name="orders"), "progress") == '{"percent": 50}'


def test_lasting_throttling_fails_naming_the_key_and_the_service_code(
    azure_container: str, azure_fault_options: dict[str, Any], proxy: CountingProxy
) -> None:
    options = {**azure_fault_options, "retry": {"attempts": 3, "base_delay": 0.001}}
    backend = ObjectStoreBackend(StoreSettings(path=f"abfs://{azure_container}/state", storage_options=options))
    proxy.inject("503")
    with pytest.raises(StoreError) as failure:
        backend.set(TASK, "k", "1")
    message = str(failure.value)
    assert backend.store.display_path(object_path(TASK, "k")) in message
    assert "after 3 attempts: ServerBusy (HTTP 503): The server is busy." in message, message
    assert kinds(proxy) == {"PUT": 3}  # one retry layer: the SDK's own retries are off


def test_a_missing_container_is_named(azure_options: dict[str, Any], proxy: CountingProxy) -> None:
    backend = ObjectStoreBackend(StoreSettings(path="abfs://no-such-container/state", storage_options=azure_options))
    for operation in (
        lambda: backend.set(TASK, "k", "1"),
        lambda: backend.get(TASK, "k"),  # Azure tells a missing container from a missing blob
        lambda: backend.delete(TASK, "k"),
        lambda: backend.clear(TASK),
    ):
        with pytest.raises(BucketNotFoundError, match="container 'no-such-container' does not exist"):
            operation()
    report = run_gc(backend.store)
    assert report.errors == 1 and "no-such-container" in report.error_samples[0]
    assert sum(kinds(proxy).values()) == 5  # nothing retried


@pytest.mark.parametrize("name", ["ab", "Upper", "under_score", "double--hyphen", "-edge"])
def test_a_bad_container_name_fails_before_any_request(
    name: str, azure_options: dict[str, Any], proxy: CountingProxy
) -> None:
    backend = ObjectStoreBackend(StoreSettings(path=f"abfs://{name}/state", storage_options=azure_options))
    with pytest.raises(ValueError, match=f"{name!r} is not an Azure container name: 3-63 characters"):
        backend.set(TASK, "k", "1")
    assert proxy.log.count() == 0


SECRET_KEY = "U0VDUkVULURPLU5PVC1MT0ctNDU2L2FiY2RlZg=="  # valid base64, not the account's key


def test_bad_connection_strings_say_what_is_wrong_and_never_repeat_the_key(
    azure_container: str, azure_proxy: CountingProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"abfs://{azure_container}/state"
    with pytest.raises(ValueError, match="(?i)connection string") as failure:
        ObjectStoreBackend(StoreSettings(path=url, storage_options={"connection_string": f"nonsense{SECRET_KEY}"}))
    assert SECRET_KEY not in str(failure.value)
    wrong_key = azurite_connection_string(azure_proxy.url).replace(AZURITE_KEY, SECRET_KEY)
    backend = ObjectStoreBackend(StoreSettings(path=url, storage_options={"connection_string": wrong_key}))
    with pytest.raises(
        StoreAccessDenied, match=r"access denied: (AuthenticationFailed|AuthorizationFailure) \(HTTP 403\)"
    ) as denied:
        backend.set(TASK, "k", "1")
    assert backend.store.display_path(object_path(TASK, "k")) in str(denied.value)
    report = run_gc(backend.store)
    assert report.errors == 1 and "access denied" in report.error_samples[0]
    assert SECRET_KEY not in str(denied.value) and SECRET_KEY not in str(report.as_dict())
    assert SECRET_KEY not in caplog.text


def test_a_sas_token_without_delete_permission_fails_deletes_clearly(
    azure_container: str, azure_proxy: CountingProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(
        AZURITE_ACCOUNT,
        azure_container,
        account_key=AZURITE_KEY,
        permission=ContainerSasPermissions(read=True, write=True, list=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
    )
    options = {"connection_string": f"BlobEndpoint={azure_proxy.url}/{AZURITE_ACCOUNT};SharedAccessSignature={sas}"}
    url = f"abfs://{azure_container}/state"
    backend = ObjectStoreBackend(StoreSettings(path=url, storage_options=options))
    backend.set(TASK, "k", "1", expires_at=PAST)
    backend.set(TASK, "keep", "2")
    assert backend.get(TASK, "keep") == "2"  # reads and writes work
    with pytest.raises(StoreAccessDenied, match="deleting .*/k: access denied: AuthorizationPermissionMismatch"):
        backend.delete(TASK, "k")
    with pytest.raises(StoreError, match="could not be deleted") as failure:
        backend.clear(TASK)
    assert "AuthorizationPermissionMismatch" in str(failure.value)
    report = run_gc(backend.store)  # every refused delete is an error, nothing counted as deleted
    assert (report.expired, report.deleted, report.errors) == (1, 0, 1), report
    assert backend.get(TASK, "keep") == "2"
    signature = re.search(r"sig=([^&]+)", sas)
    assert signature is not None
    assert cli.main(["gc", "--path", url, "--storage-options", json.dumps(options), "--json"]) == 1
    assert signature.group(1) not in capsys.readouterr().out + str(report.as_dict())


def test_etags_from_listings_and_uploads_name_the_same_version(
    azure_backend: ObjectStoreBackend, proxy: CountingProxy
) -> None:
    """Uploads answer ``"0x..."``, listings ``0x...``: a condition built from either must match."""
    azure_backend.set(TASK, "k", "1")
    [listed] = list(azure_backend.store.iter_objects())
    assert listed.version is not None and listed.version.startswith('"0x') and listed.version.endswith('"')
    store: ObjectStore = azure_backend.store
    full = store.full_path(listed.path)
    assert store._run(store.transport.delete_batch, [(full, listed.version.strip('"'))]) == []
    assert azure_backend.get(TASK, "k") is None


def test_requests_by_kind_never_include_a_head_on_the_hot_path(
    azure_backend: ObjectStoreBackend, proxy: CountingProxy
) -> None:
    proxy.log.clear()
    for index in range(10):
        azure_backend.set(TaskScope("d", "r", "t", index), "k", str(index))
        assert azure_backend.get(TaskScope("d", "r", "t", index), "k") == str(index)
    azure_backend.clear(TaskScope("d", "r", "t"), all_map_indices=True)
    assert Counter(kinds(proxy)) == Counter({"PUT": 10, "GET": 10, "LIST": 1, "BATCH": 1})


def test_reads_never_go_through_a_listing_cache(
    azure_container: str, azure_options: dict[str, Any], proxy: CountingProxy
) -> None:
    """adlfs caches listings (ls, exists, info go stale across processes); two stores stand for two processes."""
    url = f"abfs://{azure_container}/state"
    reader = ObjectStoreBackend(StoreSettings(path=url, storage_options=azure_options))
    writer = ObjectStoreBackend(StoreSettings(path=url, storage_options=azure_options))
    assert list(reader.store.iter_objects()) == []  # a listing first: adlfs would now answer from its cache
    writer.set(TASK, "k", '"written elsewhere"')
    assert reader.get(TASK, "k") == '"written elsewhere"'
    writer.delete(TASK, "k")
    assert reader.get(TASK, "k") is None
    assert [o.path for o in reader.store.iter_objects()] == []


def test_the_sdk_logs_its_requests_at_debug_not_into_task_logs(
    azure_backend: ObjectStoreBackend, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Airflow's task logs show INFO: the SDK's two dozen lines per request would drown them."""
    sdk = logging.getLogger("azure.core.pipeline.policies.http_logging_policy")
    monkeypatch.setattr(sdk, "level", logging.NOTSET)  # as in production: the conftest quiets it for reports
    caplog.set_level(logging.DEBUG)
    azure_backend.set(TASK, "k", "1")
    azure_backend.clear(TASK)
    from_sdk = [r for r in caplog.records if r.name == sdk.name]
    assert from_sdk and {r.levelno for r in from_sdk} == {logging.DEBUG}


def test_async_calls_close_their_clients_with_their_loop(azure_container: str, azure_options: dict[str, Any]) -> None:
    """Each ``asyncio.run`` gets an adlfs instance of its own; its client closes with the loop, not at
    exit through a loop long gone ("Loop is not running", "Unclosed client session")."""
    script = f"""
import asyncio
from airflow.sdk.state import TaskScope
from objstore_backend.backend import ObjectStoreBackend
from objstore_backend.config import StoreSettings
backend = ObjectStoreBackend(StoreSettings(path="abfs://{azure_container}/state", storage_options={azure_options!r}))
scope = TaskScope("d", "r", "t")
backend.set(scope, "k", "1")
assert asyncio.run(backend.aget(scope, "k")) == "1"
asyncio.run(backend.aclear(scope))
assert asyncio.run(backend.aget(scope, "k")) is None
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    for noise in ("Loop is not running", "Unclosed client session", "Unclosed connector", "Traceback"):
        assert noise not in result.stdout + result.stderr, result.stderr[-3000:]


def test_a_leased_blob_fails_writes_and_deletes_naming_it(
    azure_backend: ObjectStoreBackend, proxy: CountingProxy
) -> None:
    """A 409 (the lease) is an error naming the blob, for writes and deletes alike."""
    azure_backend.set(TASK, "k", "1")
    body = (
        b"<?xml version='1.0' encoding='utf-8'?><Error><Code>LeaseIdMissing</Code><Message>There is currently "
        b"a lease on the blob and no lease ID was specified in the request.</Message></Error>"
    )
    leased = (409, {"Content-Type": "application/xml", "x-ms-error-code": "LeaseIdMissing"}, body)
    proxy.answer = lambda request: leased if request.method in ("PUT", "DELETE") else None
    where = azure_backend.store.display_path(object_path(TASK, "k"))
    for operation, action in (
        (lambda: azure_backend.set(TASK, "k", "2"), "writing"),
        (lambda: azure_backend.delete(TASK, "k"), "deleting"),
    ):
        with pytest.raises(StoreError, match=re.escape(f"{action} {where} failed: LeaseIdMissing (HTTP 409)")):
            operation()
    proxy.answer = None
    assert azure_backend.get(TASK, "k") == "1"


@pytest.mark.parametrize("batched", [True, False], ids=["batch", "one-per-blob"])
def test_a_gc_delete_refused_for_a_lease_or_snapshots_is_an_error_naming_the_blob(
    batched: bool,
    azure_backend: ObjectStoreBackend,
    azure_container: str,
    azure_options: dict[str, Any],
    tmp_path: Path,
) -> None:
    """412 ``ConditionNotMet`` is "rewritten since checked" (kept), 404 "gone"; a lease (412
    ``LeaseIdMissing``) or snapshots (409 ``SnapshotsPresent``) leave the expired version in
    place: the sweep failed, and says which blob."""
    from azure.storage.blob import BlobServiceClient

    scope = TaskScope("d", "r", "held")
    for key in ("leased", "snapshotted", "other"):
        azure_backend.set(scope, key, '"old"', expires_at=PAST)
    service = BlobServiceClient.from_connection_string(azure_options["connection_string"])
    leased, snapshotted = (
        service.get_blob_client(azure_container, f"state/{object_path(scope, key)}")
        for key in ("leased", "snapshotted")
    )
    lease = leased.acquire_lease(lease_duration=-1)
    snapshotted.create_snapshot()
    options = GCOptions(batched_deletes=batched, index_url=str(tmp_path))
    report = run_gc(azure_backend.store, options)
    assert (report.expired, report.deleted, report.kept, report.errors) == (3, 1, 0, 2)
    samples = sorted(report.error_samples)
    assert f"deleting {object_path(scope, 'leased')}: " in samples[0] and "LeaseIdMissing (HTTP 412)" in samples[0]
    assert f"deleting {object_path(scope, 'snapshotted')}: " in samples[1]
    assert "SnapshotsPresent (HTTP 409)" in samples[1]
    assert azure_backend.store.head(object_path(scope, "leased")) is not None
    lease.release()
    snapshotted.delete_blob(delete_snapshots="only")
    report = run_gc(azure_backend.store, options)
    assert (report.deleted, report.errors) == (2, 0)
