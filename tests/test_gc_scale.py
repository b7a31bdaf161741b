"""The GC at scale: shards and listers on disjoint key ranges, the index that spares HEADs, races.

Request counts come from the counting moto server (what crossed the wire). A few thousand
objects stand in for millions: what is asserted are ratios and counts per changed key.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from airflow.sdk.state import TaskScope

from objstore_backend import cli, gc_index
from objstore_backend.backend import ObjectStoreBackend
from objstore_backend.config import StoreSettings
from objstore_backend.discovery import discover, discovery_budget
from objstore_backend.gc import GCOptions, GCReport, default_run_id, run_gc
from objstore_backend.gc_index import SweepIndex, _UnitWriter
from objstore_backend.layout import RESERVED_PREFIX, encode_segment, object_path, parse
from objstore_backend.partition import KeyRange, Plan, balanced_cuts, next_plan, rebalance
from objstore_backend.store import ObjectMetadata, ObjectStore

NOW = datetime.now(timezone.utc)
SOON = NOW + timedelta(hours=1)
LATER = NOW + timedelta(days=2)
PAST = NOW - timedelta(minutes=1)
NEXT_NIGHT = NOW + timedelta(hours=3)  # SOON has passed, LATER has not


def skewed_keys(total: int) -> list[tuple[TaskScope, str]]:
    """One DAG holds half the keys, twelve small ones share the rest."""
    keys = [(TaskScope("big", f"run{i // 50:03}", f"t{i % 5}", i % 10), f"k{i}") for i in range(total // 2)]
    keys += [(TaskScope(f"dag{i % 12:02}", f"run{i // 60}", "t", -1), f"k{i}") for i in range(total - len(keys))]
    return keys


def fill(backend: ObjectStoreBackend, keys: list[tuple[TaskScope, str]], expires_at: datetime | None) -> None:
    with ThreadPoolExecutor(24) as pool:
        list(pool.map(lambda item: backend.set(item[0], item[1], "1", expires_at=expires_at), keys))


@pytest.fixture
def s3_backend(s3_bucket: str, s3_options: dict[str, Any]) -> ObjectStoreBackend:
    return ObjectStoreBackend(StoreSettings(path=f"s3://{s3_bucket}/state", storage_options=s3_options))


def sweep_shards(store: ObjectStore, shards: int, moto: Any, **options: Any) -> tuple[list[GCReport], dict[str, int]]:
    moto.log.clear()
    reports = [run_gc(store, GCOptions(shard=(i, shards), concurrency=16, **options)) for i in range(shards)]
    return reports, dict(moto.log.by_kind())


def test_shards_split_the_listing_balance_a_skewed_bucket_and_head_only_what_changed(
    s3_backend: ObjectStoreBackend, moto_server: Any
) -> None:
    keys = skewed_keys(2400)
    fill(s3_backend, keys, SOON)
    store = s3_backend.store
    pages = 3  # one listing of 2,400 keys

    first, counts = sweep_shards(store, 4, moto_server)
    assert sum(r.scanned for r in first) == 2400 and sum(r.errors for r in first) == 0
    assert counts["HEAD"] == 2400 == sum(r.metadata_reads for r in first)
    assert counts["LIST"] == sum(r.list_requests for r in first) <= 1.25 * pages + 3 * 4

    rewritten = keys[::100]  # 1%, with a later expiry
    fill(s3_backend, rewritten, LATER)
    second, counts = sweep_shards(store, 4, moto_server)
    assert sum(r.scanned for r in second) == 2400
    assert counts["HEAD"] == len(rewritten) == sum(r.metadata_reads for r in second)
    assert sum(r.index_hits for r in second) == 2400 - len(rewritten)
    assert counts["LIST"] <= 1.25 * pages + 3 * 4
    # the first sweep counted the keys: the big DAG is split and the shards balance
    sizes = [r.scanned for r in second]
    assert max(sizes) <= 1.5 * (sum(sizes) / len(sizes)), sizes

    # the next night: the keys that expired SOON go, decided from the index; the rewritten stay
    third = [run_gc(store, GCOptions(shard=(i, 4), now=NEXT_NIGHT)) for i in range(4)]
    assert sum(r.deleted for r in third) == 2400 - len(rewritten)
    assert sum(r.metadata_reads for r in third) == 0
    assert all(s3_backend.get(scope, key) == "1" for scope, key in rewritten)


def test_rewrites_between_runs_are_read_again_never_decided_from_the_old_entry(
    s3_backend: ObjectStoreBackend, moto_server: Any
) -> None:
    scope = TaskScope("d", "r", "t")
    for key in ("later", "earlier", "recreated", "unchanged"):
        s3_backend.set(scope, key, '"v"', expires_at=SOON)
    assert run_gc(s3_backend.store).metadata_reads == 4
    s3_backend.set(scope, "later", '"v"', expires_at=LATER)  # same value, later expiry
    s3_backend.set(scope, "earlier", '"v"', expires_at=PAST)
    s3_backend.delete(scope, "recreated")
    s3_backend.set(scope, "recreated", '"v"', expires_at=LATER)
    report = run_gc(s3_backend.store, GCOptions(now=NEXT_NIGHT))
    assert (report.metadata_reads, report.index_hits) == (3, 1)
    assert (report.deleted, report.live, report.errors) == (2, 2, 0)
    assert s3_backend.get(scope, "later") == '"v"' and s3_backend.get(scope, "recreated") == '"v"'
    assert s3_backend.store.head(object_path(scope, "earlier")) is None
    assert s3_backend.store.head(object_path(scope, "unchanged")) is None


def _index_objects(store: ObjectStore, suffix: str) -> list[str]:
    root = store.full_path(RESERVED_PREFIX)
    return sorted(p for p in store.fs.find(root) if p.endswith(suffix))


def test_a_damaged_index_part_is_reported_and_its_unit_gets_a_full_pass(
    s3_backend: ObjectStoreBackend, moto_server: Any
) -> None:
    keys = [(TaskScope("d", "r", "t", i), "k") for i in range(300)]
    fill(s3_backend, keys, SOON)
    run_gc(s3_backend.store)
    [part, *_] = _index_objects(s3_backend.store, ".gz")
    s3_backend.store.fs.pipe_file(part, b"\x1f\x8b not gzip at all")
    moto_server.log.clear()
    report = run_gc(s3_backend.store, GCOptions(now=NEXT_NIGHT, dry_run=True))
    assert report.index_damaged == 1 and report.errors == 0
    assert any("index" in sample and "unreadable" in sample for sample in report.error_samples)
    assert report.metadata_reads == moto_server.log.by_kind()["HEAD"] > 0  # that unit's objects, read again
    assert report.expired == 300  # every decision still made, none of them wrong

    # a plan or manifest from another base (copied over) is foreign: ignored, reported
    [manifest, *_] = _index_objects(s3_backend.store, ".json")
    document = orjson.loads(s3_backend.store.fs.cat_file(manifest))
    s3_backend.store.fs.pipe_file(manifest, orjson.dumps({**document, "base": "s3://elsewhere/state"}))
    report = run_gc(s3_backend.store, GCOptions(now=NEXT_NIGHT, dry_run=True))
    assert report.index_damaged >= 1 and report.expired == 300 and report.metadata_reads > 0


def test_an_index_left_by_a_killed_gc_is_ignored(
    s3_backend: ObjectStoreBackend, moto_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    scope = TaskScope("d", "r", "t")
    s3_backend.set(scope, "a", '"v"', expires_at=SOON)
    s3_backend.set(scope, "b", '"v"', expires_at=SOON)
    run_gc(s3_backend.store)
    s3_backend.set(scope, "a", '"v"', expires_at=LATER)

    async def killed_before_the_manifest(self: _UnitWriter, replaced: Any) -> None:
        await self._flush(self.unit.upto)  # the parts are written...
        raise OSError("killed")  # ...and the process dies before publishing them

    with monkeypatch.context() as patch:
        patch.setattr(_UnitWriter, "publish", killed_before_the_manifest)
        assert run_gc(s3_backend.store).errors == 1
    report = run_gc(s3_backend.store, GCOptions(now=NEXT_NIGHT))
    assert (report.index_damaged, report.metadata_reads, report.index_hits) == (0, 1, 1)
    assert s3_backend.get(scope, "a") == '"v"' and s3_backend.store.head(object_path(scope, "b")) is None


def test_two_gcs_of_one_shard_at_once_lose_nothing_and_leave_a_usable_index(
    s3_backend: ObjectStoreBackend, moto_server: Any
) -> None:
    expired = [(TaskScope("d", f"r{i % 4}", "t", i), "old") for i in range(200)]
    live = [(TaskScope("d", f"r{i % 4}", "t", i), "live") for i in range(200)]
    fill(s3_backend, expired, PAST)
    fill(s3_backend, live, LATER)
    run_gc(s3_backend.store, GCOptions(dry_run=True))  # a plan exists, as on any night but the first
    reports: list[GCReport] = []
    threads = [
        threading.Thread(
            target=lambda: reports.append(run_gc(s3_backend.store, GCOptions(concurrency=8, batched_deletes=False)))
        )
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r.errors for r in reports) == 0
    assert sum(r.deleted for r in reports) >= 200
    assert all(s3_backend.get(scope, key) == "1" for scope, key in live)
    assert all(s3_backend.store.head(object_path(scope, key)) is None for scope, key in expired)
    after = run_gc(s3_backend.store)
    assert (after.index_damaged, after.metadata_reads, after.index_hits, after.live) == (0, 0, 200, 200)


def test_full_reads_everything_again(s3_backend: ObjectStoreBackend, moto_server: Any) -> None:
    fill(s3_backend, [(TaskScope("d", "r", "t", i), "k") for i in range(50)], LATER)
    run_gc(s3_backend.store)
    assert run_gc(s3_backend.store).metadata_reads == 0
    assert run_gc(s3_backend.store, GCOptions(full=True)).metadata_reads == 50


def test_the_index_can_live_elsewhere(s3_backend: ObjectStoreBackend, s3_bucket: str, tmp_path: Any) -> None:
    fill(s3_backend, [(TaskScope("d", "r", "t", i), "k") for i in range(20)], LATER)
    options = GCOptions(index_url=f"s3://{s3_bucket}/gc-index-of-state")
    assert run_gc(s3_backend.store, options).metadata_reads == 20
    assert run_gc(s3_backend.store, options).index_hits == 20
    assert not _index_objects(s3_backend.store, "")  # nothing under the base's reserved prefix


@pytest.mark.parametrize("store_kind", ["memory", "local", "s3", "gcs"])
def test_a_key_range_lists_exactly_its_keys(store_location: tuple[str, dict[str, Any]]) -> None:
    url, options = store_location
    backend = ObjectStoreBackend(StoreSettings(path=url, storage_options=options))
    keys = [(TaskScope(dag, "r", "t", i), "k") for dag in ("a", "a-b", "b", "c") for i in (-1, 1, 10)]
    for scope, key in keys:
        backend.set(scope, key, "1")
    paths = sorted(object_path(scope, key) for scope, key in keys)
    store = backend.store

    def listed(after: str | None, upto: str | None) -> list[str]:
        async def collect() -> list[str]:
            edge = lambda key: None if key is None else store.full_path(key)  # noqa: E731
            found = []
            async for page in store.transport.list_pages(store.fs, store.full_path(""), edge(after), edge(upto)):
                found += [store.relative(entry.path) for entry in page]
            return found

        return store._run(lambda fs: collect())

    bounds = ["task/a-b/", paths[5], "task/c/"]  # a prefix, a key, a prefix
    slices = [listed(r.after, r.upto) for r in Plan(tuple(bounds), (1, 1, 1, 1)).units]
    assert sum(slices, []) == paths  # in key order, every key once
    assert slices[1][-1] == paths[5] and slices[2][0] == paths[6]
    assert all(path.startswith("task/c/") for path in slices[3])


def test_the_reserved_prefix_is_never_state_and_never_shown(backend: ObjectStoreBackend, capsys: Any) -> None:
    assert not encode_segment("~gc-index").startswith("~") and parse(RESERVED_PREFIX + "plan.json") is None
    backend.set(TaskScope("d", "r", "t"), "k", "1", expires_at=LATER)
    run_gc(backend.store)
    listed = [o.path for o in backend.store.iter_objects()]
    assert listed == [object_path(TaskScope("d", "r", "t"), "k")]  # the index exists but is not listed
    report = run_gc(backend.store)
    assert (report.scanned, report.foreign) == (1, 0)
    from objstore_backend.audit import run_audit

    assert run_audit(backend.store).inventory.foreign_count == 0


def test_balanced_cuts_and_rebalance_split_a_large_unit() -> None:
    assert balanced_cuts([1, 1, 1, 1], 2) == [0, 2, 4]
    assert balanced_cuts([10, 1, 1, 1, 1, 1], 2) == [0, 1, 6]
    assert balanced_cuts([], 3) == [0, 0, 0, 0]
    # a first plan: three DAG units, one of them 5,000 keys in parts of 250
    pieces = [(KeyRange(None, "task/a/"), 100)]
    edges = ["task/a/", *[f"task/a/{n:04}" for n in range(250, 5000, 250)], "task/b/"]
    pieces += [(KeyRange(edges[i], edges[i + 1]), 250) for i in range(len(edges) - 1)]
    pieces += [(KeyRange("task/b/", None), 100)]
    plan = rebalance(pieces, Plan(("task/a/", "task/b/"), (1, 1, 1)))
    assert plan.observed and sum(plan.weights) == 5200 and plan.previous == ("task/a/", "task/b/")
    assert set(plan.bounds) <= {edge for edge in edges} | {None}  # cut only where the index can be read
    shards = [sum(plan.weights[i] for i in plan.shard_units(s, 4)) for s in range(4)]
    assert max(shards) <= 1.5 * 5200 / 4, shards


def test_a_counted_plan_stays_through_ordinary_churn_and_takes_new_weights_when_keys_move() -> None:
    plan = Plan(tuple(f"task/d{i:03}/" for i in range(1, 256)), (100,) * 256, True, 100, generation=3)
    pieces = [(unit, 100) for unit in plan.units]
    churn = [100 + (i % 3) - 1 for i in range(256)]  # a night's writes and deletes
    assert next_plan(plan, pieces, churn) is None
    deleted = [0 if i < 128 else 100 for i in range(256)]  # the DAGs of the first half deleted
    reweighed = next_plan(plan, pieces, deleted)
    assert reweighed is not None and reweighed.bounds == plan.bounds and reweighed.weights == tuple(deleted)
    assert reweighed.generation == 4 and reweighed.shard_units(0, 2) == range(0, 192)  # was range(0, 128)
    edges = [None, *[f"task/d000/{n:05}" for n in range(400, 40_000, 400)], "task/d001/"]
    parts = [(KeyRange(edges[i], edges[i + 1]), 400) for i in range(100)]  # the first unit's, grown
    grown = next_plan(plan, parts + pieces[1:], [40_000, *churn[1:]])  # past twice its target: cut again
    assert grown is not None and sum(grown.weights) == 65_500 and max(grown.weights) < 1_000


def test_the_command_validates_and_reports_the_new_fields(
    s3_backend: ObjectStoreBackend, s3_bucket: str, s3_options: dict[str, Any], capsys: Any
) -> None:
    base = ["gc", "--path", f"s3://{s3_bucket}/state", "--storage-options", orjson.dumps(s3_options).decode()]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*base, "--list-concurrency", "0"])
    assert exit_info.value.code == 2 and "list-concurrency" in capsys.readouterr().err
    s3_backend.set(TaskScope("d", "r", "t"), "k", "1", expires_at=LATER)
    assert cli.main([*base, "--json", "--list-concurrency", "2", "--full"]) == 0
    summary = orjson.loads(capsys.readouterr().out.splitlines()[-1])
    assert {k: summary[k] for k in ("metadata_reads", "index_hits", "ranges")} == {
        "metadata_reads": 1,
        "index_hits": 0,
        "ranges": 1,
    }
    assert summary["list_requests"] >= 1


def one_run_holds_half(total: int) -> list[str]:
    """Keys where one DAG run (a task mapped 250 ways) holds half, twelve small DAGs the rest."""
    keys = [f"task/etl/manual__1/t{i % 4}/{i // 4 % 250}/k{i}" for i in range(total // 2)]
    keys += [f"task/dag{i % 12:02}/run{i // 120:03}/t{i % 3}/-1/k{i}" for i in range(total - len(keys))]
    return keys


def seed(store: ObjectStore, keys: list[str]) -> None:
    metadata = ObjectMetadata("primary", LATER)

    async def write_all() -> None:
        semaphore = asyncio.Semaphore(32)

        async def one(key: str) -> None:
            async with semaphore:
                await store.awrite(key, b"1", metadata)

        await asyncio.gather(*(one(key) for key in keys))

    asyncio.run(write_all())


def shard_order(order: str, shards: int) -> list[int]:
    forward = list(range(shards))
    return {"forward": forward, "reverse": forward[::-1], "interleaved": forward[::2] + forward[1::2]}[order]


@pytest.mark.parametrize(("shards", "order"), [(4, "forward"), (8, "reverse"), (16, "interleaved")])
def test_the_first_run_balances_a_bucket_where_one_dag_run_holds_half_the_keys(
    s3_bucket: str, s3_options: dict[str, Any], moto_server: Any, shards: int, order: str
) -> None:
    store = ObjectStore(f"s3://{s3_bucket}/state", s3_options)
    keys = one_run_holds_half(1600)
    seed(store, keys)
    moto_server.log.clear()
    reports = {i: run_gc(store, GCOptions(shard=(i, shards), concurrency=16)) for i in shard_order(order, shards)}
    heads = Counter(path for method, path, _ in moto_server.log.snapshot() if method == "HEAD")
    sizes = [r.scanned for r in reports.values()]
    assert sum(sizes) == len(keys) and sum(r.errors for r in reports.values()) == 0
    assert len(heads) == len(keys) and set(heads.values()) == {1}  # every key read once, by one shard
    assert max(sizes) <= 1.5 * len(keys) / shards, sizes
    pages = 2  # one listing of 1,600 keys
    assert moto_server.log.by_kind()["LIST"] == sum(r.list_requests for r in reports.values())
    assert sum(r.list_requests for r in reports.values()) <= 1.25 * pages + 3 * shards


@pytest.mark.parametrize("store_kind", ["local", "gcs"])
@pytest.mark.parametrize("shards", [4, 8, 16])
def test_the_first_plan_is_balanced_on_gcs_and_the_local_disk_too(
    store_location: tuple[str, dict[str, Any]], shards: int
) -> None:
    url, options = store_location
    store = ObjectStore(url, options)
    keys = one_run_holds_half(1600)
    seed(store, keys)
    sizes, requests = first_plan_sizes(store, keys, shards)
    assert sum(sizes) == len(keys) and max(sizes) <= 1.5 * len(keys) / shards, sizes
    assert requests <= discovery_budget(shards)


def first_plan_sizes(store: ObjectStore, keys: list[str], shards: int) -> tuple[list[int], int]:
    """The keys each shard of a discovered first plan would scan, and the discovery's requests."""
    plan, requests = store._run(lambda fs: discover(store.transport, fs, store.full_path(""), shards))
    per_unit = Counter(bisect.bisect_left(plan.bounds, key) for key in keys)
    return [sum(per_unit[u] for u in plan.shard_units(i, shards)) for i in range(shards)], requests


def test_the_first_plan_names_more_dags_than_its_first_listing_does(s3_bucket: str, s3_options: dict[str, Any]) -> None:
    """14,000 DAGs: the first listing of them takes 8 pages of 1,000; the rest is listed on before
    anything is probed (it was sized as one more page of DAGs and left as one unit: 1.86x)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    dags = 14_000
    keys = [f"task/d{i % dags:05}/r{i // dags}/t/-1/k" for i in range(3 * dags)]
    moto_s3 = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]  # straight into the server: 42,000 PUTs take minutes
    for key in keys:
        moto_s3.put_object(s3_bucket, f"state/{key}", b"1", disable_notification=True)
    sizes, requests = first_plan_sizes(ObjectStore(f"s3://{s3_bucket}/state", s3_options), keys, 4)
    assert sum(sizes) == len(keys) and max(sizes) <= 1.2 * len(keys) / 4, sizes
    assert requests <= discovery_budget(4, len(keys))


def _heads(moto: Any) -> Counter[str]:
    return Counter(path for method, path, _ in moto.log.snapshot() if method == "HEAD")


def test_the_shards_of_one_run_share_its_plan_and_a_late_shard_scans_nothing_again(
    s3_bucket: str, s3_options: dict[str, Any], moto_server: Any
) -> None:
    """(The start orders are the first-run balance test's; here, one order and a late shard.)"""
    store = ObjectStore(f"s3://{s3_bucket}/state", s3_options)
    keys = one_run_holds_half(1600)
    seed(store, keys)
    moto_server.log.clear()
    first = {i: run_gc(store, GCOptions(shard=(i, 4), run_id="night-1")) for i in shard_order("interleaved", 4)}
    # the run's last shard found the sweep complete and made the next run's plan; a shard of
    # the same run started after all its siblings (a retry, a late pod) still sweeps by the
    # run's plan, and its units are swept already
    late = run_gc(store, GCOptions(shard=(2, 4), run_id="night-1"))
    assert (late.scanned, late.metadata_reads, late.errors) == (0, 0, 0) and late.units_skipped > 0
    assert sum(r.scanned for r in first.values()) == len(keys)
    assert set(_heads(moto_server).values()) == {1} and len(_heads(moto_server)) == len(keys)
    generations = [p for p in store.fs.find(store.full_path(RESERVED_PREFIX + "plans/"))]
    assert len(generations) == 2  # the run's plan and the next run's, learnt from its counts

    # the next run takes the new plan: balanced on the counts, every key once again
    moto_server.log.clear()
    second = [run_gc(store, GCOptions(shard=(i, 4), run_id="night-2", full=True)) for i in (3, 1, 0, 2)]
    sizes = [r.scanned for r in second]
    assert sum(sizes) == len(keys) and max(sizes) <= 1.1 * len(keys) / 4, sizes
    assert set(_heads(moto_server).values()) == {1} and len(_heads(moto_server)) == len(keys)


@pytest.mark.parametrize(("shards", "run_id"), [(8, "night-1"), (16, None)])
def test_shards_of_a_first_run_started_together_discover_one_plan(
    s3_bucket: str, s3_options: dict[str, Any], moto_server: Any, shards: int, run_id: str | None
) -> None:
    """With no plan yet, one shard discovers it and the others wait for it: not one discovery each."""
    store = ObjectStore(f"s3://{s3_bucket}/state", s3_options)
    keys = one_run_holds_half(800)
    seed(store, keys)
    moto_server.log.clear()
    together = threading.Barrier(shards)

    def shard(index: int) -> GCReport:
        together.wait()
        return run_gc(store, GCOptions(shard=(index, shards), run_id=run_id, concurrency=8))

    with ThreadPoolExecutor(shards) as pool:
        reports = list(pool.map(shard, range(shards)))
    sizes = [r.scanned for r in reports]
    assert sum(sizes) == len(keys) and sum(r.errors for r in reports) == 0
    assert set(_heads(moto_server).values()) == {1} and len(_heads(moto_server)) == len(keys)
    assert max(sizes) <= 1.5 * len(keys) / shards, sizes
    assert sum(1 for r in reports if r.list_requests > 2) == 1  # one shard's discovery, the rest wait
    pages = 1  # one listing of 800 keys
    assert moto_server.log.by_kind()["LIST"] <= 1.25 * pages + 3 * shards


def test_a_shard_waits_for_a_claimed_first_plan_only_so_long(
    s3_bucket: str, s3_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard that claimed the first plan and died (no plan stored): its siblings discover it."""
    store = ObjectStore(f"s3://{s3_bucket}/state", s3_options)
    keys = one_run_holds_half(400)
    seed(store, keys)
    index = SweepIndex.for_store(store)
    claimed = {"started": datetime.now(timezone.utc).isoformat()}
    store._run(lambda fs: index.location.write_document("claims/00000000.json", "claim", claimed))
    monkeypatch.setattr(gc_index, "DISCOVERY_WAIT", timedelta(seconds=1))
    report = run_gc(store, GCOptions(shard=(0, 1)))
    assert (report.scanned, report.errors) == (len(keys), 0) and report.seconds >= 1
    assert store.fs.exists(store.full_path(RESERVED_PREFIX + "plans/00000000.json"))


def test_a_first_plan_whose_discovery_failed_is_not_left_claimed(
    s3_bucket: str, s3_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard whose listing failed while it discovered the plan: its retry does not wait for itself."""
    store = ObjectStore(f"s3://{s3_bucket}/state", s3_options)
    seed(store, one_run_holds_half(40))

    async def throttled(*args: Any) -> Any:
        raise OSError("SlowDown")

    with monkeypatch.context() as patch:
        patch.setattr(gc_index, "discover", throttled)
        assert run_gc(store, GCOptions(shard=(0, 2))).errors == 1
    assert store.fs.find(store.full_path(RESERVED_PREFIX + "claims/")) == []


def test_a_shard_of_a_run_reads_each_manifest_once_to_sweep_and_once_to_settle(
    s3_bucket: str, s3_options: dict[str, Any], moto_server: Any
) -> None:
    store = ObjectStore(f"s3://{s3_bucket}/state", s3_options)
    seed(store, one_run_holds_half(400))
    for i in range(2):
        run_gc(store, GCOptions(shard=(i, 2), run_id="night-1"))
    moto_server.log.clear()
    report = run_gc(store, GCOptions(shard=(0, 2), run_id="night-2"))
    reads = Counter(path for method, path, _ in moto_server.log.snapshot() if method == "GET" and "/units/" in path)
    manifests = {path: count for path, count in reads.items() if path.endswith(".json")}
    assert report.index_hits > 0 and len(manifests) > 2, reads
    assert set(manifests.values()) <= {1, 2}, manifests  # the shard's own units: 2 (were 3), the others' 1


def test_a_shard_retried_after_a_failure_mid_sweep_skips_what_its_run_swept(
    s3_bucket: str, s3_options: dict[str, Any], moto_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ObjectStore(f"s3://{s3_bucket}/state", s3_options)
    keys = one_run_holds_half(1600)
    seed(store, keys)
    published: list[str] = []
    publish = _UnitWriter.publish

    async def dies_after_two_units(self: _UnitWriter, replaced: Any) -> None:
        if len(published) == 2:
            raise OSError("killed")
        await publish(self, replaced)
        published.append(self.unit.ident)

    moto_server.log.clear()
    with monkeypatch.context() as patch:
        patch.setattr(_UnitWriter, "publish", dies_after_two_units)
        failed = run_gc(store, GCOptions(shard=(0, 2), run_id="night-1", list_concurrency=1))
    assert failed.errors == 1 and len(published) == 2
    before = set(_heads(moto_server))
    moto_server.log.clear()
    retried = run_gc(store, GCOptions(shard=(0, 2), run_id="night-1", list_concurrency=1))
    other = run_gc(store, GCOptions(shard=(1, 2), run_id="night-1"))
    again = set(_heads(moto_server))
    assert retried.errors == other.errors == 0 and retried.units_skipped == 2
    assert before | again == {f"/{s3_bucket}/state/{key}" for key in keys}  # every key swept by the run
    assert retried.scanned + other.scanned < len(keys)  # the two units swept before the failure: not again
    assert len(before & again) <= 1000  # only what the failure cut short (one listing page) is read twice


def test_a_damaged_plan_or_run_record_means_a_new_plan_never_a_wrong_delete(
    s3_bucket: str, s3_options: dict[str, Any]
) -> None:
    store = ObjectStore(f"s3://{s3_bucket}/state", s3_options)
    keys = one_run_holds_half(400)
    seed(store, keys)
    run_gc(store, GCOptions(shard=(0, 2), run_id="night-1"))
    root = store.full_path(RESERVED_PREFIX)
    for name in [*store.fs.find(root + "plans/"), *store.fs.find(root + "runs/"), root + "current.json"]:
        store.fs.pipe_file(name, b'{"format": "objstore-backend-gc-index", "version": 99}')
    reports = [run_gc(store, GCOptions(shard=(i, 2), run_id="night-1", now=NEXT_NIGHT)) for i in (1, 0)]
    assert all(r.index_damaged >= 1 and r.errors == 0 for r in reports)
    assert sum(r.deleted for r in reports) == 0 and sum(r.live for r in reports) >= len(keys) // 2


def _grow_a_small_dag(store: ObjectStore, keys: list[str]) -> list[str]:
    grown = [f"task/dag00/grown{i // 40:03}/t/-1/k{i}" for i in range(99 * 67)]  # dag00 holds 67
    seed(store, grown)
    return keys + grown


def _delete_the_large_dag(store: ObjectStore, keys: list[str]) -> list[str]:
    store.fs.rm(store.full_path("task/etl/"), recursive=True)
    return [key for key in keys if not key.startswith("task/etl/")]


def _fill(store: ObjectStore, keys: list[str]) -> list[str]:
    added = one_run_holds_half(1600)
    seed(store, added)
    return keys + added


@pytest.mark.parametrize(
    ("before", "change"),
    [
        ([], _fill),
        (["task/only/run/t/-1/k"], _fill),
        (one_run_holds_half(1600), _grow_a_small_dag),
        (one_run_holds_half(1600), _delete_the_large_dag),
    ],
    ids=["empty-then-filled", "one-key-then-filled", "a-dag-grown-100x", "the-large-dag-deleted"],
)
@pytest.mark.parametrize("store_kind", ["local"])  # the plans are the same on every store; this one is quick
def test_a_bucket_that_changes_shape_between_runs_is_swept_whole_by_the_next_run(
    store_location: tuple[str, dict[str, Any]], before: list[str], change: Any
) -> None:
    """The next run's plan comes from counts the change made wrong: its units may be unbalanced
    for that run, but they still cover the key space (every key scanned once, nothing deleted),
    and the run after it is balanced again."""
    store = ObjectStore(*store_location)
    keys = list(before)
    seed(store, keys)
    first = [run_gc(store, GCOptions(shard=(i, 4), run_id="night-1")) for i in range(4)]
    assert sum(r.scanned for r in first) == len(keys)
    keys = change(store, keys)
    for night in ("night-2", "night-3"):
        reports = [run_gc(store, GCOptions(shard=(i, 4), run_id=night)) for i in (2, 0, 3, 1)]
        sizes = [r.scanned for r in reports]
        assert sum(sizes) == len(keys) and sum(r.deleted + r.errors for r in reports) == 0, (night, sizes)
    assert max(sizes) <= 1.5 * len(keys) / 4, sizes  # night 3: planned from night 2's counts


def test_a_run_id_used_again_after_its_run_is_a_new_run(s3_bucket: str, s3_options: dict[str, Any]) -> None:
    store = ObjectStore(f"s3://{s3_bucket}/state", s3_options)
    keys = one_run_holds_half(400)
    seed(store, keys)
    assert run_gc(store, GCOptions(run_id="gc-manual")).scanned == len(keys)
    assert run_gc(store, GCOptions(run_id="gc-manual")).scanned == 0  # the same run, started again
    [record] = store.fs.find(store.full_path(RESERVED_PREFIX + "runs/"))
    document = orjson.loads(store.fs.cat_file(record))
    began = (datetime.now(timezone.utc) - timedelta(hours=13)).isoformat()
    body = {**document["body"], "started": began}
    sha256 = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    store.fs.pipe_file(record, orjson.dumps({**document, "body": body, "sha256": sha256}))
    again = run_gc(store, GCOptions(run_id="gc-manual"))  # a Job made again under its name next night
    assert again.scanned == len(keys) and again.units_skipped == 0


@pytest.mark.parametrize(
    ("environ", "hostname", "run"),
    [
        ({"OBJSTORE_BACKEND_RUN_ID": "nightly-7"}, "gc-28861440-3", "nightly-7"),
        ({"JOB_COMPLETION_INDEX": "3"}, "objstore-gc-28861440-3", "objstore-gc-28861440"),
        ({"JOB_COMPLETION_INDEX": "3"}, "laptop", None),
        ({}, "objstore-gc-28861440-3", None),
    ],
)
def test_a_shard_knows_its_run_from_the_env_or_its_kubernetes_job(
    environ: dict[str, str], hostname: str, run: str | None
) -> None:
    assert default_run_id(environ, hostname) == run


@pytest.mark.parametrize("store_kind", ["gcs"])
def test_the_first_plan_pages_on_through_a_prefix_of_many_keys_on_gcs(
    store_location: tuple[str, dict[str, Any]],
) -> None:
    """GCS lists from a key inclusive: a page that goes on from a key shown holds one key fewer."""
    url, options = store_location
    store = ObjectStore(url, options)
    keys = [f"task/big/manual/t/-1/k{i:05}" for i in range(2500)]  # one map index: keys, no prefixes
    keys += [f"task/dag{i % 12:02}/run{i // 120:03}/t/-1/k{i}" for i in range(500)]
    seed(store, keys)
    sizes, _ = first_plan_sizes(store, keys, 16)
    assert sum(sizes) == len(keys) and max(sizes) <= 1.5 * len(keys) / 16, sizes


@pytest.mark.parametrize("store_kind", ["s3", "gcs", "local", "azure"])
def test_a_listing_of_prefixes_goes_on_after_the_ones_named(store_location: tuple[str, dict[str, Any]]) -> None:
    """The first plan names a DAG's runs a page at a time: the next page starts after the last."""
    url, options = store_location
    store = ObjectStore(url, options)
    seed(store, [f"task/dag/run{i}/t/-1/k" for i in range(6)] + ["task/dag/run3x/t/-1/k"])
    base = store.full_path("task/dag/")
    after = base + "run3/" + "\U0010ffff"  # past every key under run3/, as a listing's rest starts
    found, requests = store._run(lambda fs: store.transport.list_prefixes(fs, base, start_after=after))
    assert [path[len(base) :] for path in found] == ["run3x/", "run4/", "run5/"] and requests == 1
