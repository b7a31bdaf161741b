"""``import`` row by row, on an Airflow-migrated SQLite DB: each kind of value, expiry, idempotence,
newer objects, bad rows and bad DBs. The rows are inserted by hand here so every odd case can be
made; tests/test_switch.py has the rows written by Airflow itself, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from airflow.sdk.state import AssetScope, TaskScope
from fsspec.implementations.memory import MemoryFileSystem

from objstore_backend import cli
from objstore_backend.backend import ObjectStoreBackend
from objstore_backend.config import StoreSettings
from objstore_backend.layout import encode_segment, is_hashed, object_path
from objstore_backend.store import ObjectMetadata, ObjectStore
from tests.airflow_home import INDEX_COLUMN, running_release

# Airflow's DB schema and ORM: run again on 3.4 (scripts/test.sh).
pytestmark = pytest.mark.airflow_bound

NOW = datetime.now(timezone.utc).replace(microsecond=0)
LATER = NOW + timedelta(days=2)
RUN = TaskScope("etl", "manual__1", "load", -1)


def _db_time(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat(" ")


class StateDB:
    """An Airflow-migrated SQLite metadata DB (3.3's or 3.4's schema) whose state rows a test writes by hand."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self.index = INDEX_COLUMN[running_release()]
        # 3.4's rows are unique by region too (region_id defaults to the zero region)
        self.unique = self.index if self.index == "map_index" else f"region_id, {self.index}"

    def task(self, key: str, value: str, *, expires_at: datetime | None = None, scope: TaskScope = RUN,
             updated_at: datetime = NOW) -> None:  # fmt: skip
        with sqlite3.connect(self.path) as db:
            db.execute(
                f"INSERT INTO task_state_store (dag_run_id, task_id, {self.index}, key, dag_id, run_id, value, "
                "updated_at, expires_at) VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dag_run_id, task_id, "
                f"{self.unique}, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (scope.task_id, scope.map_index, key, scope.dag_id, scope.run_id, value, _db_time(updated_at),
                 _db_time(expires_at)),
            )  # fmt: skip

    def asset(self, asset_id: int, key: str, value: str, *, name: str | None = None) -> None:
        """A row of asset ``asset_id`` (created as ``name``, its uri ``s3://<name>``, when given)."""
        with sqlite3.connect(self.path) as db:
            if name is not None:
                db.execute(
                    'INSERT OR IGNORE INTO asset (id, name, uri, "group", extra, created_at, updated_at) '
                    "VALUES (?, ?, ?, 'asset', '{}', ?, ?)",
                    (asset_id, name, f"s3://{name}", _db_time(NOW), _db_time(NOW)),
                )
            db.execute(
                "INSERT INTO asset_state_store (asset_id, key, value, updated_at) VALUES (?, ?, ?, ?)",
                (asset_id, key, value, _db_time(NOW)),
            )

    def dag_run(self, scope: TaskScope = RUN) -> None:
        """The DAG run ``scope`` belongs to, as ``export`` needs one for each task row."""
        with sqlite3.connect(self.path) as db:
            db.execute(
                "INSERT INTO dag_run (id, dag_id, run_id, run_type, run_after, state) "
                "VALUES (1, ?, ?, 'manual', ?, 'running')",
                (scope.dag_id, scope.run_id, _db_time(NOW)),
            )

    def task_keys(self) -> dict[str, str]:
        with sqlite3.connect(self.path) as db:
            return dict(db.execute("SELECT key, value FROM task_state_store").fetchall())

    def digest(self) -> str:
        """Of the DB's content (the file itself changes when SQLite checkpoints its journal)."""
        with sqlite3.connect(self.path) as db:
            return hashlib.sha256("\n".join(db.iterdump()).encode()).hexdigest()


@pytest.fixture
def state_db(migrated_db: Path, tmp_path: Path) -> StateDB:  # noqa: F811
    path = tmp_path / "airflow.db"
    path.write_bytes(migrated_db.read_bytes())
    return StateDB(path)


@pytest.fixture
def ours(tmp_path: Path) -> ObjectStoreBackend:
    """The store import writes into, as the backend (offload hooks, server-side calls) sees it."""
    return ObjectStoreBackend(StoreSettings(path=str(tmp_path / "state"), threshold_bytes=8))


def run_import(
    capsys: pytest.CaptureFixture[str], backend: ObjectStoreBackend, db: StateDB, *flags: str
) -> tuple[int, dict[str, Any], str]:
    status = cli.main(["import", "--path", backend.store.url, "--airflow-db", db.url, "--json", *flags])
    out, err = capsys.readouterr()
    return status, json.loads(out.strip().splitlines()[-1]), err


def _wrapped(ref: str) -> str:
    return json.dumps({"__airflow_state_ref__": ref})


def test_every_kind_of_row_becomes_its_value_with_its_exact_expiry(
    state_db: StateDB, ours: ObjectStoreBackend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    commonio = tmp_path / "commonio"
    (commonio / "etl" / "manual__1" / "load" / "-1").mkdir(parents=True)
    (commonio / "etl" / "manual__1" / "load" / "-1" / "rows.gz").write_bytes(gzip.compress(b'{"rows": [1, 2]}'))
    offload_ref = ours.serialize_task_state_store_to_ref(value={"big": "x" * 20}, key="offloaded", scope=RUN)
    inline_ref = ours.serialize_task_state_store_to_ref(value=7, key="small", scope=RUN)
    asset_ref = ours.serialize_asset_state_store_to_ref(value=41, key="offsets", scope=AssetScope(name="orders"))
    assert offload_ref.startswith("objstore:") and inline_ref == "inline:7"

    state_db.task("plain", '{"job": "j-1"}', expires_at=LATER)
    state_db.task("forever", '"kept"')
    state_db.task("expired", "1", expires_at=NOW - timedelta(seconds=1))
    state_db.task("offloaded", _wrapped(offload_ref), expires_at=LATER)
    state_db.task("small", _wrapped(inline_ref))
    state_db.task("rows", _wrapped(f"file://{commonio}/etl/manual__1/load/-1/rows.gz"), expires_at=LATER)
    state_db.task("tiny", _wrapped("[3]"))  # common.io under its threshold: the JSON text itself
    state_db.asset(5, "watermark", "100")
    state_db.asset(6, "offsets", _wrapped(asset_ref), name="orders")
    before = state_db.digest()

    status, summary, err = run_import(capsys, ours, state_db, "--commonio-path", f"file://{commonio}")
    assert status == 0, err
    counted = ("rows", "imported", "skipped_expired", "skipped_newer", "unresolved", "errors")
    assert [summary[name] for name in counted] == [9, 8, 1, 0, 0, 0]
    assert state_db.digest() == before  # the DB is only read

    def stored(scope: Any, key: str) -> tuple[Any, datetime | None, str]:
        found = ours.store.read(object_path(scope, key))
        assert found is not None, key
        return orjson.loads(found.body), found.metadata.expires_at, found.metadata.mode

    assert stored(RUN, "plain") == ({"job": "j-1"}, LATER, "primary")
    assert stored(RUN, "forever") == ("kept", None, "primary")
    assert stored(RUN, "offloaded") == ({"big": "x" * 20}, LATER, "primary")
    assert stored(RUN, "small") == (7, None, "primary")
    assert stored(RUN, "rows") == ({"rows": [1, 2]}, LATER, "primary")
    assert stored(RUN, "tiny") == ([3], None, "primary")
    assert stored(AssetScope(asset_id=5), "watermark") == (100, None, "primary")
    assert stored(AssetScope(asset_id=6), "offsets") == (41, None, "primary")
    assert ours.store.read(object_path(RUN, "expired")) is None
    # the server-side get (what the API server calls in primary mode) answers the values
    assert ours.get(RUN, "offloaded") == '{"big":"' + "x" * 20 + '"}'
    assert ours.store.read(object_path(RUN, "plain")).metadata.updated_at == NOW  # type: ignore[union-attr]

    again_status, again, _ = run_import(capsys, ours, state_db, "--commonio-path", f"file://{commonio}")
    assert again_status == 0 and (again["imported"], again["unchanged"], again["bytes"]) == (0, 8, 0)


def test_a_newer_object_is_kept_and_an_older_import_is_brought_up_to_date(
    state_db: StateDB, ours: ObjectStoreBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    state_db.task("cursor", "1")
    state_db.task("progress", "10")
    assert run_import(capsys, ours, state_db)[1]["imported"] == 2
    # after the switch the API server writes one key; Airflow's DB (still written by a worker
    # before the restart) moves the other on
    ours.set(RUN, "cursor", "2")
    state_db.task("progress", "20", updated_at=NOW + timedelta(seconds=30))

    dry_status, dry, _ = run_import(capsys, ours, state_db, "--dry-run")
    assert dry_status == 0 and (dry["imported"], dry["skipped_newer"], dry["dry_run"]) == (1, 1, True)
    assert ours.get(RUN, "progress") == "10"  # a dry run writes nothing

    status, summary, err = run_import(capsys, ours, state_db)
    assert status == 0 and (summary["imported"], summary["skipped_newer"]) == (1, 1)
    assert ours.get(RUN, "cursor") == "2" and ours.get(RUN, "progress") == "20"
    assert "task etl/manual__1/load/-1/cursor" in summary["kept_newer"][0] and "cursor" in err


def test_bad_rows_are_named_and_every_other_row_imported(
    state_db: StateDB, ours: ObjectStoreBackend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    commonio = tmp_path / "commonio"
    commonio.mkdir()
    state_db.task("good", "1")
    state_db.task("not_json", "{oops")
    state_db.task("nan", '{"x": NaN}')
    state_db.task("missing", _wrapped("objstore:task/etl/manual__1/load/-1/missing"))
    state_db.task("outside", _wrapped(f"file://{tmp_path}/elsewhere/etl/k"))
    state_db.task("other_bucket", _wrapped("s3://someone-else/etl/manual__1/load/-1/k"))
    state_db.task("commonio_missing", _wrapped(f"file://{commonio}/etl/manual__1/load/-1/gone.gz"))

    status, summary, err = run_import(capsys, ours, state_db, "--commonio-path", f"file://{commonio}")
    assert status == 1
    assert (summary["imported"], summary["unresolved"], summary["errors"]) == (1, 2, 4)
    named = "\n".join(summary["problems"])
    for key in ("not_json", "nan", "missing", "outside", "other_bucket", "commonio_missing"):
        assert f"task etl/manual__1/load/-1/{key}:" in named and f"/{key}:" in err
    assert "outside its configured base" in named and "is missing" in named
    assert ours.get(RUN, "good") == "1"

    # without common.io's settings its references are errors that say what is missing
    status, summary, _ = run_import(capsys, ours, state_db)
    assert status == 1 and any("--commonio-path" in note for note in summary["problems"])


def test_a_damaged_commonio_object_is_one_named_error_and_every_other_row_imported(
    state_db: StateDB, ours: ObjectStoreBackend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``.gz`` that is not gzip raised an uncaught OSError: no summary, later rows not imported."""
    commonio = tmp_path / "commonio"
    where = commonio / "etl" / "manual__1" / "load" / "-1"
    where.mkdir(parents=True)
    damaged = {
        "not_gzip.gz": b'{"plain": "text"}',
        "cut_short.gz": gzip.compress(b'{"rows": [1, 2, 3]}')[:-6],
        "not_bz2.bz2": b"BZh9 and then nothing",
        "not_json": b"app_1234",
        "not_json_inside.gz": gzip.compress(b"{oops"),
    }
    for name, body in damaged.items():
        (where / name).write_bytes(body)
    (where / "fine.gz").write_bytes(gzip.compress(b'{"rows": [4]}'))
    for name in damaged:
        state_db.task(name.split(".")[0], _wrapped(f"file://{where}/{name}"))
    state_db.task("fine", _wrapped(f"file://{where}/fine.gz"))
    state_db.task("missing", _wrapped(f"file://{where}/gone.gz"))
    state_db.task("plain", "1")

    status, summary, err = run_import(capsys, ours, state_db, "--commonio-path", f"file://{commonio}")
    assert status == 1
    assert (summary["rows"], summary["imported"], summary["errors"], summary["unresolved"]) == (8, 2, 5, 1)
    named = "\n".join(summary["problems"])
    for name in damaged:
        key = name.split(".")[0]
        assert f"task etl/manual__1/load/-1/{key}: the common.io object file://{where}/{name}" in named
        assert f"/{key}:" in err
    assert "is damaged: not a whole gzip stream" in named and "is damaged: not a whole bz2 stream" in named
    assert "invalid character at byte 0" in named and "is missing" in named
    assert ours.get(RUN, "fine") == '{"rows": [4]}' and ours.get(RUN, "plain") == "1"


def test_a_reference_to_another_keys_object_is_refused_and_never_copied(
    state_db: StateDB, ours: ObjectStoreBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    """A row of one DAG (or asset) whose reference names another's object, as anyone who may edit
    that row can store through Airflow's REST API: one named error each, nothing copied."""
    secret = TaskScope("dag_b", "manual__1", "t", -1)
    secret_ref = ours.serialize_task_state_store_to_ref(value={"salary": 1}, key="secret", scope=secret)
    payroll = AssetScope(name="payroll")
    payroll_ref = ours.serialize_asset_state_store_to_ref(value="p" * 20, key="cursor", scope=payroll)
    by_uri = AssetScope(uri="s3://orders")
    by_uri_ref = ours.serialize_asset_state_store_to_ref(value=[5] * 9, key="cursor", scope=by_uri)
    own_by_uri_ref = ours.serialize_asset_state_store_to_ref(value=[6] * 9, key="offsets", scope=by_uri)
    state_db.task("secret", _wrapped(secret_ref))  # a dag "etl" key naming dag_b's object
    state_db.task("other_key", _wrapped(ours.serialize_task_state_store_to_ref(value=[2] * 9, key="own", scope=RUN)))
    state_db.asset(1, "cursor", _wrapped(payroll_ref), name="orders")
    state_db.asset(2, "cursor", _wrapped(by_uri_ref), name="orders_copy")  # orders' object, not this asset's
    state_db.asset(1, "offsets", _wrapped(own_by_uri_ref))

    status, summary, err = run_import(capsys, ours, state_db)
    assert status == 1
    assert (summary["rows"], summary["imported"], summary["errors"]) == (5, 1, 4)
    named = "\n".join(summary["problems"])
    for row in ("task etl/manual__1/load/-1/secret", "task etl/manual__1/load/-1/other_key", "asset id=1/cursor"):
        assert f"{row}: not imported: the reference names " in named and row in err
    assert "asset id=2/cursor" in named
    assert ours.store.read(object_path(RUN, "secret")) is None
    assert ours.store.read(object_path(RUN, "other_key")) is None
    assert ours.store.read(object_path(AssetScope(asset_id=1), "cursor")) is None
    assert ours.store.read(object_path(AssetScope(asset_id=2), "cursor")) is None
    # the object a worker wrote for asset 1 by its uri is asset 1's own: imported
    assert orjson.loads(ours.get(AssetScope(asset_id=1), "offsets") or "null") == [6] * 9
    assert ours.store.read(object_path(secret, "secret")) is not None  # dag_b's object is left alone


def test_a_db_that_is_not_airflows_fails_clearly_before_anything_is_written(
    ours: ObjectStoreBackend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE task_state_store (id INTEGER)").connection.close()
    assert cli.main(["import", "--path", ours.store.url, "--airflow-db", f"sqlite:///{other}"]) == 2
    assert "not an Airflow 3.3 metadata DB" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        cli.main(["import", "--path", ours.store.url, "--airflow-db", "nosuchdb://x"])
    assert usage.value.code == 2
    assert "--airflow-db" in (err := capsys.readouterr().err) and "SQLAlchemy does not know" in err
    unreachable = "postgresql://reader:s3cret@127.0.0.1:9/airflow"
    assert cli.main(["import", "--path", ours.store.url, "--airflow-db", unreachable]) == 1
    err = capsys.readouterr().err
    assert "cannot read Airflow's metadata DB at postgresql://reader:***@127.0.0.1:9/airflow" in err
    assert "s3cret" not in err
    assert list(ours.store.iter_objects()) == []
    with pytest.raises(SystemExit) as usage:
        cli.main(["import", "--path", ours.store.url])  # no DB named
    assert usage.value.code == 2
    with pytest.raises(SystemExit) as usage:
        cli.main(["import", "--path", ours.store.url, "--airflow-db", f"sqlite:///{other}", "--concurrency", "0"])
    assert usage.value.code == 2 and "--concurrency" in capsys.readouterr().err


def test_import_writes_one_request_per_live_row_on_s3(
    state_db: StateDB, s3_bucket: str, s3_options: dict[str, Any], moto_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    for index in range(25):
        state_db.task(f"k{index}", str(index), expires_at=LATER)
    backend = ObjectStoreBackend(StoreSettings(path=f"s3://{s3_bucket}/state", storage_options=s3_options))
    moto_server.log.clear()
    status = cli.main(["import", "--path", f"s3://{s3_bucket}/state", "--storage-options", json.dumps(s3_options),
                       "--airflow-db", state_db.url, "--json"])  # fmt: skip
    assert status == 0, capsys.readouterr().err
    assert moto_server.log.by_kind() == {"PUT": 25}  # create-only PUTs, nothing read first
    moto_server.log.clear()
    cli.main(["import", "--path", f"s3://{s3_bucket}/state", "--storage-options", json.dumps(s3_options),
              "--airflow-db", state_db.url, "--json"])  # fmt: skip
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["unchanged"] == 25
    assert moto_server.log.by_kind() == {"PUT": 25, "GET": 25}  # refused create-only PUTs, then a read each
    assert backend.get(RUN, "k24") == "24"


def test_import_refuses_a_filesystem_without_create_only_writes(
    state_db: StateDB, ftp_location: tuple[str, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    """FTP (like sftp, hdfs, smb, webdav) cannot write only where no object is: ``import`` could
    overwrite a value the API server set meanwhile, so it refuses unless every writer is stopped."""
    url, ftp_options = ftp_location
    state_db.task("cursor", "1")
    argv = ["import", "--path", url, "--storage-options", json.dumps(ftp_options), "--airflow-db", state_db.url]
    assert cli.main([*argv, "--json"]) == 2
    err = capsys.readouterr().err
    assert "import refuses to run on ftp:///state-" in err and "no create-only writes" in err and "s3://" in err
    backend = ObjectStoreBackend(StoreSettings(path=url, storage_options=ftp_options))
    assert backend.get(RUN, "cursor") is None  # nothing written
    assert cli.main([*argv, "--json", "--writers-stopped"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["imported"] == 1
    assert backend.get(RUN, "cursor") == "1"


class SlowMemoryFileSystem(MemoryFileSystem):
    """The memory filesystem, its writes taking a while: two writes of one key overlap."""

    def pipe_file(self, path: str, value: bytes, *args: Any, **kwargs: Any) -> None:
        time.sleep(0.05)
        super().pipe_file(path, value, *args, **kwargs)


def test_create_only_writes_on_memory_are_decided_under_one_lock() -> None:
    """``import``'s create-only write of a key another writer creates at the same moment: one wins."""
    store = ObjectStore(f"memory://create-{uuid.uuid4().hex[:12]}/state", filesystem=SlowMemoryFileSystem())
    path = object_path(RUN, "cursor")

    def create(value: bytes) -> str:
        try:
            store.write(path, value, ObjectMetadata("primary"), create_only=True)
        except FileExistsError:
            return "exists"
        return "written"

    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(create, [b"1", b"2"]))
    assert outcomes == ["exists", "written"]


#: Keys whose escaped form is too long for a path segment: stored under a hashed name.
LONG_KEYS = {
    "x" * 200: '"two hundred"',
    "/".join(["warehouse"] * 14)[:135]: '{"path": true}',
    "状态存储后端的长键名测试用例数据十八": "[18]",
}


def test_export_gives_long_keys_back_whole_and_names_those_it_cannot(
    state_db: StateDB, s3_bucket: str, s3_options: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Import, then export, on S3: the DB rows carry the keys, not their hashed names. A hashed object
    that records no key (written before keys were recorded, or a key too long for S3's 2 KB of
    metadata) is an error naming it, exit 1."""
    assert all(is_hashed(encode_segment(key)) for key in LONG_KEYS)
    state_db.dag_run()
    for key, value in LONG_KEYS.items():
        state_db.task(key, value)
    url, options = f"s3://{s3_bucket}/state", json.dumps(s3_options)
    assert cli.main(["import", "--path", url, "--storage-options", options, "--airflow-db", state_db.url]) == 0
    capsys.readouterr()
    with sqlite3.connect(state_db.path) as db:
        db.execute("DELETE FROM task_state_store")
    backend = ObjectStoreBackend(StoreSettings(path=url, storage_options=s3_options))
    unrecorded, too_long = "y" * 200, "键" * 512  # 512 characters: the longest key Airflow's column holds
    backend.store.write(object_path(RUN, unrecorded), b"1", ObjectMetadata("primary"))  # as written before
    backend.set(RUN, too_long, "2")
    assert backend.get(RUN, too_long) == "2"  # stored and read; only its key is not recorded

    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(tmp_path / "home"), AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=state_db.url)
    command = [str(Path(sys.executable).parent / "objstore-backend"), "export", "--path", url, "--storage-options"]
    result = subprocess.run([*command, options, "--json"], env=env, capture_output=True, text=True)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 1, result.stderr
    assert (summary["exported"], summary["errors"]) == (3, 2), summary
    assert state_db.task_keys() == LONG_KEYS
    for key in (unrecorded, too_long):
        assert any(
            note.startswith(object_path(RUN, key)) and "cannot be recovered" in note for note in summary["problems"]
        ), summary["problems"]
