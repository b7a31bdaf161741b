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


def test_offload_to_primary_keeps_task_objects_but_needs_import_for_the_rest(
    migrated_db: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Point 3: flipping offload -> primary without import, then import, then export (SQLite)."""
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
    run_id = deployment.start_job("offload", AIRFLOW__WORKERS__STATE_STORE_BACKEND=OURS)

    # The switch without import: the job id (an object at the very path the server reads) is
    # found, but the inline values and the asset watermark (kept by asset name in offload
    # mode, read by asset id on the server) are not: the attempt count and watermark restart.
    assert deployment.resume(run_id, SWITCH_ASSETS="offload", AIRFLOW__STATE_STORE__BACKEND=OURS) == (
        "resumed",
        1,
        {"offload": 1},
    )

    # Import brings in the rest; the keys the server already rewrote (with the same values
    # here: both counts restarted at 1) are left as they are.
    summary = deployment.command("import", "--path", store_path, "--airflow-db", deployment.db_url)
    counted = ("rows", "imported", "unchanged", "skipped_newer", "unresolved", "errors")
    assert [summary[name] for name in counted] == [4, 2, 2, 0, 0, 0]
    backend = ObjectStoreBackend(StoreSettings(path=store_path))
    assert orjson.loads(backend.get(_scope(run_id), "cursor") or "null") == {"page": 1}

    # export: the run's keys go back as values (not references), a key without its run is named
    backend.set(TaskScopeIds(DAG_ID, "deleted_run", "step", -1), "job_id", '"lost"')
    listing = sorted((o.path, o.version) for o in backend.store.iter_objects())
    exported = deployment.command("export", "--path", store_path, ok=False)
    assert [exported[name] for name in ("exported", "no_owner", "errors", "skipped_offload")] == [4, 1, 0, 0]
    assert "deleted_run" in exported["problems"][0]
    assert sorted((o.path, o.version) for o in backend.store.iter_objects()) == listing  # the store is only read
    rows = _rows(deployment)
    assert json.loads(rows[(run_id, "job_id")].value) == f"job-{run_id}"
    assert json.loads(rows[(run_id, "cursor")].value) == {"page": 1}
    assert json.loads(rows[(run_id, "attempts")].value) == 1


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
