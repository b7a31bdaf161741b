"""The backend inside real Airflow 3.3 task runs: ``airflow dags test`` on SQLite, offline.

The example DAG (examples/dags/objstore_state_demo.py) stores a job id, fails on try 1 and
reattaches on try 2, writes keys with the default retention, one hour and NEVER_EXPIRE, maps a
task over three items and advances an asset watermark. Each test runs it in one deployment mode
and checks what landed in the bucket and in Airflow's metadata DB.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
import pytest

from objstore_backend.layout import ScopeKind, object_path, parse
from objstore_backend.store import ObjectStore
from tests.airflow_home import AIRFLOW, DAGS, INDEX_COLUMN, RETENTION_DAYS, airflow_env, running_release

pytestmark = pytest.mark.airflow

DAG_ID = "objstore_state_demo"
BACKEND = "objstore_backend.ObjectStoreBackend"
OBJSTORE_BACKEND = str(Path(sys.executable).with_name("objstore-backend"))
EXPECTED_TASK_KEYS = {
    ("submit_job", "-1", "job_id"),
    ("submit_job", "-1", "progress"),
    ("submit_job", "-1", "submitted_by"),
    ("process", "0", "done"),
    ("process", "1", "done"),
    ("process", "2", "done"),
    ("advance_watermark", "-1", "heartbeat"),
}


def dags_test(migrated_db: Path, home: Path, dag_id: str, dags: Path = DAGS, **config: str) -> str:
    """`airflow dags test` ``dag_id`` of the folder ``dags`` in ``home``, on a copy of the migrated DB;
    the run's output, once it succeeded."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(migrated_db, home / "airflow.db")
    env = airflow_env(home, **config)
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags)
    result = subprocess.run([AIRFLOW, "dags", "test", dag_id], env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "state=success" in output, output[-5000:]
    return output


def run_demo(migrated_db: Path, home: Path, **config: str) -> str:
    started = datetime.now(timezone.utc)
    output = dags_test(migrated_db, home, DAG_ID, **config)
    assert "reattached to job-" in output and "on try 2" in output, output[-5000:]
    return started.isoformat()


def stored_objects(store: ObjectStore) -> dict[tuple[str, ...], Any]:
    """Every object in the store by (task id, map index, key) or (scope kind, asset id, key); a task in a
    3.4 dynamic region (a mapped task) is keyed like the same task on 3.3."""
    found = {}
    for listed in store.iter_objects():
        location = parse(listed.path)
        assert location is not None, f"foreign object {listed.path}"
        obj = store.read(listed.path)
        if location.kind.value == "task":
            found[(location.ids[-2], location.ids[-1], location.key)] = obj
        else:
            found[(location.kind.value, location.ids[0], location.key)] = obj
    return found


def db_rows(home: Path, table: str) -> list[sqlite3.Row]:
    with sqlite3.connect(home / "airflow.db") as db:
        db.row_factory = sqlite3.Row
        return db.execute(f"SELECT * FROM {table}").fetchall()  # noqa: S608 - fixed table names


def _close_to(moment: str | datetime | None, expected: datetime, slack: timedelta = timedelta(minutes=5)) -> bool:
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment is not None and moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment is not None and abs(moment - expected) < slack


def _assert_offload_landed(store: ObjectStore, home: Path) -> None:
    objects = stored_objects(store)
    assert set(objects) == EXPECTED_TASK_KEYS | {("asset/name", "orders", "watermark")}
    assert all(obj.metadata.mode == "offload" and obj.metadata.expires_at is None for obj in objects.values())
    assert orjson.loads(objects[("submit_job", "-1", "job_id")].body).startswith("job-manual__")
    assert orjson.loads(objects[("process", "1", "done")].body) == [2]
    assert orjson.loads(objects[("asset/name", "orders", "watermark")].body) == 100

    now = datetime.now(timezone.utc)
    index = INDEX_COLUMN[running_release()]
    rows = {(r["task_id"], str(r[index]), r["key"]): r for r in db_rows(home, "task_state_store")}
    assert set(rows) == EXPECTED_TASK_KEYS
    for (task_id, map_index, key), row in rows.items():
        ref = json.loads(row["value"])["__airflow_state_ref__"]
        assert ref.startswith("objstore:task/") and ref.endswith(f"/{task_id}/{map_index}/{key}")
    # Airflow keeps its own expiry beside the reference
    assert _close_to(rows[("submit_job", "-1", "job_id")]["expires_at"], now + timedelta(days=RETENTION_DAYS))
    assert _close_to(rows[("submit_job", "-1", "progress")]["expires_at"], now + timedelta(hours=1))
    assert rows[("submit_job", "-1", "submitted_by")]["expires_at"] is None
    [asset_row] = db_rows(home, "asset_state_store")
    assert json.loads(asset_row["value"]) == {"__airflow_state_ref__": "objstore:asset/name/orders/watermark"}


def test_offload_mode_on_s3_with_an_airflow_connection(
    migrated_db: Path, tmp_path: Path, s3_bucket: str, moto_server: Any
) -> None:
    connection = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": moto_server.endpoint_url, "region_name": "us-east-1"},
    }
    run_demo(
        migrated_db,
        tmp_path / "home",
        AIRFLOW__WORKERS__STATE_STORE_BACKEND=BACKEND,
        AIRFLOW__OBJSTORE_BACKEND__PATH=f"s3://moto_s3@{s3_bucket}/airflow/state/",
        AIRFLOW_CONN_MOTO_S3=json.dumps(connection),
    )
    store = ObjectStore(
        f"s3://{s3_bucket}/airflow/state",
        {"endpoint_url": moto_server.endpoint_url, "key": "testing", "secret": "testing"},
    )
    _assert_offload_landed(store, tmp_path / "home")


def test_offload_mode_on_azure_with_an_airflow_connection(
    migrated_db: Path, tmp_path: Path, azure_container: str, azure_options: dict[str, Any]
) -> None:
    """``abfs://conn_id@container/...``: the azure provider's filesystem resolves the connection."""
    connection = {"conn_type": "wasb", "extra": {"connection_string": azure_options["connection_string"]}}
    run_demo(
        migrated_db,
        tmp_path / "home",
        AIRFLOW__WORKERS__STATE_STORE_BACKEND=BACKEND,
        AIRFLOW__OBJSTORE_BACKEND__PATH=f"abfs://azurite_blob@{azure_container}/airflow/state/",
        AIRFLOW_CONN_AZURITE_BLOB=json.dumps(connection),
    )
    _assert_offload_landed(ObjectStore(f"abfs://{azure_container}/airflow/state", azure_options), tmp_path / "home")


@pytest.mark.parametrize("cloud", ["s3", "gcs", "azure"])
def test_primary_mode(migrated_db: Path, tmp_path: Path, cloud: str, request: pytest.FixtureRequest) -> None:
    scheme = {"s3": "s3", "gcs": "gs", "azure": "abfs"}[cloud]
    container = "container" if cloud == "azure" else "bucket"
    bucket, options = request.getfixturevalue(f"{cloud}_{container}"), request.getfixturevalue(f"{cloud}_options")
    home = tmp_path / "home"
    run_demo(
        migrated_db,
        home,
        AIRFLOW__STATE_STORE__BACKEND=BACKEND,
        AIRFLOW__OBJSTORE_BACKEND__PATH=f"{scheme}://{bucket}/airflow/state/",
        AIRFLOW__OBJSTORE_BACKEND__STORAGE_OPTIONS=json.dumps(options),
    )
    objects = stored_objects(ObjectStore(f"{scheme}://{bucket}/airflow/state", options))
    [asset_key] = [k for k in objects if k[0] == "asset/id"]  # the server side knows the asset id
    assert set(objects) == EXPECTED_TASK_KEYS | {asset_key} and asset_key[2] == "watermark"
    assert all(obj.metadata.mode == "primary" for obj in objects.values())
    now = datetime.now(timezone.utc)
    assert _close_to(objects[("submit_job", "-1", "job_id")].metadata.expires_at, now + timedelta(days=RETENTION_DAYS))
    assert _close_to(objects[("submit_job", "-1", "progress")].metadata.expires_at, now + timedelta(hours=1))
    assert objects[("submit_job", "-1", "submitted_by")].metadata.expires_at is None
    assert objects[asset_key].metadata.expires_at is None
    assert _close_to(objects[("advance_watermark", "-1", "heartbeat")].metadata.expires_at, now, timedelta(minutes=2))
    assert orjson.loads(objects[("process", "2", "done")].body) == [3]
    assert orjson.loads(objects[asset_key].body) == 100
    assert db_rows(home, "task_state_store") == [] and db_rows(home, "asset_state_store") == []


def test_offload_mode_on_the_embedded_default(migrated_db: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    run_demo(migrated_db, home, AIRFLOW__WORKERS__STATE_STORE_BACKEND=BACKEND)
    _assert_offload_landed(ObjectStore(str(home / "state_store")), home)


def test_both_modes_at_once_lose_nothing(migrated_db: Path, tmp_path: Path) -> None:
    """The server is handed the worker's reference for the same key, and must not write it over the value."""
    home = tmp_path / "home"
    run_demo(
        migrated_db,
        home,
        AIRFLOW__WORKERS__STATE_STORE_BACKEND=BACKEND,
        AIRFLOW__STATE_STORE__BACKEND=BACKEND,
    )
    objects = stored_objects(ObjectStore(str(home / "state_store")))
    assert EXPECTED_TASK_KEYS <= set(objects)
    assert orjson.loads(objects[("submit_job", "-1", "job_id")].body).startswith("job-manual__")
    assert orjson.loads(objects[("process", "0", "done")].body) == [1]
    assert objects[("submit_job", "-1", "job_id")].metadata.adopted
    assert db_rows(home, "task_state_store") == [] and db_rows(home, "asset_state_store") == []

    # The GC, reconciling against this (empty) DB, may reclaim the worker's copy of the asset
    # watermark; the server's answer must still lead to the value.
    gc = subprocess.run(
        [OBJSTORE_BACKEND, "gc", "--path", str(home / "state_store"), "--json", "--offload-grace", "0"]
        + ["--airflow-db", f"sqlite:///{home / 'airflow.db'}"],
        capture_output=True,
        text=True,
        env=airflow_env(home),
    )
    assert gc.returncode == 0, gc.stdout + gc.stderr
    assert json.loads(gc.stdout.strip().splitlines()[-1])["offload_orphans"] == 1  # asset/name/orders/watermark
    from airflow.sdk.state import AssetScope

    from objstore_backend.backend import ObjectStoreBackend
    from objstore_backend.config import StoreSettings

    backend = ObjectStoreBackend(StoreSettings(path=str(home / "state_store")))
    [asset_id] = [k[1] for k in objects if k[0] == "asset/id"]
    answered = backend.get(AssetScope(asset_id=int(asset_id)), "watermark")
    assert backend.deserialize_asset_state_store_from_ref(json.loads(answered)["__airflow_state_ref__"]) == 100


def test_gc_reclaims_exactly_the_offload_objects_airflow_dropped(migrated_db: Path, tmp_path: Path) -> None:
    """Offload writes, `airflow state-store clean` drops expired references, the GC reclaims the orphans."""
    home = tmp_path / "home"
    run_demo(migrated_db, home, AIRFLOW__WORKERS__STATE_STORE_BACKEND=BACKEND)
    path = str(home / "state_store")

    def gc(*flags: str) -> dict[str, Any]:
        command = [
            OBJSTORE_BACKEND,
            "gc",
            "--path",
            path,
            "--json",
            *flags,
        ]
        result = subprocess.run(command, capture_output=True, text=True, env=airflow_env(home))
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])

    # Without access to Airflow's DB the GC leaves offload objects alone, and counts them.
    assert (gc()["offload"], gc()["deleted"]) == (8, 0)

    # Time passes: the heartbeat (one second) and the mapped task's references (one hour)
    # expire, and Airflow's own clean drops their rows. It does not touch the objects: a
    # custom backend is "skipped".
    with sqlite3.connect(home / "airflow.db") as db:
        db.execute(
            "UPDATE task_state_store SET expires_at = '2000-01-01 00:00:00' "
            "WHERE task_id = 'process' OR key = 'heartbeat'"
        )
    subprocess.run([AIRFLOW, "state-store", "clean"], env=airflow_env(home), check=True, capture_output=True)
    assert {row["task_id"] for row in db_rows(home, "task_state_store")} == {"submit_job"}
    assert len(stored_objects(ObjectStore(path))) == 8

    airflow_db = ["--airflow-db", f"sqlite:///{home / 'airflow.db'}"]
    young = gc(*airflow_db)  # default grace period: objects this young may belong to an in-flight set
    assert (young["offload_orphans"], young["deleted"]) == (0, 0)
    swept = gc(*airflow_db, "--offload-grace", "0")
    assert (swept["offload_orphans"], swept["deleted"], swept["offload"], swept["errors"]) == (4, 4, 4, 0)
    remaining = set(stored_objects(ObjectStore(path)))
    still_referenced = {k for k in EXPECTED_TASK_KEYS if k[0] == "submit_job"}
    assert remaining == still_referenced | {("asset/name", "orders", "watermark")}


def test_a_forged_reference_in_airflows_row_is_refused_inside_the_task(migrated_db: Path, tmp_path: Path) -> None:
    """Offload mode: Airflow's row of one DAG's key (or asset's) holds a reference to another's object,
    as anyone who may edit that row can store through Airflow's REST API. The task never gets the
    other's value: its read fails, naming the refusal."""
    from objstore_backend.backend import ObjectStoreBackend
    from objstore_backend.config import StoreSettings
    from objstore_backend.state_rows import TaskScopeIds
    from tests.test_switch import DAG_ID as SWITCH_DAG
    from tests.test_switch import OURS, Deployment

    home, store_path = tmp_path / "home", str(tmp_path / "state")
    home.mkdir()
    (home / "airflow.db").write_bytes(migrated_db.read_bytes())
    deployment = Deployment(
        home,
        f"sqlite:///{home / 'airflow.db'}",
        AIRFLOW__OBJSTORE_BACKEND__PATH=store_path,
        AIRFLOW__WORKERS__STATE_STORE_BACKEND=OURS,
        SWITCH_ASSETS="offload",
    )
    run_id = deployment.start_job("offload")  # stores its job id, fails: the next attempt reads it
    backend = ObjectStoreBackend(StoreSettings(path=store_path))
    stolen = backend.serialize_task_state_store_to_ref(
        value="job-from-dag-payroll", key="job_id", scope=TaskScopeIds("payroll", run_id, "step", -1)
    )
    with sqlite3.connect(home / "airflow.db") as db:
        db.execute(
            "UPDATE task_state_store SET value = ? WHERE run_id = ? AND key = 'job_id'",
            (json.dumps({"__airflow_state_ref__": stolen}), run_id),
        )

    def next_attempt() -> str:
        command = [AIRFLOW, "tasks", "test", SWITCH_DAG, "step", run_id]
        result = subprocess.run(command, env=deployment.env(), capture_output=True, text=True, cwd=home)
        return result.stdout + result.stderr

    output = next_attempt()
    assert "job-from-dag-payroll" not in output and "SWITCH resumed" not in output, output[-5000:]
    assert f"Airflow's row for state key 'job_id' is refused: the reference names {stolen[9:]}" in output

    # an asset's row naming another asset's object
    from airflow.sdk.state import AssetScope

    payroll = backend.serialize_asset_state_store_to_ref(value=1000, key="watermark", scope=AssetScope(name="payroll"))
    with sqlite3.connect(home / "airflow.db") as db:
        assert db.execute("UPDATE asset_state_store SET value = ?", (json.dumps({"__airflow_state_ref__": payroll}),))
    output = next_attempt()
    assert "watermarks=" not in output, output[-5000:]
    assert f"Airflow's row for state key 'watermark' is refused: the reference names {payroll[9:]}" in output


def task_objects(store: ObjectStore, task_id: str) -> dict[tuple[str, ...], Any]:
    """The objects of task ``task_id`` by their whole location: (dag id, run id, [region], task id,
    index, key); unlike :func:`stored_objects`, a region stays apart from the zero region's path."""
    found = {}
    for listed in store.iter_objects():
        location = parse(listed.path)
        if location is not None and location.kind is ScopeKind.TASK and location.ids[-2] == task_id:
            found[(*location.ids, location.key)] = store.read(listed.path)
    return found


@pytest.mark.airflow34
@pytest.mark.parametrize("mode", ["offload", "primary"])
def test_task_loop_iterations_never_share_state(
    migrated_db: Path, tmp_path: Path, s3_bucket: str, s3_options: dict[str, Any], mode: str
) -> None:
    """Airflow 3.4 runs a looped task group's iterations in one region, told apart by their index.
    Offload (the worker's setting) and primary (the server's): each iteration finds nothing under the
    key an earlier one wrote, keeps its own object, and clearing one iteration's state keeps the other's."""
    from airflow.state import TaskScope

    from objstore_backend.backend import ObjectStoreBackend
    from objstore_backend.config import StoreSettings
    from tests.test_state_rows import DAG_ID as LOOP_DAG
    from tests.test_state_rows import DAGS as LOOP_DAGS

    url = f"s3://{s3_bucket}/airflow/state"
    setting = {"offload": "AIRFLOW__WORKERS__STATE_STORE_BACKEND", "primary": "AIRFLOW__STATE_STORE__BACKEND"}[mode]
    output = dags_test(
        migrated_db,
        tmp_path / "home",
        LOOP_DAG,
        LOOP_DAGS,
        AIRFLOW__OBJSTORE_BACKEND__PATH=f"{url}/",
        AIRFLOW__OBJSTORE_BACKEND__STORAGE_OPTIONS=json.dumps(s3_options),
        **{setting: BACKEND},
    )
    assert "iteration 0 read None before writing" in output, output[-5000:]
    assert "iteration 1 read None before writing" in output, output[-5000:]

    backend = ObjectStoreBackend(StoreSettings(path=url, storage_options=s3_options))
    iterations = task_objects(backend.store, "iterate.count")
    regions = {location[:4] for location in iterations}  # (dag id, run id, region, task id)
    assert len(regions) == 1, f"the iterations are not in one region: {sorted(iterations)}"
    [(dag_id, run_id, region, task_id)] = regions
    assert region.startswith("region=") and task_id == "iterate.count"
    assert {location[4:]: orjson.loads(obj.body) for location, obj in iterations.items()} == {
        ("0", "iteration"): 0,
        ("1", "iteration"): 1,
    }
    assert all(obj.metadata.mode == mode for obj in iterations.values())

    everything = {listed.path for listed in backend.store.iter_objects()}
    region_id = UUID(region.removeprefix("region="))
    first = TaskScope(dag_id, run_id, task_id, region_id=region_id, region_index=0)
    backend.clear(first)
    assert everything - {listed.path for listed in backend.store.iter_objects()} == {object_path(first, "iteration")}
    assert list(task_objects(backend.store, task_id)) == [(dag_id, run_id, region, task_id, "1", "iteration")]
