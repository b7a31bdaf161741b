"""Faults between the clients and the stores: each fault kind, on each operation, passing and lasting.

A fault-injecting proxy (``tests.servers.CountingProxy``) sits between s3fs and moto, between
gcsfs and fake-gcs-server, and between the Azure SDK and Azurite. It answers chosen requests with
503 SlowDown (ServerBusy), 500, 429, a reset connection (before or after the server handled the
request), a stall longer than the client's read timeout, or a truncated answer. Under a fault
that passes, every operation and the GC succeed; under one that lasts, they fail with a
:class:`StoreError` naming the key and the cause, after the attempts the :class:`RetryPolicy`
allows, and no more.

The seeded run at the end drives thousands of operations through a 10% fault rate and checks,
against a model of what each acknowledged (or failed) write may have left, that no value is lost
and no object is half written.
"""

from __future__ import annotations

import asyncio
import random
import re
import types
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from airflow.sdk.state import AssetScope, TaskScope

from objstore_backend.backend import ObjectStoreBackend
from objstore_backend.config import StoreSettings
from objstore_backend.errors import StoreError
from objstore_backend.gc import GCOptions, run_gc
from objstore_backend.layout import object_path
from objstore_backend.store import ObjectStore, RetryPolicy
from tests.servers import FAULT_KINDS, FAULTS_AFTER_UPSTREAM, CountingProxy, ProxiedRequest

TASK = TaskScope("etl", "run", "load", -1)
PAST = datetime.now(timezone.utc) - timedelta(minutes=1)
OLD, NEW = '{"v": "old"}', '{"v": "new"}'

# What each kind looks like in the error once the retries are spent (the cause is named), as a regex.
CAUSES = {
    "503": r"SlowDown \(HTTP 503\)",
    "500": r"InternalError \(HTTP 500\)",
    "429": r"TooManyRequests \(HTTP 429\)",
    "reset": r"ConnectionResetError",  # botocore's EndpointConnectionError, caused by the reset
    "reset-after": r"ConnectionResetError",
    "stall": r"ReadTimeoutError",
    # a body cut short: ClientPayloadError; an empty answer (PUT, DELETE) has nothing to cut: a reset
    "truncate": r"ClientPayloadError|ConnectionResetError|ConnectionClosedError",
}


def is_object_get(r: ProxiedRequest) -> bool:
    return r.method == "GET" and "list-type" not in r.query


def is_list(r: ProxiedRequest) -> bool:
    return r.method == "GET" and "list-type" in r.query


def is_batch_delete(r: ProxiedRequest) -> bool:
    return r.method == "POST" and "delete" in r.query


def method(name: str) -> Callable[[ProxiedRequest], bool]:
    return lambda r: r.method == name


def s3_backend(bucket: str, options: dict[str, Any], **changes: Any) -> ObjectStoreBackend:
    return ObjectStoreBackend(StoreSettings(path=f"s3://{bucket}/state", storage_options={**options, **changes}))


# Each operation: what to write first, which requests carry it, what it does, and how to check it.


def _set(b: ObjectStoreBackend) -> Any:
    b.set(TASK, "k", NEW)
    return b.get(TASK, "k") == NEW


def _get(b: ObjectStoreBackend) -> Any:
    return b.get(TASK, "k") == OLD


def _delete(b: ObjectStoreBackend) -> Any:
    b.delete(TASK, "k")
    return b.get(TASK, "k") is None


def _clear(b: ObjectStoreBackend) -> Any:
    b.clear(TASK)
    return b.get(TASK, "k") is None and b.get(TASK, "other") is None


def _gc(b: ObjectStoreBackend) -> Any:
    report = run_gc(b.store)
    # An Azure blob batch whose answer was lost after it took effect answers 404 for the blob when
    # retried: the GC counts it as kept ("already gone"), S3's DeleteObjects as deleted.
    return (report.deleted + report.kept, report.expired, report.errors) == (1, 1, 0) and b.get(TASK, "k") == OLD


OPERATIONS: dict[str, tuple[Callable[[ObjectStoreBackend], Any], list[Callable[[ProxiedRequest], bool]]]] = {
    "set": (_set, [method("PUT")]),
    "get": (_get, [is_object_get]),
    "delete": (_delete, [method("DELETE")]),
    "clear": (_clear, [is_list, is_batch_delete]),
    "gc": (_gc, [method("HEAD"), is_batch_delete]),
}


def is_blob_get(r: ProxiedRequest) -> bool:
    return r.method == "GET" and "comp=list" not in r.query


def is_blob_list(r: ProxiedRequest) -> bool:
    return r.method == "GET" and "comp=list" in r.query


def is_blob_batch(r: ProxiedRequest) -> bool:
    return r.method == "POST" and "comp=batch" in r.query


#: The same operations on Azure: the GC reads expiries from the listing, deletes in blob batches.
AZURE_OPERATIONS: dict[str, tuple[Callable[[ObjectStoreBackend], Any], list[Callable[[ProxiedRequest], bool]]]] = {
    "set": (_set, [method("PUT")]),
    "get": (_get, [is_blob_get]),
    "delete": (_delete, [method("DELETE")]),
    "clear": (_clear, [is_blob_list, is_blob_batch]),
    "gc": (_gc, [is_blob_list, is_blob_batch]),
}

AZURE_CAUSES = {
    "503": r"ServerBusy \(HTTP 503\)",
    "500": r"InternalError \(HTTP 500\)",
    "429": r"TooManyRequests \(HTTP 429\)",
    "reset": r"ServiceRequestError|ServiceResponseError",
    "reset-after": r"ServiceRequestError|ServiceResponseError",
    "stall": r"ServiceResponse\w*Error.*[Tt]imeout",
    "truncate": r"ServiceRequestError|ServiceResponseError|IncompleteRead|payload is not completed",
}


@pytest.fixture(params=["s3", "azure"])
def faulty(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """(make a backend with option changes, its fault proxy, its operations, its causes) for S3 and Azure."""
    if request.param == "s3":
        bucket, options = request.getfixturevalue("s3_bucket"), request.getfixturevalue("s3_fault_options")
        proxy = request.getfixturevalue("s3_fault_proxy")
        return (lambda **changes: s3_backend(bucket, options, **changes)), proxy, OPERATIONS, CAUSES
    import azure.storage.blob.aio._download_async as download

    real_sleep = asyncio.sleep

    async def quick_sleep(seconds: float) -> None:  # the SDK's downloader waits 1 s between its own tries
        await real_sleep(seconds / 100)

    monkeypatch.setattr(download, "asyncio", types.SimpleNamespace(**{**vars(asyncio), "sleep": quick_sleep}))
    container, options = request.getfixturevalue("azure_container"), request.getfixturevalue("azure_fault_options")
    proxy = request.getfixturevalue("azure_fault_proxy")

    def make(**changes: Any) -> ObjectStoreBackend:
        return ObjectStoreBackend(
            StoreSettings(path=f"abfs://{container}/state", storage_options={**options, **changes})
        )

    return make, proxy, AZURE_OPERATIONS, AZURE_CAUSES


def _populate(backend: ObjectStoreBackend) -> None:
    backend.set(TASK, "k", OLD)
    backend.set(TASK, "other", OLD)
    backend.set(TASK, "expired", OLD, expires_at=PAST)


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_a_passing_fault_is_retried_and_every_operation_succeeds(kind: str, faulty: Any) -> None:
    make, proxy, operations, _ = faulty
    backend = make()
    # Two faults in a row: aiohttp resends an idempotent request once after a reset of a reused
    # connection, so the first reset alone would never reach the policy. A stall costs a read
    # timeout: one is enough to show it is retried.
    times = 1 if kind == "stall" else 2
    for operation, (run, carriers) in operations.items():
        _populate(backend)
        rules = [proxy.inject(kind, when=carrier, times=times) for carrier in carriers]
        assert run(backend), operation
        assert [sum(rule.injected.values()) for rule in rules] == [times] * len(rules), operation
        proxy.reset()


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_a_lasting_fault_fails_naming_the_key_and_the_cause(kind: str, faulty: Any) -> None:
    make, proxy, operations, causes = faulty
    backend = make(retry={"attempts": 2, "base_delay": 0.001})
    calls = {
        "set": lambda: backend.set(TASK, "k", NEW),
        "get": lambda: backend.get(TASK, "k"),
        "delete": lambda: backend.delete(TASK, "k"),
        "clear": lambda: backend.clear(TASK),
    }
    for operation, (_, carriers) in operations.items():
        _populate(backend)
        proxy.inject(kind, when=carriers[-1])  # clear and gc: the batch delete
        where = backend.store.display_path(object_path(TASK, "k"))
        if operation == "clear":  # the message names the scope, then each key that stayed
            where = object_path(TASK, "k")
        if operation == "gc":
            report = run_gc(backend.store)
            assert (report.errors, report.deleted) == (1, 0), report
            message = report.error_samples[0]
            where = object_path(TASK, "expired")
        else:
            with pytest.raises(StoreError) as failure:
                calls[operation]()
            message = str(failure.value)
            # the client's own error is kept as the cause (a clear reports each key's instead)
            assert failure.value.__cause__ is not None or operation == "clear"
        assert where in message, message
        # a body cut short on an Azure read: the SDK's downloader tries 3 times itself, the policy adds none
        attempts = 3 if (operation, kind) == ("get", "truncate") and causes is AZURE_CAUSES else 2
        assert f"after {attempts} attempts" in message and re.search(causes[kind], message), message
        assert "testing" not in message and "AccountKey" not in message  # the credentials
        struck = sum(proxy.injected.values())
        assert attempts <= struck <= 4, (struck, message)  # 2 attempts (aiohttp resends once after a reset)
        proxy.reset()
        if kind not in FAULTS_AFTER_UPSTREAM:  # the server never saw the request: nothing changed
            assert backend.get(TASK, "k") == OLD, operation


def test_s3_the_default_policy_and_its_settings(s3_bucket: str, s3_options: dict) -> None:
    store = ObjectStore(f"s3://{s3_bucket}/state", s3_options)
    assert store.retry == RetryPolicy(attempts=5, base_delay=0.2, max_delay=10.0)
    assert store.fs.config_kwargs["retries"] == {"mode": "standard", "total_max_attempts": 1}  # botocore: off
    custom = ObjectStore(f"s3://{s3_bucket}/state", {**s3_options, "retry": {"attempts": 8, "max_delay": 2}})
    assert custom.retry == RetryPolicy(attempts=8, max_delay=2) and "retry" not in custom.storage_options
    assert ObjectStore(f"s3://{s3_bucket}/state", {**s3_options, "retry": 2}).retry.attempts == 2
    # the user chose botocore's retries: they are the one policy, the store's steps aside
    botocore_retries = {**s3_options, "config_kwargs": {"retries": {"mode": "adaptive", "max_attempts": 4}}}
    assert ObjectStore(f"s3://{s3_bucket}/state", botocore_retries).retry.attempts == 1
    for bad in ({"attempts": 0}, {"attempts": "3"}, {"base_delay": -1}, {"tries": 3}, "often", True):
        with pytest.raises(ValueError, match="retry"):
            ObjectStore(f"s3://{s3_bucket}/state", {**s3_options, "retry": bad})
    policy = RetryPolicy(attempts=5, base_delay=0.1, max_delay=0.3)
    for failed, cap in ((1, 0.1), (2, 0.2), (3, 0.3), (4, 0.3)):
        assert all(0 <= policy.backoff(failed) <= cap for _ in range(200))


# -- GCS: gcsfs retries 429, 5xx, dropped and truncated connections itself; the store adds timeouts


@pytest.fixture
def gcs_faults(gcs_proxy: CountingProxy, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The GCS proxy, clean, with gcsfs's backoff (1, 2, 4, 8, 16 s) cut a hundredfold for speed."""
    import gcsfs.retry

    real_sleep = asyncio.sleep

    async def quick_sleep(seconds: float) -> None:
        await real_sleep(seconds / 100)

    monkeypatch.setattr(gcsfs.retry, "asyncio", types.SimpleNamespace(sleep=quick_sleep))
    gcs_proxy.reset()
    gcs_proxy.stall_seconds = 1.0
    yield gcs_proxy
    gcs_proxy.reset()
    gcs_proxy.stall_seconds = 2.0


def gcs_backend(bucket: str, options: dict[str, Any], **changes: Any) -> ObjectStoreBackend:
    settings = StoreSettings(
        path=f"gs://{bucket}/state",
        storage_options={**options, "requests_timeout": 0.5, "retry": {"base_delay": 0.001}, **changes},
    )
    return ObjectStoreBackend(settings)


GCS_CARRIERS = {
    "set": lambda r: r.method == "POST" and r.path.startswith("/upload/"),
    "get": lambda r: r.method == "GET" and "alt=media" in r.query,
}


@pytest.mark.parametrize("operation", list(GCS_CARRIERS))
@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_gcs_a_passing_fault_is_retried(
    kind: str, operation: str, gcs_bucket: str, gcs_options: dict, gcs_faults: CountingProxy
) -> None:
    backend = gcs_backend(gcs_bucket, gcs_options)
    backend.set(TASK, "k", OLD)
    rule = gcs_faults.inject(kind, when=GCS_CARRIERS[operation], times=2)
    if operation == "set":
        backend.set(TASK, "k", NEW)
        assert backend.get(TASK, "k") == NEW
    else:
        assert backend.get(TASK, "k") == OLD
    assert sum(rule.injected.values()) == 2


@pytest.mark.parametrize("kind", ["503", "429", "reset", "stall"])
def test_gcs_a_lasting_fault_fails_naming_the_key_and_the_cause(
    kind: str, gcs_bucket: str, gcs_options: dict, gcs_faults: CountingProxy
) -> None:
    backend = gcs_backend(gcs_bucket, gcs_options, retry={"attempts": 2, "base_delay": 0.001})
    gcs_faults.inject(kind, when=GCS_CARRIERS["set"])
    with pytest.raises(StoreError) as failure:
        backend.set(TASK, "k", NEW)
    message = str(failure.value)
    assert backend.store.display_path(object_path(TASK, "k")) in message, message
    cause = {"503": "HTTP 503", "429": "HTTP 429", "reset": "Connection reset", "stall": "TimeoutError"}[kind]
    assert cause in message, message
    # gcsfs tries 6 times; the store adds its own attempts only for timeouts (which gcsfs does not retry)
    attempts = 2 if kind == "stall" else 6
    assert sum(gcs_faults.injected.values()) == attempts and f"after {attempts} attempts" in message, message


# -- the seeded run ------------------------------------------------------------------------------

SCOPES = [TaskScope("d", "r", "t", -1), TaskScope("d", "r", "t", 1), AssetScope(name="orders")]
KEYS = [(scope, key) for scope in SCOPES for key in "abcdefgh"]
#: A stall costs a read timeout; it is rarer than the others to keep the run short.
SEEDED_KINDS = ["503", "503", "503", "500", "500", "429", "reset", "reset-after", "truncate", "truncate", "stall"]
MISSING = None


def _value(step: int, rng: random.Random) -> str:
    pad = "x" * rng.choice((0, 10, 100, 2_000, 2_000, 20_000))
    return orjson.dumps({"step": step, "pad": pad, "size": len(pad)}).decode()


def _seeded_run(backend: ObjectStoreBackend, operations: int, seed: int, tally: Counter[str]) -> None:
    """``operations`` random set/get/delete/clear/gc calls, checked against a model.

    The model holds, per key, the values a read may answer. A call that succeeds pins it: a set
    to its value, a delete or a clear to missing, a get to what it read. A call that fails after
    its retries leaves either outcome possible: its request may have been handled before the
    answer was lost (``reset-after``, ``stall``, ``truncate``), so the key may hold the old value
    or the new one until the next call that succeeds. The proxy relays one request at a time, so
    a lost request has taken effect before the next call starts: the model is exact.
    """
    rng = random.Random(seed)
    model: dict[tuple[Any, str], set[str | None]] = {k: {MISSING} for k in KEYS}
    for step in range(operations):
        scope, key = rng.choice(KEYS)
        kind = rng.choices(["set", "get", "delete", "clear", "gc"], weights=[48, 40, 7, 3, 1])[0]
        tally[kind] += 1
        try:
            if kind == "set":
                value = _value(step, rng)
                expired = rng.random() < 0.1  # an expired key is gone for get(), and fair game for the GC
                visible = MISSING if expired else value
                try:
                    backend.set(scope, key, value, expires_at=PAST if expired else None)
                except StoreError:
                    model[scope, key].add(visible)
                    raise
                model[scope, key] = {visible}
            elif kind == "get":
                got = backend.get(scope, key)
                if got not in model[scope, key]:
                    tally["lost"] += 1
                model[scope, key] = {got}
            elif kind == "delete":
                try:
                    backend.delete(scope, key)
                except StoreError:
                    model[scope, key].add(MISSING)
                    raise
                model[scope, key] = {MISSING}
            elif kind == "clear":
                cleared = [k for k in KEYS if k[0] == scope]
                try:
                    backend.clear(scope)
                except StoreError:
                    for k in cleared:
                        model[k].add(MISSING)
                    raise
                for k in cleared:
                    model[k] = {MISSING}
            else:
                report = run_gc(backend.store, GCOptions(concurrency=4))
                tally["gc errors"] += report.errors
        except StoreError:
            tally["failed after retries"] += 1
    for scope, key in KEYS:  # the proxy is still injecting: reads retry like the rest
        for _ in range(5):
            try:
                got = backend.get(scope, key)
                break
            except StoreError:
                tally["failed after retries"] += 1
        tally["lost"] += got not in model[scope, key]


@pytest.mark.parametrize("where", ["s3", "azure"])
def test_seeded_fault_run_loses_no_value_and_leaves_no_object_half_written(
    where: str, request: pytest.FixtureRequest
) -> None:
    """2,000 operations on S3; 1,000 on Azure (Azurite is slower per request, the same paths run)."""
    if where == "s3":
        bucket, s3_client = request.getfixturevalue("s3_bucket"), request.getfixturevalue("s3_client")
        proxy: CountingProxy = request.getfixturevalue("s3_fault_proxy")
        base = {
            **request.getfixturevalue("s3_fault_options"),
            "config_kwargs": {"connect_timeout": 0.25, "read_timeout": 0.25},
        }
        url = f"s3://{bucket}/phase"

        def raw(store: ObjectStore, relative: str) -> bytes:
            key = f"{store.root.split('/', 1)[1]}/{relative}"
            return bytes(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())

        # the default 5 attempts (backoff shortened for time), then a harsh 2 so that some calls fail
        phases = [(1_200, 5, 11), (800, 2, 12)]
    else:
        from azure.storage.blob import ContainerClient

        container = request.getfixturevalue("azure_container")
        proxy = request.getfixturevalue("azure_fault_proxy")
        base = request.getfixturevalue("azure_fault_options")
        url = f"abfs://{container}/phase"
        blobs = ContainerClient.from_connection_string(base["connection_string"], container)

        def raw(store: ObjectStore, relative: str) -> bytes:
            return bytes(blobs.download_blob(f"{store.root.split('/', 1)[1]}/{relative}").readall())

        phases = [(600, 5, 11), (400, 2, 12)]
    tally: Counter[str] = Counter()
    stores = []
    for operations, attempts, seed in phases:
        options = {**base, "retry": {"attempts": attempts, "base_delay": 0.001}}
        backend = ObjectStoreBackend(StoreSettings(path=f"{url}{seed}", storage_options=options))
        stores.append(backend.store)
        proxy.serialize = True
        proxy.inject(SEEDED_KINDS, rate=0.10, seed=seed)
        _seeded_run(backend, operations, seed, tally)
        tally.update({f"faults injected: {kind}": n for kind, n in proxy.injected.items()})
        tally["faults injected"] += sum(proxy.injected.values())
        proxy.reset()
        tally["operations"] += operations
        tally[f"failed after retries (attempts={attempts})"] = tally.pop("failed after retries", 0)
    # no object half written: every object reads whole through the store, and its raw bytes parse
    for store in stores:
        for listed in store.iter_objects():
            stored = store.read(listed.path)
            assert stored is not None
            document = orjson.loads(stored.body)
            assert len(document["pad"]) == document["size"]
            assert orjson.loads(raw(store, listed.path)) == document  # S3's JSON whitespace nonce is still JSON
            tally["objects checked"] += 1
    print(f"\nseeded fault run ({where}): {dict(sorted(tally.items()))}")
    assert tally["lost"] == 0
    assert tally["failed after retries (attempts=5)"] == 0
    assert tally["failed after retries (attempts=2)"] > 0  # the harsh phase did exercise failures
    assert tally["faults injected"] > tally["operations"] // 15 and tally["objects checked"] > 10
