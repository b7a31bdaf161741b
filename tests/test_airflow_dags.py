"""The GC and audit DAGs (objstore_backend.dags) in real Airflow 3.3 runs: ``airflow dags test``.

The DAG files: examples/dags/objstore_backend_gc.py (the one-line file a user copies) and
tests/dags/objstore_maintenance.py (the same functions with the options these tests vary).
Task instances and XComs are read from Airflow's SQLite DB after each run; task logs are in
the command's output.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.state import AssetScope, TaskScope
from airflow.utils.file import might_contain_dag_via_default_heuristic

from objstore_backend.backend import ObjectStoreBackend
from objstore_backend.config import StoreSettings
from objstore_backend.dags import add_up_summaries, audit_dag, gc_dag
from objstore_backend.gc import GCOptions, run_gc
from objstore_backend.layout import object_path
from objstore_backend.reconcile import AirflowDBReconciler
from tests.airflow_home import AIRFLOW, DAGS, INDEX_COLUMN, airflow_env, running_release

REPO = Path(__file__).resolve().parent.parent
TEST_DAGS = REPO / "tests" / "dags"
EXAMPLE = DAGS / "objstore_backend_gc.py"
PAST = datetime.now(timezone.utc) - timedelta(minutes=1)
FUTURE = datetime.now(timezone.utc) + timedelta(days=1)
RUNS = [f"scheduled__2026-01-{day:02d}" for day in range(1, 13)]  # enough DAG runs to give each shard some


def populate(backend: ObjectStoreBackend) -> dict[str, set[str]]:
    """Expired, live and never-expiring keys over many DAG runs; returns their paths by fate."""
    fates: dict[str, set[str]] = {"expired": set(), "kept": set()}
    for number, run_id in enumerate(RUNS):
        for key, expires_at, fate in (("old", PAST, "expired"), ("live", FUTURE, "kept"), ("forever", None, "kept")):
            scope = TaskScope(f"etl{number % 3}", run_id, "extract")  # three DAGs: a key range for each shard
            backend.set(scope, key, json.dumps({"run": run_id}), expires_at=expires_at)
            fates[fate].add(object_path(scope, key))
    backend.set(AssetScope(asset_id=7), "watermark", "100")
    fates["kept"].add(object_path(AssetScope(asset_id=7), "watermark"))
    return fates


def stored_paths(backend: ObjectStoreBackend) -> set[str]:
    return {listed.path for listed in backend.store.iter_objects()}


def start_dag(migrated_db: Path, home: Path, dag_id: str, *, dags: Path = TEST_DAGS, **config: str) -> Any:
    """Start ``airflow dags test`` on a copy of the migrated DB (if the home has none yet).

    The tests start two runs at once: each is one Python process, mostly busy on one core.
    """
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "airflow.db").exists():
        shutil.copy(migrated_db, home / "airflow.db")
    env = {**airflow_env(home, **config), "AIRFLOW__CORE__DAGS_FOLDER": str(dags)}
    with open(home / "dags-test.log", "w") as log:
        return subprocess.Popen([AIRFLOW, "dags", "test", dag_id], env=env, stdout=log, stderr=subprocess.STDOUT)


def output_of(run: Any, home: Path) -> str:
    """The run's output (task logs included), once it has finished."""
    run.wait(timeout=300)
    return (home / "dags-test.log").read_text()


#: A DAG's task instances with their return values, per Airflow release: 3.4 renamed the index to
#: region_index and keeps XComs per task attempt (xcom_v2, by the task instance's id).
TASK_INSTANCES = {
    "3.3": "SELECT ti.task_id, ti.map_index, ti.state, ti.try_number, ti.rendered_map_index, x.value "
    "FROM task_instance ti LEFT JOIN dag_run r ON r.dag_id = ti.dag_id AND r.run_id = ti.run_id "
    "LEFT JOIN xcom x ON x.dag_run_id = r.id AND x.task_id = ti.task_id AND x.map_index = ti.map_index "
    "AND x.key = 'return_value' WHERE ti.dag_id = ?",
    "3.4": "SELECT ti.task_id, ti.region_index AS map_index, ti.state, ti.try_number, ti.rendered_map_index, "
    "x.value FROM task_instance ti LEFT JOIN xcom_v2 x ON x.task_instance_id = ti.id AND x.key = 'return_value' "
    "WHERE ti.dag_id = ? ORDER BY ti.try_number",  # the last attempt's row wins
}


def task_instances(home: Path, dag_id: str) -> dict[tuple[str, int], dict[str, Any]]:
    """(task_id, map_index) -> the task instance's state, try number, label and return value."""
    with sqlite3.connect(home / "airflow.db") as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(TASK_INSTANCES[running_release()], (dag_id,)).fetchall()
    return {
        (row["task_id"], row["map_index"]): {
            "state": row["state"],
            "try": row["try_number"],
            "label": row["rendered_map_index"],
            "xcom": None if row["value"] is None else json.loads(row["value"]),
        }
        for row in rows
    }


def _s3_config(bucket: str, options: dict[str, Any], path: str = "airflow/state/") -> dict[str, str]:
    return {
        "AIRFLOW__OBJSTORE_BACKEND__PATH": f"s3://{bucket}/{path}",
        "AIRFLOW__OBJSTORE_BACKEND__STORAGE_OPTIONS": json.dumps(options),
    }


def _s3_backend(bucket: str, options: dict[str, Any]) -> ObjectStoreBackend:
    return ObjectStoreBackend(StoreSettings(path=f"s3://{bucket}/airflow/state/", storage_options=options))


pytestmark = pytest.mark.airflow

COUNTERS = ("scanned", "expired", "live", "never_expire", "offload", "offload_orphans", "foreign", "unreadable")


def test_gc_dag_on_s3_in_shards_and_the_example_file_on_the_embedded_default(
    migrated_db: Path, tmp_path: Path, s3_bucket: str, s3_options: dict[str, Any]
) -> None:
    """S3: three mapped shards, offload reconciliation through an Airflow connection; their summed
    summaries equal one unsharded sweep. Local: the one-line example DAG file as a user copies it."""
    home, local_home = tmp_path / "s3", tmp_path / "local"
    home.mkdir()
    shutil.copy(migrated_db, home / "airflow.db")
    backend = _s3_backend(s3_bucket, s3_options)
    fates = populate(backend)
    # offload objects: one Airflow still references (a row in its DB), one it dropped (an orphan)
    referenced, orphan = TaskScope("etl", RUNS[0], "load"), TaskScope("etl", RUNS[1], "load")
    ref = backend.serialize_task_state_store_to_ref(value={"rows": 1}, key="batch", scope=referenced)
    backend.serialize_task_state_store_to_ref(value={"rows": 2}, key="batch", scope=orphan)
    with sqlite3.connect(home / "airflow.db") as db:
        db.execute(
            f"INSERT INTO task_state_store (dag_run_id, task_id, {INDEX_COLUMN[running_release()]}, key, dag_id, "
            "run_id, value, updated_at) "
            "VALUES (1, 'load', -1, 'batch', 'etl', ?, ?, '2026-01-01 00:00:00')",
            (RUNS[0], json.dumps({"__airflow_state_ref__": ref})),
        )
    fates["kept"].add(object_path(referenced, "batch"))
    fates["expired"].add(object_path(orphan, "batch"))
    db_url = f"sqlite:///{home / 'airflow.db'}"
    # the reference sweep keeps its index apart, so the DAG's shards start from the bucket alone
    reference = GCOptions(
        dry_run=True,
        offload_grace=timedelta(0),
        reconciler=AirflowDBReconciler(db_url),
        index_url=str(tmp_path / "reference-index"),
    )
    unsharded = run_gc(backend.store, reference)
    assert (unsharded.expired, unsharded.offload_orphans, unsharded.live) == (len(RUNS), 1, len(RUNS))
    local = ObjectStoreBackend(StoreSettings(path=str(local_home / "state_store")))
    local_fates = populate(local)

    sharded_run = start_dag(
        migrated_db, home, "gc_sharded", **_s3_config(s3_bucket, s3_options), AIRFLOW_CONN_AIRFLOW_DB_READER=db_url
    )
    example_run = start_dag(migrated_db, local_home, "objstore_backend_gc", dags=DAGS)
    output, example_output = output_of(sharded_run, home), output_of(example_run, local_home)

    assert stored_paths(backend) == fates["kept"], output[-5000:]
    instances = task_instances(home, "gc_sharded")
    shards = [instances[("sweep", index)] for index in range(3)]
    assert set(instances) == {("sweep", 0), ("sweep", 1), ("sweep", 2), ("total", -1)}
    assert [(ti["state"], ti["label"], ti["xcom"]["shard"]) for ti in shards] == [
        ("success", f"shard {index}/3", f"{index}/3") for index in range(3)
    ]
    assert all(ti["xcom"]["scanned"] > 0 and ti["xcom"]["errors"] == 0 for ti in shards)  # each shard had work
    total = instances[("total", -1)]
    assert total["state"] == "success" and total["xcom"] == add_up_summaries(ti["xcom"] for ti in shards)
    assert {name: total["xcom"][name] for name in COUNTERS} == {name: getattr(unsharded, name) for name in COUNTERS}
    assert total["xcom"]["deleted"] == unsharded.expired + unsharded.offload_orphans == len(fates["expired"])
    for ti in shards:  # each shard's summary is in its log
        assert f'"shard":"{ti["xcom"]["shard"]}"' in output

    assert stored_paths(local) == local_fates["kept"], example_output[-5000:]
    instances = task_instances(local_home, "objstore_backend_gc")
    assert set(instances) == {("sweep", 0), ("total", -1)}
    summary = instances[("sweep", 0)]["xcom"]
    assert instances[("sweep", 0)]["state"] == "success" and summary["shard"] == "0/1"
    assert (summary["expired"], summary["deleted"], summary["live"], summary["never_expire"]) == (12, 12, 12, 13)
    assert instances[("total", -1)]["xcom"]["deleted"] == 12


def test_the_example_file_is_parsed_in_safe_mode_because_of_its_comment(tmp_path: Path) -> None:
    """Airflow skips a file whose text lacks "airflow": the two code lines alone would be skipped."""
    assert might_contain_dag_via_default_heuristic(str(EXAMPLE))
    code = "".join(line for line in EXAMPLE.read_text().splitlines(keepends=True) if not line.startswith("#"))
    assert code.strip() == "from objstore_backend.dags import gc_dag\n\ndag = gc_dag()"
    (tmp_path / "gc.py").write_text(code)
    assert not might_contain_dag_via_default_heuristic(str(tmp_path / "gc.py"))


def test_a_failed_sweep_fails_its_task_and_a_retry_after_a_failure_mid_sweep_finishes_the_job(
    migrated_db: Path,
    tmp_path: Path,
    s3_bucket: str,
    s3_options: dict[str, Any],
    s3_fault_proxy: Any,
) -> None:
    """A missing bucket fails the task, the error in its log and the summary in its XCom. Try 1 of
    the other run cannot read one expired object (the rest go) and fails; try 2 deletes the rest."""
    backend = _s3_backend(s3_bucket, s3_options)
    fates = populate(backend)
    stuck = f"/{RUNS[5]}/extract/-1/old"
    rule = s3_fault_proxy.inject(
        "500", when=lambda request: request.method == "HEAD" and request.path.endswith(stuck), times=2
    )
    # through the proxy; two attempts per request, so the two faults fail the read for good
    options = {**s3_options, "endpoint_url": s3_fault_proxy.url, "retry": {"attempts": 2, "base_delay": 0.01}}
    retried_home, missing_home = tmp_path / "retried", tmp_path / "missing"

    retried_run = start_dag(migrated_db, retried_home, "gc_retried", **_s3_config(s3_bucket, options))
    missing_run = start_dag(migrated_db, missing_home, "gc_no_retry", **_s3_config("no-such-bucket-here", s3_options))
    output, missing_output = output_of(retried_run, retried_home), output_of(missing_run, missing_home)

    assert "bucket 'no-such-bucket-here' does not exist" in missing_output, missing_output[-5000:]
    instances = task_instances(missing_home, "gc_no_retry")
    failed = instances[("sweep", 0)]
    assert (failed["state"], failed["try"]) == ("failed", 1)
    assert failed["xcom"]["errors"] == 1 and "does not exist" in failed["xcom"]["error_samples"][0]
    assert instances[("total", -1)]["state"] == "upstream_failed"

    assert sum(rule.injected.values()) == 2
    assert "shard 0/1: 1 of its reads or deletes failed" in output, output[-5000:]  # try 1's failure
    assert stored_paths(backend) == fates["kept"]
    sweep = task_instances(retried_home, "gc_retried")[("sweep", 0)]
    assert (sweep["state"], sweep["try"]) == ("success", 2)
    assert (sweep["xcom"]["deleted"], sweep["xcom"]["errors"], sweep["xcom"]["kept"]) == (1, 0, 0)
    assert sweep["xcom"]["live"] == len(RUNS)


def test_the_audit_dag_fails_on_findings_at_its_level(
    migrated_db: Path, tmp_path: Path, s3_bucket: str, s3_options: dict[str, Any]
) -> None:
    """moto's fresh bucket has warnings (no encryption, ...) and no errors: warning fails, error passes."""
    populate(_s3_backend(s3_bucket, s3_options))
    config = _s3_config(s3_bucket, s3_options)
    strict_run = start_dag(migrated_db, tmp_path / "strict", "audit_strict", **config)
    lenient_run = start_dag(migrated_db, tmp_path / "lenient", "audit_lenient", **config)
    strict, lenient = output_of(strict_run, tmp_path / "strict"), output_of(lenient_run, tmp_path / "lenient")

    failed = task_instances(tmp_path / "strict", "audit_strict")[("audit", -1)]
    assert (failed["state"], failed["try"]) == ("failed", 1), strict[-5000:]  # findings are not retried
    assert "findings at warning or above" in strict and "S3_NO_DEFAULT_ENCRYPTION" in strict
    passed = task_instances(tmp_path / "lenient", "audit_lenient")[("audit", -1)]
    assert passed["state"] == "success", lenient[-5000:]
    for report in (failed["xcom"], passed["xcom"]):
        assert report["inventory"]["keys"] == 3 * len(RUNS) + 1
        assert report["inventory"]["expired_backlog"]["keys"] == len(RUNS)
        assert "S3_NO_DEFAULT_ENCRYPTION" in {finding["code"] for finding in report["findings"]}
        assert not any(finding["level"] == "error" for finding in report["findings"])


def test_bad_dag_options_fail_when_the_file_is_parsed() -> None:
    with pytest.raises(ValueError, match="shards must be >= 1"):
        gc_dag(shards=0)
    with pytest.raises(ValueError, match="concurrency must be >= 1"):
        gc_dag(concurrency=0)
    with pytest.raises(ValueError, match="fail_on must be one of info, warning, error"):
        audit_dag(fail_on="critical")
