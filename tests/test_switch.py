"""Switching a running deployment, in real Airflow runs: every value written before the switch is
read after it, in both directions, on SQLite and on a real PostgreSQL.

The DAG (tests/dags_switch/objstore_switch.py) keeps a job in task state (the first attempt
of a run stores a job id and fails; a later attempt finds it and resumes) and one watermark
per asset. ``airflow dags test`` starts each job; ``airflow tasks test`` runs the next attempt
of the same run (``dags test`` would delete the run and start another).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from objstore_backend.backend import ObjectStoreBackend
from objstore_backend.config import StoreSettings
from objstore_backend.layout import object_path
from objstore_backend.state_rows import TaskScopeIds

pytestmark = pytest.mark.airflow

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DAG_ID = "objstore_switch"
OURS = "objstore_backend.ObjectStoreBackend"
COMMONIO = "airflow.providers.common.io.state_store.backend.StateStoreObjectStorageBackend"
LINE = re.compile(r"SWITCH (started|resumed) (job-(\S+)) attempts=(\d+) watermarks=(\{.*\})")


class Deployment:
    """One Airflow deployment (home, metadata DB, store): runs DAGs and our commands against it."""

    def __init__(self, home: Path, db_url: str, **config: str) -> None:
        self.home = home
        self.db_url = db_url
        self.config = config
        home.mkdir(parents=True, exist_ok=True)

    def env(self, **config: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "SWITCH_"))}
        env.update(
            AIRFLOW_HOME=str(self.home),
            AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "tests" / "dags_switch"),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=self.db_url,
        )
        if self.db_url.startswith("postgresql://"):  # Airflow's async engine wants asyncpg unless told
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] = self.db_url.replace(
                "postgresql:", "postgresql+psycopg_async:"
            )
        env.update(self.config)
        env.update(config)
        return env

    def _step(self, command: list[str], **config: str) -> re.Match[str]:
        result = subprocess.run(command, env=self.env(**config), capture_output=True, text=True, cwd=self.home)
        output = result.stdout + result.stderr
        found = LINE.search(output)
        assert found is not None, output[-5000:]
        return found

    def start_job(self, assets: str, **config: str) -> str:
        """A new run whose first attempt stores a job and fails; its run id."""
        found = self._step([str(BIN / "airflow"), "dags", "test", DAG_ID], SWITCH_ASSETS=assets, **config)
        assert found.group(1) == "started"
        return found.group(3)

    def resume(self, run_id: str, **config: str) -> tuple[str, int, dict[str, int]]:
        """The next attempt of ``run_id``: (started or resumed, attempts, watermarks)."""
        found = self._step([str(BIN / "airflow"), "tasks", "test", DAG_ID, "step", run_id], **config)
        assert found.group(3) == run_id
        return found.group(1), int(found.group(4)), json.loads(found.group(5))

    def command(self, *args: str, ok: bool = True) -> dict[str, Any]:
        """Our command with ``--json``: its summary (exit 0 expected unless ``ok`` is False)."""
        result = subprocess.run(
            [str(BIN / "objstore-backend"), *args, "--json"],
            env=self.env(),
            capture_output=True,
            text=True,
            cwd=self.home,
        )
        assert (result.returncode == 0) is ok, result.stdout + result.stderr
        summary: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        return summary


def _rows(deployment: Deployment) -> dict[tuple[str, str], Any]:
    """``task_state_store`` by (run id, key), read with SQLAlchemy (either engine)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(deployment.db_url)
    with engine.connect() as connection:
        rows = connection.execute(sqlalchemy.text("SELECT run_id, key, value, expires_at FROM task_state_store"))
        found = {(row.run_id, row.key): row for row in rows}
    engine.dispose()
    return found


def _scope(run_id: str) -> TaskScopeIds:
    return TaskScopeIds(DAG_ID, run_id, "step", -1)


def test_offload_to_primary_only_what_import_brought_over_is_live(
    migrated_db: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Points 3 and 4: offload -> import -> primary, then export (SQLite). An offload object is not
    live in primary mode until import brings it over; one whose row expired before the switch
    never is, even though it stays at the very path the server reads."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "airflow.db").write_bytes(migrated_db.read_bytes())
    store_path = str(tmp_path / "state")
    deployment = Deployment(
        home,
        f"sqlite:///{home / 'airflow.db'}",
        AIRFLOW__OBJSTORE_BACKEND__PATH=store_path,
        AIRFLOW__OBJSTORE_BACKEND__THRESHOLD_BYTES="12",  # attempts and cursor stay inline in the DB
    )
    offload = {"AIRFLOW__WORKERS__STATE_STORE_BACKEND": OURS}
    run_id = deployment.start_job("offload", **offload)
    dead_run = deployment.start_job("offload", **offload)
    with sqlite3.connect(home / "airflow.db") as db:  # its job id's retention passes before the switch
        db.execute("UPDATE task_state_store SET expires_at = '2000-01-01 00:00:00' WHERE run_id = ?", (dead_run,))
        db.execute("UPDATE task_state_store SET expires_at = NULL WHERE run_id = ? AND key != 'job_id'", (dead_run,))
    backend = ObjectStoreBackend(StoreSettings(path=store_path))
    job_path = object_path(_scope(run_id), "job_id")
    assert backend.store.read(job_path) is not None and backend.get(_scope(run_id), "job_id") is None  # not yet

    summary = deployment.command("import", "--path", store_path, "--airflow-db", deployment.db_url)
    counted = ("rows", "imported", "skipped_expired", "skipped_newer", "unresolved", "errors")
    assert [summary[name] for name in counted] == [7, 6, 1, 0, 0, 0]
    assert orjson.loads(backend.get(_scope(run_id), "cursor") or "null") == {"page": 1}
    dead_path = object_path(_scope(dead_run), "job_id")
    assert backend.store.read(dead_path) is not None and backend.get(_scope(dead_run), "job_id") is None

    primary = {"AIRFLOW__STATE_STORE__BACKEND": OURS}
    assert deployment.resume(run_id, SWITCH_ASSETS="offload", **primary) == ("resumed", 2, {"offload": 3})
    # (both runs advanced the one watermark) the dead job id does not come back: the job starts
    # again, and its set replaces the old object
    assert deployment.resume(dead_run, SWITCH_ASSETS="offload", **primary) == ("started", 2, {"offload": 4})
    replaced = backend.store.read(dead_path)
    assert replaced is not None and replaced.metadata.mode == "primary"

    # export: the run's keys go back as values (not references), a key without its run is named
    backend.set(TaskScopeIds(DAG_ID, "deleted_run", "step", -1), "job_id", '"lost"')
    listing = sorted((o.path, o.version) for o in backend.store.iter_objects())
    exported = deployment.command("export", "--path", store_path, ok=False)
    assert (exported["no_owner"], exported["errors"]) == (1, 0)
    assert "deleted_run" in exported["problems"][0]
    assert sorted((o.path, o.version) for o in backend.store.iter_objects()) == listing  # the store is only read
    rows = _rows(deployment)
    assert json.loads(rows[(run_id, "job_id")].value) == f"job-{run_id}"
    assert json.loads(rows[(run_id, "attempts")].value) == 2


@pytest.fixture(scope="session")
def postgres_template(postgres_server: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database migrated by ``airflow db migrate`` once; each test copies it (CREATE DATABASE ... TEMPLATE)."""
    url = postgres_server.create_database("airflow_template")
    home = tmp_path_factory.mktemp("airflow-pg-template")
    result = subprocess.run(
        [str(BIN / "airflow"), "db", "migrate"], env=Deployment(home, url).env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return "airflow_template"


def test_round_trip_on_postgres_and_s3_continues_every_job_and_watermark(
    postgres_server: Any,
    postgres_template: str,
    tmp_path: Path,
    s3_bucket: str,
    s3_options: dict[str, Any],
    moto_server: Any,
) -> None:
    """Default, common.io and offload state -> import -> primary run -> export -> default run (PostgreSQL)."""
    db_url = postgres_server.create_database(f"airflow_{uuid.uuid4().hex[:8]}", template=postgres_template)
    connection = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": moto_server.endpoint_url, "region_name": "us-east-1"},
    }
    deployment = Deployment(tmp_path / "home", db_url, AIRFLOW_CONN_MOTO_S3=json.dumps(connection))
    store = ["--path", f"s3://{s3_bucket}/state", "--storage-options", json.dumps(s3_options)]
    primary = {
        "AIRFLOW__STATE_STORE__BACKEND": OURS,
        "AIRFLOW__OBJSTORE_BACKEND__PATH": f"s3://{s3_bucket}/state/",
        "AIRFLOW__OBJSTORE_BACKEND__STORAGE_OPTIONS": json.dumps(s3_options),
    }

    plain_run = deployment.start_job("metastore")
    commonio_run = deployment.start_job(
        "commonio",
        AIRFLOW__WORKERS__STATE_STORE_BACKEND=COMMONIO,
        AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_PATH=f"s3://moto_s3@{s3_bucket}/commonio/",
        AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_COMPRESSION="gzip",
        AIRFLOW__COMMON_IO__STATE_STORE_OBJECTSTORAGE_THRESHOLD="12",
    )
    offload_run = deployment.start_job(
        "offload",
        AIRFLOW__WORKERS__STATE_STORE_BACKEND=OURS,
        AIRFLOW__OBJSTORE_BACKEND__PATH=f"s3://moto_s3@{s3_bucket}/state/",
    )
    rows = _rows(deployment)
    assert json.loads(rows[(plain_run, "job_id")].value) == f"job-{plain_run}"
    commonio_ref = json.loads(rows[(commonio_run, "job_id")].value)["__airflow_state_ref__"]
    assert commonio_ref.startswith(f"s3://moto_s3@{s3_bucket}/commonio/") and commonio_ref.endswith(".gz")
    for key in ("job_id", "attempts"):
        assert json.loads(rows[(offload_run, key)].value)["__airflow_state_ref__"].startswith("objstore:task/")

    commonio = ["--commonio-path", f"s3://{s3_bucket}/commonio/", "--commonio-storage-options", json.dumps(s3_options)]
    imported = deployment.command("import", *store, "--airflow-db", db_url, *commonio)
    assert (imported["rows"], imported["imported"], imported["unresolved"], imported["errors"]) == (12, 12, 0, 0)
    again = deployment.command("import", *store, "--airflow-db", db_url, *commonio)
    assert (again["imported"], again["unchanged"]) == (0, 12)

    backend = ObjectStoreBackend(StoreSettings(path=f"s3://{s3_bucket}/state", storage_options=s3_options))
    for run_id in (plain_run, commonio_run, offload_run):
        assert orjson.loads(backend.get(_scope(run_id), "job_id") or "null") == f"job-{run_id}"
        found = backend.store.read(object_path(_scope(run_id), "job_id"))
        assert found is not None and found.metadata.expires_at == rows[(run_id, "job_id")].expires_at

    # primary mode: the job started under offload mode resumes, and every watermark advances
    assert deployment.resume(offload_run, **primary) == ("resumed", 2, {"commonio": 2, "metastore": 2, "offload": 2})

    exported = deployment.command("export", *store)
    assert (exported["exported"], exported["unchanged"], exported["skipped_offload"]) == (9, 3, 1)
    assert (exported["no_owner"], exported["errors"], exported["skipped_newer"]) == (0, 0, 0)

    # back on the default backend, the same job resumes once more and the watermarks go on
    assert deployment.resume(offload_run) == ("resumed", 3, {"commonio": 3, "metastore": 3, "offload": 3})
    later = deployment.command("export", *store)
    assert (later["exported"], later["skipped_newer"]) == (0, 4)  # the DB's rows are newer now

    # the GC's offload reconciliation on PostgreSQL: the asset's offload object is no longer referenced
    swept = deployment.command("gc", *store, "--airflow-db", db_url, "--offload-grace", "0")
    assert (swept["offload_orphans"], swept["deleted"], swept["errors"]) == (1, 1, 0)
    assert backend.store.read("asset/name/switch_offload/watermark") is None
