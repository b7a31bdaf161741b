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

import re
from typing import Any
from urllib.parse import unquote

from fastapi import HTTPException, status
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from objstore_backend.plugin.state import configured_mode

__all__ = ["AirflowStateRoutesRefusal"]

PLUGIN_PREFIX = "/objstore-backend"
_TASK_ROUTE = re.compile(
    rb"/api/v2(?P<rest>/dags/(?P<dag_id>[^/]+)/dagRuns/[^/]+/taskInstances/[^/]+/state-store(?:/.*)?)$"
)
_ASSET_ROUTE = re.compile(rb"/api/v2(?P<rest>/assets/(?P<asset_id>[^/]+)/state-store(?:/.*)?)$")
# The permission Airflow's routes ask for each method (PATCH edits: PUT).
_RESOURCE_METHOD = {"GET": "GET", "HEAD": "GET", "PUT": "PUT", "PATCH": "PUT", "POST": "POST", "DELETE": "DELETE"}


class AirflowStateRoutesRefusal:
    """Pure ASGI middleware (bodies and streaming pass through untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = _match(scope) if scope["type"] == "http" else None
        if route is None or configured_mode() != "primary":
            await self.app(scope, receive, send)
            return
        rest, path_params = route
        request = Request({**scope, "path_params": path_params})
        try:
            await _admit(request)
        except HTTPException as exc:
            response = JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
        else:
            response = JSONResponse({"detail": _message(scope, rest)}, status.HTTP_409_CONFLICT)
        await response(scope, receive, send)


def _match(scope: Scope) -> tuple[str, dict[str, str]] | None:
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    for pattern in (_TASK_ROUTE, _ASSET_ROUTE):
        found = pattern.search(raw)
        if found is not None:
            ids = {
                name: unquote(value.decode("latin-1")) for name, value in found.groupdict().items() if name != "rest"
            }
            return found["rest"].decode("latin-1"), ids
    return None


async def _admit(request: Request) -> None:
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
    if "asset_id" in request.path_params:
        check = requires_access_asset(method=method)
    else:
        check = requires_access_dag(method=method, access_entity=DagAccessEntity.TASK_INSTANCE)
    await run_in_threadpool(check, request, user)  # may read the DAG's team from the DB


def _message(scope: Scope, rest: str) -> str:
    root = scope.get("root_path", "")
    query = scope.get("query_string", b"").decode("latin-1")
    plugin_url = f"{root}{PLUGIN_PREFIX}{rest}" + (f"?{query}" if query else "")
    return (
        "State is stored in object storage ([state_store] backend = objstore_backend.ObjectStoreBackend), not in "
        "Airflow's database, so this route would show or change database rows that no task reads. Use the task "
        "instance's 'State store (object storage)' tab, or the same API over the bucket: "
        f"{scope.get('method', 'GET')} {plugin_url}"
    )
