"""The Airflow backend contract, on every kind of store (memory, local disk, S3 on moto)."""

from __future__ import annotations

import asyncio
import gzip
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from airflow.sdk.state import AssetScope, TaskScope
from airflow.state import AssetScope as CoreAssetScope
from airflow.state import TaskScope as CoreTaskScope

from objstore_backend.backend import ObjectStoreBackend
from objstore_backend.errors import StateObjectMissingError
from objstore_backend.layout import object_path
from objstore_backend.refs import reference_refusal

# Runs once, on 3.3: on 3.4 the real runs (test_airflow_runs), the plugin's and test_layout's region
# tests exercise the backend through 3.4's own scopes.

TASK = TaskScope(dag_id="etl", run_id="manual__2026-11-21", task_id="load", map_index=-1)
FUTURE = datetime.now(timezone.utc) + timedelta(days=1)
PAST = datetime.now(timezone.utc) - timedelta(seconds=1)

SCOPES = [
    TASK,
    TaskScope("etl", "manual__2026-11-21", "load", 3),
    AssetScope(asset_id=7),
    AssetScope(name="orders"),
    AssetScope(uri="s3://data/orders/"),
]


@pytest.mark.parametrize("scope", SCOPES, ids=repr)
def test_set_get_delete_round_trip(backend: ObjectStoreBackend, scope: Any) -> None:
    value = '{"job_id": "abc-123", "n": [1, 2.5, null, true], "nested": {"é": "ünï"}}'
    assert backend.get(scope, "k") is None
    backend.set(scope, "k", value)
    assert backend.get(scope, "k") == value
    backend.set(scope, "k", '"overwritten"')
    assert backend.get(scope, "k") == '"overwritten"'
    backend.delete(scope, "k")
    assert backend.get(scope, "k") is None
    backend.delete(scope, "k")  # deleting a missing key is a no-op


def test_core_and_sdk_scopes_are_the_same_key(backend: ObjectStoreBackend) -> None:
    backend.set(CoreTaskScope("etl", "manual__2026-11-21", "load", -1), "k", "1")
    assert backend.get(TASK, "k") == "1"
    backend.set(CoreAssetScope(name="orders"), "k", "2")
    assert backend.get(AssetScope(name="orders"), "k") == "2"


def test_asset_id_name_and_uri_are_separate_namespaces(backend: ObjectStoreBackend) -> None:
    backend.set(AssetScope(asset_id=1), "k", '"by id"')
    backend.set(AssetScope(name="1"), "k", '"by name"')
    backend.set(AssetScope(uri="1"), "k", '"by uri"')
    assert backend.get(AssetScope(asset_id=1), "k") == '"by id"'
    assert backend.get(AssetScope(name="1"), "k") == '"by name"'
    assert backend.get(AssetScope(uri="1"), "k") == '"by uri"'
    backend.clear(AssetScope(name="1"))
    assert backend.get(AssetScope(name="1"), "k") is None
    assert backend.get(AssetScope(asset_id=1), "k") == '"by id"'
    assert backend.get(AssetScope(uri="1"), "k") == '"by uri"'


def test_expiry_in_metadata_and_expired_keys_are_invisible(backend: ObjectStoreBackend) -> None:
    backend.set(TASK, "live", "1", expires_at=FUTURE)
    backend.set(TASK, "dead", "2", expires_at=PAST)
    backend.set(TASK, "forever", "3", expires_at=None)
    assert backend.get(TASK, "live") == "1"
    assert backend.get(TASK, "dead") is None
    assert backend.get(TASK, "forever") == "3"
    stored = backend.store.read(object_path(TASK, "live"))
    assert stored.metadata.mode == "primary"
    assert abs((stored.metadata.expires_at - FUTURE).total_seconds()) < 0.001
    assert backend.store.read(object_path(TASK, "forever")).metadata.expires_at is None
    # rewriting an expired key with a live expiry brings it back
    backend.set(TASK, "dead", "4", expires_at=FUTURE)
    assert backend.get(TASK, "dead") == "4"


def test_naive_expires_at_is_refused(backend: ObjectStoreBackend) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        backend.set(TASK, "k", "1", expires_at=datetime(2030, 1, 1))
    assert backend.get(TASK, "k") is None


def test_clear_one_map_index_and_all(backend: ObjectStoreBackend) -> None:
    def scope(task_id: str, index: int) -> TaskScope:
        return TaskScope("etl", "run", task_id, index)

    for index in (-1, 1, 10, 11):
        backend.set(scope("t", index), "a", str(index))
        backend.set(scope("t", index), "b", str(index))
    backend.set(scope("t2", 1), "a", '"other task"')
    backend.set(TaskScope("etl", "run2", "t", 1), "a", '"other run"')

    backend.clear(scope("t", 1))
    assert backend.get(scope("t", 1), "a") is None and backend.get(scope("t", 1), "b") is None
    assert backend.get(scope("t", 10), "a") == "10"
    assert backend.get(scope("t", 11), "b") == "11"
    assert backend.get(scope("t", -1), "a") == "-1"

    backend.clear(scope("t", 0), all_map_indices=True)
    for index in (-1, 1, 10, 11):
        assert backend.get(scope("t", index), "a") is None
    assert backend.get(scope("t2", 1), "a") == '"other task"'
    assert backend.get(TaskScope("etl", "run2", "t", 1), "a") == '"other run"'


def test_clear_of_an_empty_scope_is_fine(backend: ObjectStoreBackend) -> None:
    backend.clear(TaskScope("never", "wrote", "state"))
    backend.clear(AssetScope(name="nothing"), all_map_indices=True)


def test_async_methods(backend: ObjectStoreBackend) -> None:
    async def scenario() -> list[Any]:
        await backend.aset(TASK, "k", '{"a": 1}', expires_at=FUTURE)
        await backend.aset(TASK, "gone", "1", expires_at=PAST)
        seen = [await backend.aget(TASK, "k"), await backend.aget(TASK, "gone")]
        await backend.adelete(TASK, "k")
        seen.append(await backend.aget(TASK, "k"))
        await backend.aset(AssetScope(name="a"), "w", "5")
        await backend.aclear(AssetScope(name="a"))
        seen.append(await backend.aget(AssetScope(name="a"), "w"))
        return seen

    assert asyncio.run(scenario()) == ['{"a": 1}', None, None, None]
    # a second event loop gets its own filesystem instance and works as well
    assert asyncio.run(backend.aget(TASK, "k")) is None
    backend.set(TASK, "k", "2")
    assert asyncio.run(backend.aget(TASK, "k")) == "2"


def test_sync_calls_work_inside_a_running_event_loop(backend: ObjectStoreBackend) -> None:
    """The triggerer calls the sync hooks from inside its loop."""

    async def inside_loop() -> Any:
        ref = backend.serialize_task_state_store_to_ref(value={"x": 1}, key="k", scope=TASK)
        return backend.deserialize_task_state_store_from_ref(ref)

    assert asyncio.run(inside_loop()) == {"x": 1}


# -- offload mode ---------------------------------------------------------------------


@pytest.mark.parametrize("scope", [TASK, AssetScope(name="orders")], ids=["task", "asset"])
def test_offload_writes_the_value_and_returns_a_deterministic_ref(backend: ObjectStoreBackend, scope: Any) -> None:
    kind = "task" if isinstance(scope, TaskScope) else "asset"
    serialize = getattr(backend, f"serialize_{kind}_state_store_to_ref")
    deserialize = getattr(backend, f"deserialize_{kind}_state_store_from_ref")
    value = {"rows": list(range(100)), "name": "ünïcode"}
    ref = serialize(value=value, key="big", scope=scope)
    assert ref == serialize(value={"other": True}, key="big", scope=scope)  # same (scope, key), same ref
    assert deserialize(ref) == {"other": True}
    stored = backend.store.read(object_path(scope, "big"))
    assert stored.metadata.mode == "offload" and stored.metadata.expires_at is None
    assert orjson.loads(stored.body) == {"other": True}


def test_offload_ref_to_a_missing_object_raises_naming_the_path(backend: ObjectStoreBackend) -> None:
    ref = backend.serialize_task_state_store_to_ref(value=[1], key="k", scope=TASK)
    backend.delete(TASK, "k")
    with pytest.raises(StateObjectMissingError, match=r"task/etl/manual__2026-11-21/load/-1/k.*missing"):
        backend.deserialize_task_state_store_from_ref(ref)


@pytest.mark.parametrize(
    "ref", ["s3://elsewhere/secret", "objstore:../../etc/passwd", "objstore:task/a", "plain text", ""]
)
def test_foreign_refs_are_refused_without_io(backend: ObjectStoreBackend, ref: str) -> None:
    with pytest.raises(ValueError, match="not a state reference written by objstore-backend"):
        backend.deserialize_task_state_store_from_ref(ref)


def test_threshold_keeps_small_values_inline(make_backend: Any) -> None:
    backend = make_backend(threshold_bytes=64)
    small = backend.serialize_task_state_store_to_ref(value={"a": 1}, key="small", scope=TASK)
    large = backend.serialize_task_state_store_to_ref(value={"a": "x" * 100}, key="large", scope=TASK)
    assert small.startswith("inline:") and large.startswith("objstore:")
    assert backend.deserialize_task_state_store_from_ref(small) == {"a": 1}
    assert backend.deserialize_task_state_store_from_ref(large) == {"a": "x" * 100}
    assert backend.store.read(object_path(TASK, "small")) is None  # no object written


def test_compression_is_read_back_whatever_the_setting(make_backend: Any) -> None:
    gzipped = make_backend(compression="gzip")
    plain = make_backend()
    value = {"text": "abc" * 1000}
    ref = gzipped.serialize_task_state_store_to_ref(value=value, key="k", scope=TASK)
    gzipped.set(AssetScope(name="a"), "k", '"compressed"')
    store = gzipped.store
    raw_body, _ = store._run(store.transport.read, store.full_path(object_path(TASK, "k")))
    assert gzip.decompress(raw_body) == orjson.dumps(value)  # really gzip, and no suffix in the path
    assert plain.deserialize_task_state_store_from_ref(ref) == value
    assert plain.get(AssetScope(name="a"), "k") == '"compressed"'


# -- both modes configured at once ---------------------------------------------------------


def test_same_class_on_both_sides_loses_nothing(backend: ObjectStoreBackend) -> None:
    """The server's set() is handed the worker's wrapped ref for the same scope and key."""
    ref = backend.serialize_task_state_store_to_ref(value={"job": 42}, key="k", scope=TASK)
    wrapped = orjson.dumps({"__airflow_state_ref__": ref}).decode()
    backend.set(TASK, "k", wrapped, expires_at=FUTURE)
    assert backend.deserialize_task_state_store_from_ref(ref) == {"job": 42}
    answered = backend.get(TASK, "k")
    assert orjson.loads(answered) == {"__airflow_state_ref__": ref}
    assert backend.store.read(object_path(TASK, "k")).metadata.expires_at is not None
    # the expiry Airflow gave is honoured
    backend.set(TASK, "k", wrapped, expires_at=PAST)
    assert backend.get(TASK, "k") is None


def test_a_wrapped_ref_for_another_key_is_stored_verbatim(backend: ObjectStoreBackend) -> None:
    other = orjson.dumps({"__airflow_state_ref__": "objstore:" + object_path(TASK, "other")}).decode()
    backend.set(TASK, "k", other)
    assert backend.get(TASK, "k") == other


def _wrapped(ref: str) -> str:
    return orjson.dumps({"__airflow_state_ref__": ref}).decode()


@pytest.mark.parametrize("worker_scope", [AssetScope(name="orders"), AssetScope(uri="s3://data/orders/")], ids=repr)
def test_both_modes_the_server_adopts_the_workers_asset_object(backend: ObjectStoreBackend, worker_scope: Any) -> None:
    """The worker writes under asset/name/ (or uri/), the server's scope is asset/id/: another path."""
    server_scope = AssetScope(asset_id=7)
    ref = backend.serialize_asset_state_store_to_ref(value={"watermark": 100}, key="w", scope=worker_scope)
    backend.set(server_scope, "w", _wrapped(ref))
    adopted = backend.store.read(object_path(server_scope, "w"))
    assert adopted.metadata.mode == "offload" and adopted.metadata.adopted
    # the server's answer no longer depends on the worker's object, which nothing references any more
    backend.store.delete(object_path(worker_scope, "w"))
    answered = orjson.loads(backend.get(server_scope, "w"))["__airflow_state_ref__"]
    assert backend.deserialize_asset_state_store_from_ref(answered) == {"watermark": 100}


@pytest.mark.parametrize("worker_scope", [AssetScope(name="orders"), AssetScope(uri="s3://data/orders/")], ids=repr)
def test_an_adopted_asset_copy_records_its_origin_so_only_its_asset_follows_it(
    backend: ObjectStoreBackend, worker_scope: Any
) -> None:
    """The worker cannot tell asset ids apart: the copy's recorded origin (kept in the object's
    metadata on every store) says whose object it is."""
    ref = backend.serialize_asset_state_store_to_ref(value=[1] * 9, key="w", scope=worker_scope)
    backend.set(AssetScope(asset_id=7), "w", _wrapped(ref))
    copy = object_path(AssetScope(asset_id=7), "w")
    origin = backend.store.read(copy).metadata.origin
    assert origin == object_path(worker_scope, "w") and backend.store.head(copy).origin == origin
    assert reference_refusal(copy, worker_scope, "w", origin=origin) is None
    refused = reference_refusal(copy, AssetScope(name="payroll"), "w", origin=origin)
    assert refused is not None and f"names {copy}, which is not the object of this key" in refused
    assert reference_refusal(copy, worker_scope, "other", origin=origin) is not None  # another key's copy
    # task keys are adopted in place: nothing to record
    task_ref = backend.serialize_task_state_store_to_ref(value=[2] * 9, key="k", scope=TASK)
    backend.set(TASK, "k", _wrapped(task_ref))
    assert backend.store.read(object_path(TASK, "k")).metadata.origin is None


def test_an_offload_object_the_server_never_adopted_is_not_a_primary_key(backend: ObjectStoreBackend) -> None:
    """Left from offload mode (its DB row expired or dropped before a switch): dead, until a set replaces it."""
    backend.serialize_task_state_store_to_ref(value={"dead": 1}, key="k", scope=TASK)
    assert backend.get(TASK, "k") is None
    assert asyncio.run(backend.aget(TASK, "k")) is None
    backend.set(TASK, "k", '"alive"')
    assert backend.get(TASK, "k") == '"alive"'


@pytest.mark.parametrize("scope", [TASK, AssetScope(asset_id=7), AssetScope(name="orders")], ids=repr)
def test_a_value_that_looks_like_our_reference_round_trips(backend: ObjectStoreBackend, scope: Any) -> None:
    """Only a reference to an offload object the worker wrote is adopted; anything else is a value."""
    for key, before in (("new", None), ("existing", '"old"')):
        if before is not None:
            backend.set(scope, key, before)
        lookalike = _wrapped("objstore:" + object_path(scope, key))
        backend.set(scope, key, lookalike)
        assert backend.get(scope, key) == lookalike
        stored = backend.store.read(object_path(scope, key))
        assert (bytes(stored.body).decode(), stored.metadata.mode) == (lookalike, "primary")
    # a primary value under asset/name/ is not the worker's object either
    backend.set(AssetScope(name="orders"), "w", '"primary"')
    lookalike = _wrapped("objstore:" + object_path(AssetScope(name="orders"), "w"))
    backend.set(AssetScope(asset_id=7), "w", lookalike)
    assert backend.get(AssetScope(asset_id=7), "w") == lookalike


# -- hostile input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, error",
    [
        (None, ValueError),
        (float("nan"), ValueError),
        ({"deep": [1, float("inf")]}, ValueError),
        ({1: "non-str key"}, TypeError),
        ({"a", "set"}, TypeError),
        (b"bytes", TypeError),
        (2**70, TypeError),
        (object(), TypeError),
    ],
    ids=["None", "NaN", "Infinity", "int-key", "set", "bytes", "huge-int", "object"],
)
def test_bad_offload_values_fail_before_any_io(backend: ObjectStoreBackend, value: Any, error: type) -> None:
    with pytest.raises(error):
        backend.serialize_task_state_store_to_ref(value=value, key="k", scope=TASK)
    assert list(backend.store.iter_objects()) == []


@pytest.mark.parametrize("value", ["NaN", "[Infinity]", "{'a': 1}", "", "{} {}"], ids=repr)
def test_bad_primary_values_fail_before_any_io(backend: ObjectStoreBackend, value: str) -> None:
    with pytest.raises(ValueError, match="not a valid JSON document"):
        backend.set(TASK, "k", value)
    with pytest.raises(TypeError):
        backend.set(TASK, "k", {"not": "a str"})  # type: ignore[arg-type]
    assert list(backend.store.iter_objects()) == []


HOSTILE = [
    "a/b",
    "..",
    ".",
    "../../escape",
    "",
    "%2F",
    "%",
    "ünï/cödé",
    "\x00\x01\n\t",
    "~",
    "region=x",
    "a" * 2000,
]


@pytest.mark.parametrize("hostile", HOSTILE, ids=lambda s: repr(s[:12]))
def test_hostile_ids_stay_in_their_prefix_and_round_trip(backend: ObjectStoreBackend, hostile: str) -> None:
    scopes = [
        TaskScope(hostile, hostile, hostile, -1),
        TaskScope("d", "r", hostile, 2),
        AssetScope(name=hostile),
        AssetScope(uri=hostile),
    ]
    for i, scope in enumerate(scopes):
        backend.set(scope, hostile, str(i))
        backend.set(scope, "neighbour", '"n"')
    for i, scope in enumerate(scopes):
        assert backend.get(scope, hostile) == str(i)
    stored = [o.path for o in backend.store.iter_objects()]
    assert len(stored) == 2 * len(scopes)
    assert all(len(p.encode()) < 1024 - 150 and ".." not in p.split("/") for p in stored)
    backend.clear(scopes[0])
    assert backend.get(scopes[1], hostile) == "1" and backend.get(scopes[0], "neighbour") is None


def test_region_id_is_part_of_the_identity_when_set(backend: ObjectStoreBackend) -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class RegionTaskScope:  # Airflow 3.4's TaskScope
        dag_id: str
        run_id: str
        task_id: str
        map_index: int = -1
        region_id: uuid.UUID = uuid.UUID(int=0)

    outside = RegionTaskScope("d", "r", "t")
    inside = RegionTaskScope("d", "r", "t", region_id=uuid.uuid4())
    backend.set(outside, "k", '"outside"')
    backend.set(inside, "k", '"inside"')
    assert backend.get(TaskScope("d", "r", "t"), "k") == '"outside"'  # all-zero region: 3.3 path
    assert backend.get(inside, "k") == '"inside"'
    backend.clear(inside, all_map_indices=True)
    assert backend.get(outside, "k") == '"outside"'


@pytest.mark.airflow34
def test_clearing_a_region_reaches_only_that_regions_task_and_the_zero_region_only_its_own(
    backend: ObjectStoreBackend,
) -> None:
    region, other_region = uuid.uuid4(), uuid.uuid4()
    zero = [CoreTaskScope("d", "r", "t", index) for index in (-1, 0, 1)]
    mine = [CoreTaskScope("d", "r", "t", region_id=region, region_index=index) for index in (0, 1, 10)]
    others = [
        CoreTaskScope("d", "r", "t", region_id=other_region, region_index=1),
        CoreTaskScope("d", "r", "t2", region_id=region, region_index=1),
        CoreTaskScope("d", "r", f"region={region}", 1),  # a zero-region task named like the region
    ]
    for scope in zero + mine + others:
        backend.set(scope, "k", orjson.dumps(repr(scope)).decode())
    before = len(list(backend.store.iter_objects()))
    backend.clear(mine[1], all_map_indices=True)
    assert [backend.get(scope, "k") for scope in mine] == [None] * 3
    assert len(list(backend.store.iter_objects())) == before - 3
    assert all(backend.get(scope, "k") == orjson.dumps(repr(scope)).decode() for scope in zero + others)
    backend.clear(zero[0], all_map_indices=True)
    assert [backend.get(scope, "k") for scope in zero] == [None] * 3
    assert all(backend.get(scope, "k") == orjson.dumps(repr(scope)).decode() for scope in others)


@pytest.mark.airflow34
def test_a_hostile_region_id_is_refused_and_nothing_is_written(backend: ObjectStoreBackend) -> None:
    for region in ("../../escape", str(uuid.uuid4())):
        scope = CoreTaskScope("d", "r", "t", region_id=region, region_index=0)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="region_id must be a UUID"):
            backend.set(scope, "k", "1")
        with pytest.raises(TypeError, match="region_id must be a UUID"):
            backend.clear(scope, all_map_indices=True)
    assert list(backend.store.iter_objects()) == []


def test_corrupted_and_foreign_objects_are_reported_not_swallowed(backend: ObjectStoreBackend) -> None:
    from objstore_backend.errors import CorruptObjectError

    path = backend.store.full_path(object_path(TASK, "k"))
    backend.store.fs.makedirs(backend.store.fs._parent(path), exist_ok=True)
    backend.store.fs.pipe_file(path, b'{"written": "by hand"}')
    with pytest.raises(CorruptObjectError, match="not a state object"):
        backend.get(TASK, "k")
    backend.set(TASK, "k", "1")
    assert backend.get(TASK, "k") == "1"
