"""``objstore-backend import`` rate: rows per second from a real PostgreSQL into S3 (moto).

Starts PostgreSQL (Debian's, in a temporary directory, as tests/postgres.py does) and moto's
S3 server (counting requests, in its own process), creates Airflow's schema with
``airflow db migrate``, inserts ``--rows`` live task state rows (plain JSON, as Airflow's
default backend writes them), then times one ``import`` run and one repeat run (nothing new
to write), with the requests each sent.

Run: ``python benchmarks/import_rate.py`` (about 2 minutes, most of it ``airflow db migrate``).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone

from _servers import REPO, S3_OPTIONS, counts, moto_server, s3_client

from objstore_backend.migrate import ImportOptions, run_import
from objstore_backend.state_rows import AirflowStateDB
from objstore_backend.store import ObjectStore
from tests.postgres import PostgresServer


def migrate(url: str) -> None:
    home = tempfile.mkdtemp(prefix="import-bench-home-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=home,
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=url,
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC=url.replace("postgresql:", "postgresql+psycopg_async:"),
    )
    airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)


def fill(url: str, rows: int) -> None:
    """``rows`` task state rows of one DAG run, 100 map indices per task (a ~60-byte JSON value each)."""
    import psycopg

    expires = datetime.now(timezone.utc) + timedelta(days=30)
    with psycopg.connect(url) as connection:
        connection.execute("SET session_replication_role = replica")  # no dag_run row: skip the foreign key
        with connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO task_state_store (dag_run_id, task_id, map_index, key, dag_id, run_id, value, "
                "updated_at, expires_at) VALUES (1, %s, %s, 'cursor', 'bench', 'manual__1', %s, now(), %s)",
                [
                    (f"t{i // 100}", i % 100, f'{{"offset": {i}, "file": "part-{i:06d}.parquet"}}', expires)
                    for i in range(rows)
                ],
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    print(f"# import rate: {platform.python_version()}, {os.cpu_count()} cores, commit {commit.stdout.strip()}")
    postgres = PostgresServer().start()
    try:
        url = postgres.create_database("airflow")
        migrate(url)
        fill(url, args.rows)
        with moto_server() as endpoint:
            s3_client(endpoint).create_bucket(Bucket="bench")
            store = ObjectStore("s3://bench/state", {**S3_OPTIONS, "endpoint_url": endpoint})
            db = AirflowStateDB(url)
            counts(endpoint)
            print("| run | rows | imported | unchanged | seconds | rows/s | requests |")
            print("|---|---:|---:|---:|---:|---:|---|")
            for label in ("first", "repeat"):
                report = run_import(store, db, ImportOptions(concurrency=args.concurrency))
                requests = ", ".join(f"{kind} {n:,}" for kind, n in sorted(counts(endpoint).items()))
                print(
                    f"| {label} | {report.rows:,} | {report.imported:,} | {report.unchanged:,} | "
                    f"{report.seconds:.1f} | {report.rows / report.seconds:,.0f} | {requests} |"
                )
            db.close()
    finally:
        postgres.stop()


if __name__ == "__main__":
    main()
