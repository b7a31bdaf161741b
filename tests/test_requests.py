"""Requests per operation, counted on moto's S3 server (not timed): the hot path stays minimal."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from airflow.sdk.state import AssetScope, TaskScope

from objstore_backend.backend import ObjectStoreBackend
from objstore_backend.config import StoreSettings

TASK = TaskScope("etl", "run", "load", 0)


@pytest.fixture
def s3_backend(s3_bucket: str, s3_options: dict[str, Any]) -> ObjectStoreBackend:
    return ObjectStoreBackend(StoreSettings(path=f"s3://{s3_bucket}/state/", storage_options=s3_options))


def requests_of(moto_server: Any, operation: Any) -> dict[str, int]:
    moto_server.log.clear()
    operation()
    return dict(moto_server.log.by_kind())


def test_one_request_per_set_get_delete(s3_backend: ObjectStoreBackend, moto_server: Any) -> None:
    assert requests_of(moto_server, lambda: s3_backend.set(TASK, "k", '{"a": 1}')) == {"PUT": 1}
    assert requests_of(moto_server, lambda: s3_backend.get(TASK, "k")) == {"GET": 1}
    assert requests_of(moto_server, lambda: s3_backend.get(TASK, "missing")) == {"GET": 1}
    assert requests_of(moto_server, lambda: s3_backend.delete(TASK, "k")) == {"DELETE": 1}
    ref = s3_backend.serialize_task_state_store_to_ref(value=[1], key="k", scope=TASK)
    assert requests_of(
        moto_server,
        lambda: s3_backend.serialize_asset_state_store_to_ref(value=[1], key="k", scope=AssetScope(name="a")),
    ) == {"PUT": 1}
    assert requests_of(moto_server, lambda: s3_backend.deserialize_task_state_store_from_ref(ref)) == {"GET": 1}


def test_async_methods_cost_the_same(s3_backend: ObjectStoreBackend, moto_server: Any) -> None:
    async def scenario() -> list[dict[str, int]]:
        counts = []
        for operation in (
            lambda: s3_backend.aset(TASK, "k", "1"),
            lambda: s3_backend.aget(TASK, "k"),
            lambda: s3_backend.adelete(TASK, "k"),
        ):
            moto_server.log.clear()
            await operation()
            counts.append(dict(moto_server.log.by_kind()))
        return counts

    assert asyncio.run(scenario()) == [{"PUT": 1}, {"GET": 1}, {"DELETE": 1}]


def test_empty_clear_is_one_listing(s3_backend: ObjectStoreBackend, moto_server: Any) -> None:
    """clear_on_success clears every successful task instance, most of which wrote nothing."""
    assert requests_of(moto_server, lambda: s3_backend.clear(TASK)) == {"LIST": 1}


def test_clear_is_listing_pages_plus_one_batch_delete_per_thousand(
    s3_backend: ObjectStoreBackend, s3_client: Any, s3_bucket: str, moto_server: Any
) -> None:
    def put(i: int) -> None:
        s3_backend.set(TaskScope("etl", "run", "load", i % 600), f"k{i}", "1")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(1200)))
    s3_backend.set(TaskScope("etl", "run", "load2", 0), "k", "1")  # a neighbour that must stay
    counts = requests_of(moto_server, lambda: s3_backend.clear(TASK, all_map_indices=True))
    assert counts == {"LIST": 2, "BATCH-DELETE": 2}
    remaining = s3_client.list_objects_v2(Bucket=s3_bucket, Prefix="state/")["Contents"]
    assert [o["Key"] for o in remaining] == ["state/task/etl/run/load2/0/k"]
