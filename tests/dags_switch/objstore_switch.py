"""The DAG the backend-switch tests run (tests/test_switch.py): one airflow dag, one task.

``step`` advances one watermark per asset named in ``$SWITCH_ASSETS`` (all three by default) and
keeps a job in task state: the first attempt of a run stores a job id and fails (a worker
lost), a later attempt finds the job id again and resumes. It prints one ``SWITCH`` line
saying which, so a test can tell a continued job from one started again.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta

from airflow.sdk import Asset, dag, get_current_context, task
from airflow.sdk.execution_time.context import NEVER_EXPIRE

ASSETS = {kind: Asset(name=f"switch_{kind}") for kind in ("metastore", "commonio", "offload")}


@dag(schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def objstore_switch() -> None:
    @task(outlets=list(ASSETS.values()))
    def step() -> None:
        context = get_current_context()
        marks = {}
        for kind in os.environ.get("SWITCH_ASSETS", ",".join(ASSETS)).split(","):
            watermark = context["asset_state_store"][ASSETS[kind]]
            marks[kind] = watermark.get("watermark", default=0) + 1
            watermark.set("watermark", marks[kind])
        state = context["task_state_store"]
        attempts = state.get("attempts", default=0) + 1
        state.set("attempts", attempts, retention=NEVER_EXPIRE)
        job_id = state.get("job_id")
        verb = "resumed"
        if job_id is None:
            verb, job_id = "started", f"job-{context['run_id']}"
            state.set("job_id", job_id)  # the default retention
            state.set("cursor", {"page": 1}, retention=timedelta(hours=1))
        print(f"SWITCH {verb} {job_id} attempts={attempts} watermarks={json.dumps(marks, sort_keys=True)}")
        if verb == "started":
            raise RuntimeError("simulated worker loss: the next attempt resumes the job")

    step()


objstore_switch()
