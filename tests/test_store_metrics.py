"""The store's per-operation metrics, the backend used through its public API on moto's S3 server.

Each call of ``get``/``set``/``delete``/``clear`` (sync or async, primary mode) and of the offload
hooks is counted, timed, its body bytes and retries added up, and a failure counted by kind
(missing, corrupt, throttled, other) and re-raised unchanged. Throttling and passing faults come
from the fault-injecting proxy in front of moto (``tests.servers.CountingProxy``).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest
from airflow.sdk.state import AssetScope, TaskScope

from objstore_backend.backend import ObjectStoreBackend
from objstore_backend.config import StoreSettings
from objstore_backend.errors import BucketNotFoundError, CorruptObjectError, StateObjectMissingError, StoreThrottled
from objstore_backend.layout import object_path
from objstore_backend.metrics import Metrics
from tests.servers import CountingProxy

TASK = TaskScope("etl", "run", "load", -1)
ASSET = AssetScope(name="orders")
VALUE = '{"rows": [1, 2, 3], "note": "' + "x" * 200 + '"}'


class Recorded(Metrics):
    """Every metric reported, as ``(kind, name, tags)`` -> summed value."""

    def __init__(self) -> None:
        self.counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        self.timings: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()

    def incr(self, stat: str, count: int = 1, *, tags: Mapping[str, str] | None = None) -> None:
        self.counters[stat, tuple(sorted((tags or {}).items()))] += count

    def timing(self, stat: str, milliseconds: float, *, tags: Mapping[str, str] | None = None) -> None:
        assert milliseconds >= 0
        self.timings[stat, tuple(sorted((tags or {}).items()))] += 1

    def count(self, stat: str, **tags: str) -> int:
        return self.counters[stat, tuple(sorted(tags.items()))]

    def store_counters(self) -> dict[str, int]:
        """``name{tag=value,...}`` -> sum, for whole-picture comparisons."""
        return {f"{name}{{{','.join(f'{k}={v}' for k, v in tags)}}}": n for (name, tags), n in self.counters.items()}


@pytest.fixture
def recorded() -> Recorded:
    return Recorded()


def s3_backend(bucket: str, options: dict[str, Any], metrics: Metrics, **settings: Any) -> ObjectStoreBackend:
    settings = StoreSettings(path=f"s3://{bucket}/state", storage_options=options, **settings)
    return ObjectStoreBackend(settings, metrics=metrics)


def test_each_operation_is_counted_timed_and_its_bytes_added_up(
    recorded: Recorded, s3_bucket: str, s3_options: dict[str, Any], moto_server: Any
) -> None:
    backend = s3_backend(s3_bucket, s3_options, recorded)
    moto_server.log.clear()
    backend.set(TASK, "k", VALUE)
    assert backend.get(TASK, "k") == VALUE
    assert backend.get(TASK, "never-set") is None
    backend.delete(TASK, "k")
    backend.set(TASK, "other", "1")
    backend.clear(TASK)

    async def twins() -> None:
        await backend.aset(ASSET, "k", VALUE)
        assert await backend.aget(ASSET, "k") == VALUE
        await backend.adelete(ASSET, "k")
        await backend.aclear(ASSET)

    asyncio.run(twins())
    ref = backend.serialize_task_state_store_to_ref(value=[1, 2], key="k", scope=TASK)
    assert backend.deserialize_task_state_store_from_ref(ref) == [1, 2]
    asset_ref = backend.serialize_asset_state_store_to_ref(value=7, key="k", scope=ASSET)
    assert backend.deserialize_asset_state_store_from_ref(asset_ref) == 7

    body = len(VALUE.encode())  # stored as it is (no compression)
    assert recorded.store_counters() == {
        "store.set{mode=primary}": 3,
        "store.set.bytes{mode=primary}": 2 * body + 1,
        "store.get{mode=primary}": 3,
        "store.get.bytes{mode=primary}": 2 * body,
        "store.delete{mode=primary}": 2,
        "store.clear{mode=primary}": 2,
        "store.set{mode=offload}": 2,
        "store.set.bytes{mode=offload}": len(b"[1,2]") + len(b"7"),
        "store.get{mode=offload}": 2,
        "store.get.bytes{mode=offload}": len(b"[1,2]") + len(b"7"),
    }
    assert recorded.timings == {
        (f"store.{op}.duration", (("mode", mode),)): n
        for op, mode, n in [
            ("set", "primary", 3),
            ("get", "primary", 3),
            ("delete", "primary", 2),
            ("clear", "primary", 2),
            ("set", "offload", 2),
            ("get", "offload", 2),
        ]
    }
    # reporting adds no request: one per get, set and delete, a listing (and a batch delete) per clear
    assert dict(moto_server.log.by_kind()) == {"PUT": 5, "GET": 5, "DELETE": 2, "LIST": 2, "BATCH-DELETE": 1}


def test_an_inline_offload_value_reads_and_writes_no_bytes(
    recorded: Recorded, s3_bucket: str, s3_options: dict[str, Any]
) -> None:
    backend = s3_backend(s3_bucket, s3_options, recorded, threshold_bytes=1024)
    ref = backend.serialize_task_state_store_to_ref(value=[1], key="k", scope=TASK)
    assert backend.deserialize_task_state_store_from_ref(ref) == [1]
    assert recorded.store_counters() == {"store.set{mode=offload}": 1, "store.get{mode=offload}": 1}


def test_errors_are_counted_by_kind_and_raised_unchanged(
    recorded: Recorded, s3_bucket: str, s3_options: dict[str, Any], s3_client: Any
) -> None:
    missing_bucket = s3_backend("no-such-bucket-here", s3_options, recorded)
    with pytest.raises(BucketNotFoundError):
        missing_bucket.get(TASK, "k")
    with pytest.raises(BucketNotFoundError):
        missing_bucket.set(TASK, "k", "1")

    backend = s3_backend(s3_bucket, s3_options, recorded)
    with pytest.raises(StateObjectMissingError):
        backend.deserialize_task_state_store_from_ref("objstore:" + object_path(TASK, "gone"))

    s3_client.put_object(Bucket=s3_bucket, Key="state/" + object_path(TASK, "foreign"), Body=b"not ours")
    with pytest.raises(CorruptObjectError):
        backend.get(TASK, "foreign")
    with pytest.raises(ValueError, match="JSON"):
        backend.set(TASK, "k", "{not json")

    assert recorded.count("store.get.errors", mode="primary", kind="missing") == 1
    assert recorded.count("store.set.errors", mode="primary", kind="missing") == 1
    assert recorded.count("store.get.errors", mode="offload", kind="missing") == 1
    assert recorded.count("store.get.errors", mode="primary", kind="corrupt") == 1
    assert recorded.count("store.set.errors", mode="primary", kind="other") == 1
    assert recorded.count("store.get", mode="primary") == 2 and recorded.count("store.set", mode="primary") == 2
    assert not any(name.endswith(".retries") for name, _ in recorded.counters)  # refusals are never retried


@pytest.mark.parametrize(("fault", "kind"), [("503", "throttled"), ("429", "throttled"), ("500", "other")])
def test_a_lasting_fault_counts_the_policys_retries_and_the_error_kind(
    fault: str,
    kind: str,
    recorded: Recorded,
    s3_bucket: str,
    s3_fault_options: dict[str, Any],
    s3_fault_proxy: CountingProxy,
) -> None:
    backend = s3_backend(s3_bucket, s3_fault_options, recorded)  # 5 attempts
    rule = s3_fault_proxy.inject(fault, when=lambda r: r.method == "PUT")
    with pytest.raises(StoreThrottled if kind == "throttled" else OSError) as failure:
        backend.set(TASK, "k", VALUE)
    assert "after 5 attempts" in str(failure.value)
    assert isinstance(failure.value, StoreThrottled) is (kind == "throttled")
    assert sum(rule.injected.values()) == 5
    assert recorded.store_counters() == {
        "store.set{mode=primary}": 1,
        "store.set.retries{mode=primary}": 4,
        f"store.set.errors{{kind={kind},mode=primary}}": 1,
    }


def test_retries_are_attributed_to_the_operation_that_made_them(
    recorded: Recorded, s3_bucket: str, s3_fault_options: dict[str, Any], s3_fault_proxy: CountingProxy
) -> None:
    """A passing fault on the set's requests, a get running beside it on the same loop: the set's."""
    backend = s3_backend(s3_bucket, s3_fault_options, recorded)
    backend.set(TASK, "read-me", VALUE)
    rule = s3_fault_proxy.inject("503", when=lambda r: r.method == "PUT", times=2)

    async def side_by_side() -> None:
        await asyncio.gather(backend.aset(TASK, "k", VALUE), backend.aget(TASK, "read-me"))

    asyncio.run(side_by_side())
    backend.delete(TASK, "k")  # a sync call, run on fsspec's loop: no retry of its own
    assert sum(rule.injected.values()) == 2
    assert recorded.count("store.set.retries", mode="primary") == 2
    assert recorded.count("store.get.retries", mode="primary") == 0
    assert recorded.count("store.delete.retries", mode="primary") == 0
    assert not any(name.endswith(".errors") for name, _ in recorded.counters)


def test_azure_server_busy_is_throttled(
    recorded: Recorded, azure_container: str, azure_fault_options: dict[str, Any], azure_fault_proxy: CountingProxy
) -> None:
    """Azure says it with its own code: 503 ``ServerBusy``."""
    options = {**azure_fault_options, "retry": {"attempts": 3, "base_delay": 0.01}}
    settings = StoreSettings(path=f"abfs://{azure_container}/state", storage_options=options)
    backend = ObjectStoreBackend(settings, metrics=recorded)
    azure_fault_proxy.inject("503", when=lambda r: r.method == "PUT")
    with pytest.raises(StoreThrottled, match=r"ServerBusy \(HTTP 503\)"):
        backend.set(TASK, "k", VALUE)
    assert recorded.count("store.set.errors", mode="primary", kind="throttled") == 1
    assert recorded.count("store.set.retries", mode="primary") == 2
