"""The store's per-operation metrics, the backend used through its public API on moto's S3 server.

Each call of ``get``/``set``/``delete``/``clear`` (sync or async, primary mode) and of the offload
hooks is counted, timed, its body bytes and retries added up, and a failure counted by kind
(missing, corrupt, throttled, other) and re-raised unchanged. Throttling and passing faults come
from the fault-injecting proxy in front of moto (``tests.servers.CountingProxy``). Metrics are on
as a deployment turns them on, Airflow's ``[metrics]`` env vars, and go over UDP to a real StatsD
listener.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.observability import stats
from airflow.sdk.observability.metrics import stats_utils
from airflow.sdk.state import AssetScope, TaskScope

from objstore_backend import metrics
from objstore_backend.backend import ObjectStoreBackend
from objstore_backend.config import StoreSettings
from objstore_backend.errors import BucketNotFoundError, CorruptObjectError, StateObjectMissingError, StoreThrottled
from objstore_backend.layout import object_path
from objstore_backend.store import ObjectStore
from tests.servers import CountingProxy
from tests.statsd_listener import StatsdListener

TASK = TaskScope("etl", "run", "load", -1)
ASSET = AssetScope(name="orders")
VALUE = '{"rows": [1, 2, 3], "note": "' + "x" * 200 + '"}'
#: Plain StatsD: Airflow's default prefix, then ours; tags are name segments in the order given.
PREFIX = "airflow.objstore_backend."


def airflow_stats_from_conf() -> None:
    """Set up this process's Airflow ``Stats`` from ``[metrics]`` as a task runner does when it starts
    (importing the SDK set it up already, from the settings of then)."""
    stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=True)


@pytest.fixture
def statsd(statsd_listener: StatsdListener, monkeypatch: pytest.MonkeyPatch) -> Iterator[StatsdListener]:
    """Metrics on through Airflow's ``[metrics]`` env vars, to a real listener: Airflow's ``Stats``
    and the process's metrics rebuilt from them for this test, and from the settings before after it."""
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_ON", "True")
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PORT", str(statsd_listener.port))
    airflow_stats_from_conf()
    metrics.shutdown()
    yield statsd_listener
    monkeypatch.undo()
    airflow_stats_from_conf()
    metrics.shutdown()


def counters(statsd: StatsdListener) -> dict[str, int]:
    """Each counter's sum by name under :data:`PREFIX`, once the datagrams stopped arriving."""
    statsd.lines()
    return dict(statsd.counters(PREFIX))


def s3_backend(bucket: str, options: dict[str, Any], **settings: Any) -> ObjectStoreBackend:
    return ObjectStoreBackend(StoreSettings(path=f"s3://{bucket}/state", storage_options=options, **settings))


def test_each_operation_is_counted_timed_and_its_bytes_added_up(
    statsd: StatsdListener, s3_bucket: str, s3_options: dict[str, Any], moto_server: Any
) -> None:
    backend = s3_backend(s3_bucket, s3_options)
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
    assert counters(statsd) == {
        "store.set.mode_primary": 3,
        "store.set.bytes.mode_primary": 2 * body + 1,
        "store.get.mode_primary": 3,
        "store.get.bytes.mode_primary": 2 * body,
        "store.delete.mode_primary": 2,
        "store.clear.mode_primary": 2,
        "store.set.mode_offload": 2,
        "store.set.bytes.mode_offload": len(b"[1,2]") + len(b"7"),
        "store.get.mode_offload": 2,
        "store.get.bytes.mode_offload": len(b"[1,2]") + len(b"7"),
    }
    assert all(metric.value >= 0 for metric in statsd.metrics() if metric.type == "ms")
    assert statsd.timers(PREFIX) == {
        f"store.{op}.duration.mode_{mode}": n
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
    statsd: StatsdListener, s3_bucket: str, s3_options: dict[str, Any]
) -> None:
    backend = s3_backend(s3_bucket, s3_options, threshold_bytes=1024)
    ref = backend.serialize_task_state_store_to_ref(value=[1], key="k", scope=TASK)
    assert backend.deserialize_task_state_store_from_ref(ref) == [1]
    assert counters(statsd) == {"store.set.mode_offload": 1, "store.get.mode_offload": 1}


def test_errors_are_counted_by_kind_and_raised_unchanged(
    statsd: StatsdListener, s3_bucket: str, s3_options: dict[str, Any], s3_client: Any
) -> None:
    missing_bucket = s3_backend("no-such-bucket-here", s3_options)
    with pytest.raises(BucketNotFoundError):
        missing_bucket.get(TASK, "k")
    with pytest.raises(BucketNotFoundError):
        missing_bucket.set(TASK, "k", "1")

    backend = s3_backend(s3_bucket, s3_options)
    with pytest.raises(StateObjectMissingError):
        backend.deserialize_task_state_store_from_ref("objstore:" + object_path(TASK, "gone"))

    s3_client.put_object(Bucket=s3_bucket, Key="state/" + object_path(TASK, "foreign"), Body=b"not ours")
    with pytest.raises(CorruptObjectError):
        backend.get(TASK, "foreign")
    with pytest.raises(ValueError, match="JSON"):
        backend.set(TASK, "k", "{not json")

    sent = counters(statsd)
    assert sent["store.get.errors.mode_primary.kind_missing"] == 1
    assert sent["store.set.errors.mode_primary.kind_missing"] == 1
    assert sent["store.get.errors.mode_offload.kind_missing"] == 1
    assert sent["store.get.errors.mode_primary.kind_corrupt"] == 1
    assert sent["store.set.errors.mode_primary.kind_other"] == 1
    assert sent["store.get.mode_primary"] == 2 and sent["store.set.mode_primary"] == 2
    assert not any(".retries." in name for name in sent)  # refusals are never retried


@pytest.mark.parametrize(("fault", "kind"), [("503", "throttled"), ("429", "throttled"), ("500", "other")])
def test_a_lasting_fault_counts_the_policys_retries_and_the_error_kind(
    fault: str,
    kind: str,
    statsd: StatsdListener,
    s3_bucket: str,
    s3_fault_options: dict[str, Any],
    s3_fault_proxy: CountingProxy,
) -> None:
    backend = s3_backend(s3_bucket, s3_fault_options)  # 5 attempts
    rule = s3_fault_proxy.inject(fault, when=lambda r: r.method == "PUT")
    with pytest.raises(StoreThrottled if kind == "throttled" else OSError) as failure:
        backend.set(TASK, "k", VALUE)
    assert "after 5 attempts" in str(failure.value)
    assert isinstance(failure.value, StoreThrottled) is (kind == "throttled")
    assert sum(rule.injected.values()) == 5
    assert counters(statsd) == {
        "store.set.mode_primary": 1,
        "store.set.retries.mode_primary": 4,
        f"store.set.errors.mode_primary.kind_{kind}": 1,
    }


def test_retries_are_attributed_to_the_operation_that_made_them(
    statsd: StatsdListener, s3_bucket: str, s3_fault_options: dict[str, Any], s3_fault_proxy: CountingProxy
) -> None:
    """A passing fault on the set's requests, a get running beside it on the same loop: the set's."""
    backend = s3_backend(s3_bucket, s3_fault_options)
    backend.set(TASK, "read-me", VALUE)
    rule = s3_fault_proxy.inject("503", when=lambda r: r.method == "PUT", times=2)

    async def side_by_side() -> None:
        await asyncio.gather(backend.aset(TASK, "k", VALUE), backend.aget(TASK, "read-me"))

    asyncio.run(side_by_side())
    backend.delete(TASK, "k")  # a sync call, run on fsspec's loop: no retry of its own
    assert sum(rule.injected.values()) == 2
    sent = counters(statsd)
    assert sent["store.set.retries.mode_primary"] == 2
    assert "store.get.retries.mode_primary" not in sent and "store.delete.retries.mode_primary" not in sent
    assert not any(".errors." in name for name in sent)


def test_azure_server_busy_is_throttled(
    statsd: StatsdListener, azure_container: str, azure_fault_options: dict[str, Any], azure_fault_proxy: CountingProxy
) -> None:
    """Azure says it with its own code: 503 ``ServerBusy``."""
    options = {**azure_fault_options, "retry": {"attempts": 3, "base_delay": 0.01}}
    settings = StoreSettings(path=f"abfs://{azure_container}/state", storage_options=options)
    backend = ObjectStoreBackend(settings)
    azure_fault_proxy.inject("503", when=lambda r: r.method == "PUT")
    with pytest.raises(StoreThrottled, match=r"ServerBusy \(HTTP 503\)"):
        backend.set(TASK, "k", VALUE)
    sent = counters(statsd)
    assert sent["store.set.errors.mode_primary.kind_throttled"] == 1
    assert sent["store.set.retries.mode_primary"] == 2


@pytest.mark.airflow
def test_a_real_airflow_run_reports_its_offloaded_state_through_airflows_stats(
    migrated_db: Path, tmp_path: Path, statsd_listener: StatsdListener
) -> None:
    """The example DAG in `airflow dags test`, offload mode on the embedded default, ``[metrics] statsd_on``:
    each state write its task made arrives as ``store.set`` with its bytes, each read as ``store.get``."""
    from tests.test_airflow_runs import BACKEND, run_demo, stored_objects
    from tests.test_metrics import statsd_env

    home = tmp_path / "home"
    run_demo(migrated_db, home, AIRFLOW__WORKERS__STATE_STORE_BACKEND=BACKEND, **statsd_env(statsd_listener))
    objects = stored_objects(ObjectStore(str(home / "state_store")))
    job_id = objects[("submit_job", "-1", "job_id")]  # written on try 1, read back on try 2
    assert counters(statsd_listener) == {
        "store.set.mode_offload": len(objects),  # each key written once
        "store.set.bytes.mode_offload": sum(len(obj.body) for obj in objects.values()),
        "store.get.mode_offload": 1,
        "store.get.bytes.mode_offload": len(job_id.body),
    }
    assert statsd_listener.timers(PREFIX) == {
        "store.set.duration.mode_offload": len(objects),
        "store.get.duration.mode_offload": 1,
    }
