"""In primary mode, Airflow's own state-store routes refuse, pointing at the plugin's.

Airflow 3.3's ``/api/v2/.../state-store`` routes (and the UI tab built on them) read and write
the metadata DB whatever backend is configured. With ``ObjectStoreBackend`` as the primary
backend no task reads that DB: a list there is empty while the bucket holds keys, and an edit
lands in a row nothing reads. This root middleware answers those routes with **409 Conflict**
and a message naming the equivalent ``/objstore-backend/...`` URL and the task instance tab,
so a person or a script is told instead of misled. Nothing reaches Airflow's handler.

The caller is first authenticated and authorized exactly as Airflow's route would (its
``get_user`` and ``requires_access_*`` dependencies): a request Airflow would refuse gets
Airflow's own 401/403, and only an admitted one learns about the bucket.
In offload mode Airflow's rows *are* what tasks read (references, resolved by the worker), so
the routes pass through untouched.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import HTTPException, status
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from objstore_backend.plugin.state import configured_mode

__all__ = ["AirflowStateRoutesRefusal", "airflow_route"]

PLUGIN_PREFIX = "/objstore-backend"
_AIRFLOW_PREFIX = "/api/v2"
# The modules of Airflow's public state-store routes (3.3 and 3.4), and the scope each serves.
_STATE_ROUTE_MODULES = {
    "airflow.api_fastapi.core_api.routes.public.task_state_store": "task",
    "airflow.api_fastapi.core_api.routes.public.asset_state_store": "asset",
}
# The permission Airflow's routes ask for each method (PATCH edits: PUT).
_RESOURCE_METHOD = {"PATCH": "PUT"}


class AirflowStateRoutesRefusal:
    """Pure ASGI middleware (bodies and streaming pass through untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = _state_route(scope) if scope["type"] == "http" else None
        if route is None or configured_mode() != "primary":
            await self.app(scope, receive, send)
            return
        matched, path_params = route
        request = Request({**scope, "path_params": path_params})
        try:
            await _admit(request, _STATE_ROUTE_MODULES[matched.endpoint.__module__])
        except HTTPException as exc:
            response = JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
        else:
            response = JSONResponse({"detail": _message(scope, matched, path_params)}, status.HTTP_409_CONFLICT)
        await response(scope, receive, send)


def airflow_route(scope: Scope) -> tuple[Route, dict[str, Any]] | None:
    """The route of Airflow's root app that handles this request, with its path parameters.

    Asks the routes themselves, in the router's order (the first full match handles a request),
    so what a middleware acts on is exactly what reaches that handler: routing works on the
    decoded path, so ``state%2Dstore`` is ``state-store`` and ``state-store%2Fk`` is key ``k``,
    and the ids are the ones Airflow's handler and access check get.
    """
    routes: list[BaseRoute] = scope["app"].router.routes  # the root app: set before its middleware runs
    for route in routes:
        match, child_scope = route.matches(scope)
        if match is Match.FULL:
            return (route, child_scope["path_params"]) if isinstance(route, Route) else None
    return None


def _state_route(scope: Scope) -> tuple[Route, dict[str, Any]] | None:
    """Airflow's state-store route this request reaches, with its path parameters; else None."""
    if "/state-store" not in scope["path"]:  # decoded; every state-store route has it literally
        return None
    found = airflow_route(scope)
    if found is None or getattr(found[0].endpoint, "__module__", None) not in _STATE_ROUTE_MODULES:
        return None
    return found


async def _admit(request: Request, kind: str) -> None:
    """Airflow's own authentication, then its authorization for this route and method."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import (
        bearer_scheme,
        get_user,
        requires_access_asset,
        requires_access_dag,
    )

    user = await get_user(request, None, await bearer_scheme(request))
    method: Any = _RESOURCE_METHOD.get(request.method, request.method)
    if kind == "asset":
        check = requires_access_asset(method=method)
    else:
        check = requires_access_dag(method=method, access_entity=DagAccessEntity.TASK_INSTANCE)
    await run_in_threadpool(check, request, user)  # may read the DAG's team from the DB


def _message(scope: Scope, route: Route, path_params: dict[str, Any]) -> str:
    airflow_path = route.path_format
    for name, value in path_params.items():
        airflow_path = airflow_path.replace("{" + name + "}", quote(str(value), safe=""))
    query = scope.get("query_string", b"").decode("latin-1")
    plugin_url = (
        scope.get("root_path", "")
        + PLUGIN_PREFIX
        + airflow_path.removeprefix(_AIRFLOW_PREFIX)
        + (f"?{query}" if query else "")
    )
    return (
        "State is stored in object storage ([state_store] backend = objstore_backend.ObjectStoreBackend), not in "
        "Airflow's database, so this route would show or change database rows that no task reads. Use the task "
        "instance's 'State store (object storage)' tab, or the same API over the bucket: "
        f"{scope.get('method', 'GET')} {plugin_url}"
    )
