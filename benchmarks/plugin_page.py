"""The plugin's task-instance tab: response time and requests per page view, on one moto S3 server.

Starts moto's S3 server (counting requests) in its own process, writes ``--keys`` keys (small
JSON values with an expiry, as a task's) into one task instance's scope in primary mode, then a
real ``airflow api-server`` (SimpleAuthManager, the plugin loaded from the package's entry
point) on an SQLite DB, and measures ``--views`` views of the tab. A view is what the browser
fetches: the page (``/objstore-backend/ui/task-instance``) and the key list it calls
(``.../state-store?limit=N``), authenticated like the UI (the session cookie). Reported: the
median and 90th percentile of each, the API requests per view, and the S3 requests per view as
moto counted them. Prints a markdown table. Run from the repository root (about a minute):

    python benchmarks/plugin_page.py
    python benchmarks/plugin_page.py --keys 100 --views 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from _servers import REPO, S3_OPTIONS, counts, moto_server, s3_client

from objstore_backend.layout import scope_prefix
from objstore_backend.store import ObjectMetadata, ObjectStore
from tests.airflow_api import AIRFLOW, ApiServer, auth_settings
from tests.airflow_home import airflow_env

DAG_ID, RUN_ID, TASK_ID = "bench_dag", "manual__bench", "bench_task"


class _Scope:
    dag_id, run_id, task_id, map_index = DAG_ID, RUN_ID, TASK_ID, -1


def fill(store: ObjectStore, keys: int) -> None:
    """``keys`` primary objects in the task instance's scope, written 32 at a time."""
    prefix = scope_prefix(_Scope())
    metadata = ObjectMetadata("primary", datetime.now(timezone.utc) + timedelta(days=3))

    async def write_all() -> None:
        semaphore = asyncio.Semaphore(32)

        async def one(i: int) -> None:
            async with semaphore:
                body = json.dumps({"cursor": i, "stage": "processing", "items": list(range(10))}).encode()
                await store.awrite(f"{prefix}key-{i:04d}", body, metadata)

        await asyncio.gather(*(one(i) for i in range(keys)))

    asyncio.run(write_all())


def timed_get(server: ApiServer, path: str, cookie: str) -> float:
    started = time.perf_counter()
    answer = server.client.get(path, headers={"Cookie": f"_token={cookie}"})
    elapsed = time.perf_counter() - started
    assert answer.status_code == 200, answer.text[:500]
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--views", type=int, default=20)
    parser.add_argument("--page-size", type=int, default=100, help="keys per list call (the tab asks for 50)")
    args = parser.parse_args()

    with moto_server() as endpoint, tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        s3_client(endpoint).create_bucket(Bucket="bench-plugin")
        options = {**S3_OPTIONS, "endpoint_url": endpoint}
        fill(ObjectStore("s3://bench-plugin/state", options), args.keys)
        config = {
            "AIRFLOW__STATE_STORE__BACKEND": "objstore_backend.ObjectStoreBackend",
            "AIRFLOW__OBJSTORE_BACKEND__PATH": "s3://bench-plugin/state/",
            "AIRFLOW__OBJSTORE_BACKEND__STORAGE_OPTIONS": json.dumps(options),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            **auth_settings(home),
        }
        env = airflow_env(home, **config)
        subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True)
        server = ApiServer(home, env).wait_ready()
        try:
            cookie = server.token("admin")
            page = f"/objstore-backend/ui/task-instance?dag_id={DAG_ID}&run_id={RUN_ID}&task_id={TASK_ID}"
            listing = (
                f"/objstore-backend/dags/{DAG_ID}/dagRuns/{RUN_ID}/taskInstances/{TASK_ID}/state-store"
                f"?map_index=-1&limit={args.page_size}"
            )
            shown = server.client.get(listing, headers={"Cookie": f"_token={cookie}"}).json()
            assert shown["total_entries"] == args.keys
            assert len(shown["task_state_store"]) == min(args.keys, args.page_size)
            timed_get(server, page, cookie)  # warm: first request builds the backend
            counts(endpoint)
            page_times, list_times = [], []
            for _ in range(args.views):
                page_times.append(timed_get(server, page, cookie))
                list_times.append(timed_get(server, listing, cookie))
            s3_per_view = {kind: n / args.views for kind, n in counts(endpoint).items()}
        finally:
            server.stop()

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    print(
        f"\nTask instance tab, {args.keys} keys, {args.views} views, one moto S3 server and one api-server worker "
        f"({platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"commit {commit.stdout.strip()})\n"
    )
    print("| request | median | p90 |")
    print("|---|---:|---:|")
    for name, times in (("page (HTML)", page_times), (f"key list, limit={args.page_size}", list_times)):
        p90 = statistics.quantiles(times, n=10)[-1] if len(times) > 1 else times[0]
        print(f"| {name} | {statistics.median(times) * 1000:.0f} ms | {p90 * 1000:.0f} ms |")
    s3 = ", ".join(f"{kind} {n:g}" for kind, n in sorted(s3_per_view.items()))
    print(f"\nPer page view: 2 API requests (page + list); S3 requests: {sum(s3_per_view.values()):g} ({s3})")


if __name__ == "__main__":
    sys.exit(main())
