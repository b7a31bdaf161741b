"""The Airflow plugin: the bucket's state in Airflow's UI and REST API, under Airflow's auth.

Installed with the package through the ``airflow.plugins`` entry point (nothing to copy into
the plugins folder) and loaded by the API server:

* ``/objstore-backend/...``: Airflow's public state-store API over the bucket
  (:mod:`objstore_backend.plugin.api`), and an on-demand store overview;
* a "State store (object storage)" tab on every task instance, an assets page and an overview
  page in the navigation (:mod:`objstore_backend.plugin.pages`);
* in primary mode, Airflow's own state-store routes refuse with a pointer to the above
  instead of showing or editing DB rows no task reads (:mod:`objstore_backend.plugin.refusal`).
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from objstore_backend.plugin.app import URL_PREFIX, create_app
from objstore_backend.plugin.refusal import AirflowStateRoutesRefusal

__all__ = ["ObjectStorePlugin"]

_CATEGORY = "Browse"


class ObjectStorePlugin(AirflowPlugin):
    """Wiring only: the app, the refusal middleware and the views that frame the pages."""

    name = "objstore_backend"
    fastapi_apps: list[dict[str, Any]] = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "objstore-backend"}]
    fastapi_root_middlewares: list[dict[str, Any]] = [
        {"middleware": AirflowStateRoutesRefusal, "args": [], "kwargs": {}, "name": "objstore-backend refusal"}
    ]
    # Relative hrefs resolve against Airflow's <base href>; the UI URL-encodes {DAG_ID} etc.
    external_views: list[dict[str, Any]] = [
        {
            "name": "State store (object storage)",
            "href": URL_PREFIX.lstrip("/")
            + "/ui/task-instance?dag_id={DAG_ID}&run_id={RUN_ID}&task_id={TASK_ID}&map_index={MAP_INDEX}",
            "destination": "task_instance",
            "url_route": "objstore-state",
        },
        {
            "name": "Asset state (object storage)",
            "href": URL_PREFIX.lstrip("/") + "/ui/assets",
            "destination": "nav",
            "category": _CATEGORY,
            "url_route": "objstore-assets",
        },
        {
            "name": "State store overview",
            "href": URL_PREFIX.lstrip("/") + "/ui/overview",
            "destination": "nav",
            "category": _CATEGORY,
            "url_route": "objstore-overview",
        },
    ]
