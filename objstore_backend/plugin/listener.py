"""In primary mode, a task instance marked success clears its state from the bucket, as one that
succeeds by itself does, when ``[state_store] clear_on_success`` is on.

A task that succeeds by itself is cleared by the Execution API through the configured backend.
One marked success from the UI or REST API (Airflow 3.3 and 3.4) is cleared by
``_clear_task_state_store_on_success`` through ``_get_db_backend()`` only: the metadata DB, not
the bucket. Right after that, Airflow calls the ``on_task_instance_success`` listener hook for
exactly those task instances (``previous_state`` None, Airflow's own ``TaskInstance``); this
listener clears their scopes through the backend the Execution API uses. A failure is logged as
a warning and the state stays, as Airflow does for its rows (its listener calls cannot fail the
request); clearing from the tab or with the plugin's DELETE removes it.

The worker's own success hook (``previous_state`` RUNNING, the SDK's task instance) is left
alone: the Execution API clears that one already.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.listeners import hookimpl

from objstore_backend.plugin.coordinates import HAS_REGIONS, ZERO_REGION, Coordinates, scope_of
from objstore_backend.plugin.state import configured_mode

__all__ = ["on_task_instance_success"]

log = logging.getLogger(__name__)
_AIRFLOW_TASK_INSTANCE = "airflow.models.taskinstance"


@hookimpl
def on_task_instance_success(previous_state: Any, task_instance: Any) -> None:
    """Clear a task instance marked success, when Airflow's ``clear_on_success`` says so."""
    if previous_state is not None or type(task_instance).__module__ != _AIRFLOW_TASK_INSTANCE:
        return
    from airflow.configuration import conf

    if not conf.getboolean("state_store", "clear_on_success", fallback=False) or configured_mode() != "primary":
        return
    from airflow.state import get_state_backend

    ti = task_instance
    where = Coordinates(ti.region_id, ti.region_index) if HAS_REGIONS else Coordinates(ZERO_REGION, ti.map_index)
    scope = scope_of(ti.dag_id, ti.run_id, ti.task_id, where)
    try:
        get_state_backend().clear(scope)
    except Exception:  # Airflow ignores a listener's error; the warning says the state stays
        log.warning("clear_on_success: the task state of %s stays in object storage", scope, exc_info=True)
        return
    log.info("clear_on_success: cleared the task state of %s from object storage", scope)
