"""Example DAG: task and asset state through objstore-backend. Copy it to try the backend.

* ``submit_job`` stores a job id, fails on try 1 (think: the worker died), and on try 2 finds
  the job id again and reattaches instead of submitting a second job.
* It also writes keys with the default retention, one hour, and ``NEVER_EXPIRE``.
* ``process`` is mapped over three items; each map index keeps its own state.
* ``advance_watermark`` keeps an asset watermark that the next run continues from, and a
  heartbeat key that expires a second later (something for the GC to collect).

Works unchanged in both modes: the backend is chosen in airflow.cfg, not in the DAG.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, dag, get_current_context, task
from airflow.sdk.execution_time.context import NEVER_EXPIRE

ORDERS = Asset(name="orders", uri="s3://example-data/orders/")


@dag(schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["objstore-backend"])
def objstore_state_demo() -> None:
    @task(retries=1, retry_delay=timedelta(seconds=1))
    def submit_job() -> str:
        context = get_current_context()
        state = context["task_state_store"]
        job_id = state.get("job_id")
        if job_id is not None:
            return f"reattached to {job_id} on try {context['ti'].try_number}"
        job_id = f"job-{context['run_id']}"
        state.set("job_id", job_id)  # default retention ([state_store] default_retention_days)
        state.set("progress", {"stage": "submitted", "percent": 0}, retention=timedelta(hours=1))
        state.set("submitted_by", {"try": context["ti"].try_number}, retention=NEVER_EXPIRE)
        raise RuntimeError(f"simulated worker loss after submitting {job_id}: the retry reattaches")

    @task
    def process(item: int) -> int:
        state = get_current_context()["task_state_store"]
        done = state.get("done", default=[])
        state.set("done", [*done, item], retention=timedelta(hours=1))
        return item * 10

    @task(outlets=[ORDERS])
    def advance_watermark() -> int:
        context = get_current_context()
        watermark = context["asset_state_store"][ORDERS]
        last = watermark.get("watermark", default=0)
        watermark.set("watermark", last + 100)
        # a short-lived key: expired a second later, so the GC has something to collect
        context["task_state_store"].set("heartbeat", {"watermark": last + 100}, retention=timedelta(seconds=1))
        return last + 100

    submit_job() >> process.expand(item=[1, 2, 3]) >> advance_watermark()


objstore_state_demo()
