"""Task state rows in each scope the running Airflow has, for reading Airflow's DB back.

A plain task, a task mapped over two items and, on Airflow 3.4, a task group run as a loop of
two iterations: a region of its own, the iterations told apart by their index. Each iteration
reads its key before writing it and returns what it read: an earlier iteration's value there
would be state shared across iterations.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, get_current_context, task, task_group


@task
def remember(item: str) -> None:
    get_current_context()["task_state_store"].set("item", item)


@task_group
def iterate() -> None:
    @task
    def count() -> str:
        context = get_current_context()
        loop, state = context["loop"], context["task_state_store"]  # type: ignore[typeddict-item]
        seen = state.get("iteration")
        state.set("iteration", loop.index)
        return f"iteration {loop.index} read {seen!r} before writing"

    count()


@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False)
def objstore_state_rows() -> None:
    remember.override(task_id="plain")("alone")
    remember.override(task_id="mapped").expand(item=["first", "second"])
    if hasattr(iterate, "loop"):  # Airflow 3.4's task loops
        iterate.loop(max_iterations=2)


objstore_state_rows()
