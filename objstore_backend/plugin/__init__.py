"""The Airflow plugin: the bucket's state in Airflow's UI and REST API, under Airflow's auth.

Installed with the package through the ``airflow.plugins`` entry point (nothing to copy into
the plugins folder) and loaded by the API server:

* ``/objstore-backend/...``: Airflow's public state-store API over the bucket
  (:mod:`objstore_backend.plugin.api`), and an on-demand store overview;
* a "State store (object storage)" tab on every task instance, an assets page and an overview
  page in the navigation (:mod:`objstore_backend.plugin.pages`);
* in primary mode, Airflow's own state-store routes refuse with a pointer to the above
  instead of showing or editing DB rows no task reads (:mod:`objstore_backend.plugin.refusal`);
* in primary mode, Airflow's clears of task state reach the bucket: a clear of task instances
  (:mod:`objstore_backend.plugin.clears`) and a mark success with ``clear_on_success``
  (:mod:`objstore_backend.plugin.listener`).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from objstore_backend.plugin import listener
from objstore_backend.plugin.app import URL_PREFIX, create_app
from objstore_backend.plugin.clears import AirflowClearsReachTheBucket
from objstore_backend.plugin.refusal import AirflowStateRoutesRefusal

__all__ = ["ObjectStorePlugin"]

_CATEGORY = "Browse"


class ObjectStorePlugin(AirflowPlugin):
    """Wiring only: the app, the middlewares, the listener and the views that frame the pages.

    The lists take their types from ``AirflowPlugin`` (3.4 declares TypedDicts for them)."""

    name = "objstore_backend"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "objstore-backend"}]
    fastapi_root_middlewares = [
        {"middleware": AirflowStateRoutesRefusal, "args": [], "kwargs": {}, "name": "objstore-backend refusal"},
        {"middleware": AirflowClearsReachTheBucket, "args": [], "kwargs": {}, "name": "objstore-backend clears"},
    ]
    listeners = [listener]
    # Relative hrefs resolve against Airflow's <base href>; the UI URL-encodes {DAG_ID} etc.
    external_views = [
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
