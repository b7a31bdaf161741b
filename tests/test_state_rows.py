"""Airflow's state rows read back from DBs that real Airflow 3.3 and 3.4 migrated and wrote.

Each release's own `airflow` (this venv's, or the other release's venv: see
``tests.airflow_home.airflow_of``) migrates a SQLite DB and runs a DAG whose tasks write task
state through our backend in offload mode: a plain task, a mapped one and, on 3.4, a task loop,
whose iterations share a region. Import (``AirflowStateDB``) must find each row's object where
the worker put it, and the GC's reconciler must see exactly the references the DB holds.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path
from uuid import UUID

import pytest

from objstore_backend.layout import object_path, parse
from objstore_backend.reconcile import AirflowDBReconciler
from objstore_backend.state_rows import AirflowStateDB, TaskScopeIds
from objstore_backend.store import ObjectStore
from tests.airflow_home import REPO, airflow_env, airflow_of, migrate

pytestmark = [pytest.mark.airflow, pytest.mark.every_release]

DAG_ID = "objstore_state_rows"
DAGS = REPO / "tests" / "dags_state_rows"
#: Airflow 3.4's last revision before `map_index` became `region_index` (0143, dynamic regions).
REVISION_BEFORE_RENAME = "54a27b6f9d01"


def run_dag(airflow: str, home: Path) -> None:
    """`airflow dags test` the DAG, its workers storing task state in ``home/state_store``."""
    env = airflow_env(home, AIRFLOW__WORKERS__STATE_STORE_BACKEND="objstore_backend.ObjectStoreBackend")
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS)
    result = subprocess.run([airflow, "dags", "test", DAG_ID], env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "state=success" in output, output[-5000:]


#: The task rows the DAG writes, by (task id, map index); on 3.4 also the loop's two iterations.
TASK_ROWS = {"3.3": {("plain", -1), ("mapped", 0), ("mapped", 1)}}
TASK_ROWS["3.4"] = TASK_ROWS["3.3"] | {("iterate.count", 0), ("iterate.count", 1)}


@pytest.mark.parametrize("release", ["3.3", "3.4"])
def test_import_and_the_reconciler_read_each_releases_task_rows(release: str, tmp_path: Path) -> None:
    airflow = airflow_of(release)
    db_path = migrate(tmp_path, airflow)
    run_dag(airflow, tmp_path)
    url = f"sqlite:///{db_path}"
    db = AirflowStateDB(url)
    assert db.release == release
    rows = [row for page in db.rows() for row in page]
    scopes = [row.scope for row in rows if isinstance(row.scope, TaskScopeIds)]
    assert {(scope.task_id, scope.map_index) for scope in scopes} == TASK_ROWS[release]
    regions: dict[str, set[UUID | None]] = {}
    for scope in scopes:
        regions.setdefault(scope.task_id, set()).add(scope.region_id)
    assert regions.pop("plain") == {None}  # the zero UUID: no region
    if release == "3.4":  # a mapped task is a region of its own, so is the loop (its iterations by index)
        [mapped_region], [loop_region] = regions.values()
        assert None not in (mapped_region, loop_region) and mapped_region != loop_region
    else:
        assert regions == {"mapped": {None}}

    # import places each row's object where the worker's backend put it: regions in their own namespace
    store = ObjectStore(str(tmp_path / "state_store"))
    task_objects = {listed.path for listed in store.iter_objects() if listed.path.startswith("task/")}
    assert {object_path(row.scope, row.key) for row in rows if isinstance(row.scope, TaskScopeIds)} == task_objects
    in_regions = {path for path in task_objects if "/region=" in path}
    assert in_regions == ({path for path in task_objects if "/plain/" not in path} if release == "3.4" else set())
    db.close()

    # the reconciler sees every reference; once Airflow drops the rows (a clear), their objects are orphans
    assert all(AirflowDBReconciler(url).is_referenced(parse(path), path) for path in task_objects)  # type: ignore[arg-type]
    with sqlite3.connect(db_path) as connection:
        connection.execute("DELETE FROM task_state_store WHERE task_id != 'plain'")
    fresh = AirflowDBReconciler(url)
    orphans = {path for path in task_objects if not fresh.is_referenced(parse(path), path)}  # type: ignore[arg-type]
    assert orphans == {path for path in task_objects if "/plain/" not in path}


def test_a_db_between_the_releases_schemas_is_named_with_its_revision(tmp_path: Path) -> None:
    """Airflow 3.4 stopped after its dynamic-region migration: region_id beside 3.3's map_index."""
    db_path = migrate(tmp_path, airflow_of("3.4"), "--to-revision", REVISION_BEFORE_RENAME)
    with pytest.raises(ValueError) as half_migrated:
        AirflowStateDB(f"sqlite:///{db_path}")
    assert str(half_migrated.value) == (
        f"sqlite:///{db_path} is not an Airflow 3.3 metadata DB (nor 3.4): table task_state_store has "
        "map_index and region_id of map_index, region_id, region_index, not Airflow 3.3's map_index; "
        f"Airflow 3.4's region_id and region_index (alembic revision: {REVISION_BEFORE_RENAME})"
    )


def test_a_task_table_with_no_index_column_is_a_clear_error(migrated_db: Path, tmp_path: Path) -> None:
    db_path = tmp_path / "airflow.db"
    db_path.write_bytes(migrated_db.read_bytes())
    with sqlite3.connect(db_path) as connection:
        connection.execute("ALTER TABLE task_state_store RENAME COLUMN map_index TO slot")
        [revision] = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    with pytest.raises(ValueError, match=rf"has none of map_index, region_id, region_index.*revision: {revision}\)"):
        AirflowStateDB(f"sqlite:///{db_path}")
