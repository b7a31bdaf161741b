"""The GC sweep on real stores: what goes, what stays, batching, races, shards, the command."""

from __future__ import annotations

import re
import shutil
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from airflow.sdk.state import AssetScope, TaskScope

from objstore_backend import cli
from objstore_backend.backend import ObjectStoreBackend
from objstore_backend.config import StoreSettings
from objstore_backend.errors import UnguardedStoreError
from objstore_backend.gc import GCOptions, parse_shard, run_gc
from objstore_backend.layout import object_path
from objstore_backend.reconcile import AirflowDBReconciler
from tests.gc_race import gc_racing_a_rewrite

PAST = datetime.now(timezone.utc) - timedelta(minutes=1)
FUTURE = datetime.now(timezone.utc) + timedelta(days=1)


def _write_by_hand(backend: ObjectStoreBackend, relative: str, data: bytes) -> None:
    fs, path = backend.store.fs, backend.store.full_path(relative)
    fs.makedirs(fs._parent(path), exist_ok=True)
    fs.pipe_file(path, data)


def populate(backend: ObjectStoreBackend) -> dict[str, Any]:
    """A store with one of everything; returns the scopes and keys by what the GC must do."""
    expired = [(TaskScope("d", "r", "t", i), "k") for i in range(3)] + [(AssetScope(asset_id=1), "old")]
    for scope, key in expired:
        backend.set(scope, key, "1", expires_at=PAST)
    backend.set(TaskScope("d", "r", "t", 0), "live", "2", expires_at=FUTURE)
    backend.set(TaskScope("d", "r", "t", 0), "forever", "3")
    backend.set(AssetScope(asset_id=1), "watermark", "4")
    backend.serialize_task_state_store_to_ref(value={"big": 1}, key="offloaded", scope=TaskScope("d", "r", "t"))
    _write_by_hand(backend, "notes/README.md", b"foreign")  # does not parse as the layout
    _write_by_hand(backend, object_path(TaskScope("d", "r", "t"), "corrupt"), b"no metadata")
    return {"expired": expired}


@pytest.fixture
def populated(backend: ObjectStoreBackend) -> tuple[ObjectStoreBackend, dict[str, Any]]:
    return backend, populate(backend)


def test_gc_deletes_exactly_the_expired_primary_objects(populated: Any) -> None:
    backend, keys = populated
    before = {o.path for o in backend.store.iter_objects()}
    report = run_gc(backend.store)
    after = {o.path for o in backend.store.iter_objects()}
    assert before - after == {object_path(scope, key) for scope, key in keys["expired"]}
    assert (report.scanned, report.expired, report.deleted, report.errors) == (10, 4, 4, 0)
    assert (report.live, report.never_expire, report.offload, report.foreign, report.unreadable) == (
        1,
        2,
        1,
        1,
        1,
    )
    assert report.bytes_deleted > 0
    assert backend.get(TaskScope("d", "r", "t", 0), "live") == "2"
    assert run_gc(backend.store).deleted == 0  # a second sweep finds nothing more


def test_dry_run_deletes_nothing_and_says_what_it_would(populated: Any) -> None:
    backend, keys = populated
    before = sorted(o.path for o in backend.store.iter_objects())
    report = run_gc(backend.store, GCOptions(dry_run=True))
    assert sorted(o.path for o in backend.store.iter_objects()) == before
    assert report.deleted == 0 and report.expired == 4
    assert sorted(report.would_delete) == sorted(object_path(s, k) for s, k in keys["expired"])


def test_objects_outside_the_base_path_are_never_touched(s3_bucket: str, s3_options: dict, s3_client: Any) -> None:
    sibling = ObjectStoreBackend(
        StoreSettings(path=f"s3://{s3_bucket}/airflow/state-other", storage_options=s3_options)
    )
    sibling.set(TaskScope("d", "r", "t"), "k", "1", expires_at=PAST)
    backend = ObjectStoreBackend(StoreSettings(path=f"s3://{s3_bucket}/airflow/state", storage_options=s3_options))
    backend.set(TaskScope("d", "r", "t"), "k", "1", expires_at=PAST)
    report = run_gc(backend.store)
    assert (report.scanned, report.deleted) == (1, 1)
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert [k for k in keys if "/~gc-index/" not in k] == ["airflow/state-other/task/d/r/t/-1/k"]


def test_s3_gc_heads_each_object_and_deletes_in_batches_with_etag_conditions(
    s3_bucket: str, s3_options: dict, moto_server: Any
) -> None:
    backend = ObjectStoreBackend(StoreSettings(path=f"s3://{s3_bucket}/state", storage_options=s3_options))
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        list(
            pool.map(
                lambda i: backend.set(TaskScope("d", f"r{i % 7}", "t", i), "k", "1", expires_at=PAST),
                range(1100),
            )
        )
    moto_server.log.clear()
    report = run_gc(backend.store, GCOptions(concurrency=16))
    assert (report.scanned, report.deleted, report.errors) == (1100, 1100, 0)
    counts = moto_server.log.by_kind()
    # two pages, plus two delimiter listings that find where the DAGs start
    assert (counts["LIST"], counts["HEAD"], counts["BATCH-DELETE"]) == (4, 1100, 2)
    assert (report.list_requests, report.metadata_reads, report.index_hits) == (4, 1100, 0)
    assert all(body.count(b"<ETag>") == body.count(b"<Key>") for body in moto_server.log.bodies)


@pytest.mark.parametrize("where", ["local", "memory", "s3"])
def test_a_key_rewritten_between_check_and_delete_survives(where: str, request: pytest.FixtureRequest) -> None:
    if where == "local":
        settings = StoreSettings(path=str(request.getfixturevalue("tmp_path") / "state"))
        options = GCOptions()
    elif where == "memory":  # the objects live in this process: one lock guards them
        settings = StoreSettings(path=f"memory://race-{uuid.uuid4().hex[:12]}/state")
        options = GCOptions()
    else:  # moto honours If-Match on DeleteObject, not inside DeleteObjects: the per-key mode
        bucket, s3_options = request.getfixturevalue("s3_bucket"), request.getfixturevalue("s3_options")
        settings = StoreSettings(path=f"s3://{bucket}/state", storage_options=s3_options)
        options = GCOptions(batched_deletes=False)
    backend = ObjectStoreBackend(settings)
    scope = TaskScope("d", "r", "progress")
    backend.set(scope, "k", '"old"', expires_at=PAST)
    backend.set(scope, "other", '"old"', expires_at=PAST)
    report = gc_racing_a_rewrite(backend, scope, "k", options)
    assert backend.get(scope, "k") == '"new"'
    assert backend.get(scope, "other") is None
    assert (report.expired, report.deleted, report.kept, report.errors) == (2, 1, 1, 0)


def test_the_gc_refuses_a_filesystem_without_conditional_deletes(
    ftp_location: tuple[str, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    """FTP (like sftp, hdfs, smb, webdav) cannot delete only the version checked: the GC refuses
    before any request instead of racing writers, unless told every writer is stopped."""
    url, ftp_options = ftp_location
    backend = ObjectStoreBackend(StoreSettings(path=url, storage_options=ftp_options))
    scope = TaskScope("d", "r", "progress")
    backend.set(scope, "k", '"old"', expires_at=PAST)
    backend.set(scope, "other", '"old"', expires_at=PAST)
    with pytest.raises(UnguardedStoreError, match=r"gc refuses to run on ftp:///state-.*the ftp filesystem has no "
                       r"conditional deletes.*They run on s3://, gs://, abfs://.*--writers-stopped"):  # fmt: skip
        gc_racing_a_rewrite(backend, scope, "k", GCOptions())
    assert backend.get(scope, "k") is None  # expired, not rewritten: the GC stopped before its delete
    assert backend.store.head(object_path(scope, "other")) is not None

    argv = ["gc", "--path", url, "--storage-options", orjson.dumps(ftp_options).decode(), "--json"]
    assert cli.main(argv) == 2
    assert "gc refuses to run on ftp:///state-" in capsys.readouterr().err
    assert cli.main([*argv, "--dry-run"]) == 0  # deletes nothing: runs anywhere
    assert orjson.loads(capsys.readouterr().out.splitlines()[-1])["expired"] == 2
    assert cli.main([*argv, "--writers-stopped"]) == 0
    summary = orjson.loads(capsys.readouterr().out.splitlines()[-1])
    assert (summary["deleted"], summary["errors"]) == (2, 0)
    assert backend.store.head(object_path(scope, "k")) is None


def test_shards_are_disjoint_and_together_complete(backend: ObjectStoreBackend) -> None:
    for run in range(12):
        for index in range(3):
            backend.set(TaskScope("d", f"run{run}", "t", index), "k", "1", expires_at=PAST)
    for asset in range(5):
        backend.set(AssetScope(asset_id=asset), "k", "1", expires_at=PAST)
    _write_by_hand(backend, "foreign/object", b"x")
    run_gc(backend.store, GCOptions(dry_run=True))  # a sweep of the whole store does not change it
    seen: list[set[str]] = []
    foreign = 0
    for index in range(4):
        report = run_gc(backend.store, GCOptions(dry_run=True, shard=(index, 4)))
        seen.append(set(report.would_delete))
        foreign += report.foreign
    assert foreign == 1  # every object in exactly one shard, foreign ones included
    assert sum(len(s) for s in seen) == len(set().union(*seen)) == 12 * 3 + 5


def test_parse_shard_rejects_nonsense() -> None:
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


def test_cleanup_runs_the_same_sweep(populated: Any) -> None:
    backend, keys = populated
    backend.cleanup()
    assert all(backend.store.head(object_path(s, k)) is None for s, k in keys["expired"])
    assert backend.get(TaskScope("d", "r", "t", 0), "forever") == "3"


def test_gc_command_json_summary_and_exit_status(
    s3_bucket: str, s3_options: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = ObjectStoreBackend(StoreSettings(path=f"s3://{s3_bucket}/state", storage_options=s3_options))
    populate(backend)
    argv = ["gc", "--path", f"s3://{s3_bucket}/state", "--storage-options", orjson.dumps(s3_options).decode()]
    assert cli.main([*argv, "--json"]) == 0
    summary = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for field in (
        "scanned",
        "expired",
        "deleted",
        "kept",
        "never_expire",
        "offload_orphans",
        "foreign",
        "abandoned_temp_files",
        "errors",
        "bytes_deleted",
        "seconds",
    ):
        assert field in summary
    assert (summary["deleted"], summary["errors"]) == (4, 0)
    # a missing bucket: the listing fails, the summary says so, the exit status is non-zero
    missing = [
        "gc",
        "--path",
        "s3://no-such-bucket/state",
        "--storage-options",
        orjson.dumps(s3_options).decode(),
    ]
    assert cli.main([*missing, "--json"]) == 1
    summary = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["errors"] == 1 and "no-such-bucket" in summary["error_samples"][0]
    assert "secret" not in str(summary) and s3_options["secret"] not in str(summary)


def test_gc_command_reads_its_settings_from_env(
    s3_bucket: str, s3_options: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    backend = ObjectStoreBackend(StoreSettings(path=f"s3://{s3_bucket}/state", storage_options=s3_options))
    populate(backend)
    monkeypatch.setenv("OBJSTORE_BACKEND_PATH", f"s3://{s3_bucket}/state")
    monkeypatch.setenv("OBJSTORE_BACKEND_STORAGE_OPTIONS", orjson.dumps(s3_options).decode())
    monkeypatch.setenv("OBJSTORE_BACKEND_DRY_RUN", "true")
    monkeypatch.setenv("OBJSTORE_BACKEND_SHARD", "0/1")
    assert cli.main(["gc"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^dry_run +True$", out, re.MULTILINE) and out.count("would delete") == 4


@pytest.mark.parametrize("where", ["local", "s3"])
def test_both_modes_the_reconciling_gc_loses_no_asset_state(
    where: str, migrated_db: Any, tmp_path: Any, request: pytest.FixtureRequest
) -> None:
    """Same class on both sides: the worker's objects, the server's (primary) answers, no DB rows."""
    if where == "local":
        settings = StoreSettings(path=str(tmp_path / "state"))
    else:
        bucket, s3_options = request.getfixturevalue("s3_bucket"), request.getfixturevalue("s3_options")
        settings = StoreSettings(path=f"s3://{bucket}/state", storage_options=s3_options)
    backend = ObjectStoreBackend(settings)
    shutil.copy(migrated_db, tmp_path / "airflow.db")  # a real Airflow schema, its state tables empty
    calls = [  # (worker scope, server scope, key, value): what one task run does on each side
        (AssetScope(name="orders"), AssetScope(asset_id=1), "watermark", 100),
        (AssetScope(uri="s3://data/x"), AssetScope(asset_id=2), "cursor", "c-7"),
        (TaskScope("d", "r", "t"), TaskScope("d", "r", "t"), "job_id", "job-1"),
    ]
    for worker_scope, server_scope, key, value in calls:
        serialize = (
            "serialize_task_state_store_to_ref"
            if isinstance(worker_scope, TaskScope)
            else ("serialize_asset_state_store_to_ref")
        )
        ref = getattr(backend, serialize)(value=value, key=key, scope=worker_scope)
        backend.set(server_scope, key, orjson.dumps({"__airflow_state_ref__": ref}).decode())

    reconciler = AirflowDBReconciler(f"sqlite:///{tmp_path / 'airflow.db'}")
    report = run_gc(backend.store, GCOptions(reconciler=reconciler, offload_grace=timedelta(0)))
    assert report.errors == 0
    # the worker's asset objects, referenced by nothing once adopted, may go; no value does
    assert report.offload_orphans == 2 and report.never_expire == 3
    for _, server_scope, key, value in calls:
        ref = orjson.loads(backend.get(server_scope, key))["__airflow_state_ref__"]
        assert backend.deserialize_asset_state_store_from_ref(ref) == value


@pytest.mark.parametrize("db", ["unreachable", "not-airflow"])
def test_a_metadata_db_failure_is_counted_and_expired_objects_still_go(
    db: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "state")
    backend = ObjectStoreBackend(StoreSettings(path=path))
    keys = populate(backend)  # 4 expired primary objects, 1 offload object, ...
    if db == "unreachable":
        url = f"sqlite:///{tmp_path / 'no-such-dir' / 'airflow.db'}"
    else:
        import sqlite3

        sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE t (x)").connection.close()
        url = f"sqlite:///{tmp_path / 'other.db'}"
    status = cli.main(["gc", "--path", path, "--json", "--airflow-db", url, "--offload-grace", "0"])
    summary = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert status == 1
    assert (summary["errors"], summary["offload_unchecked"], summary["offload_orphans"]) == (1, 1, 0)
    assert "metadata DB" in summary["error_samples"][0]
    assert summary["deleted"] == len(keys["expired"]) == 4  # primary expiry does not depend on the DB
    assert backend.store.head(object_path(TaskScope("d", "r", "t"), "offloaded")) is not None
