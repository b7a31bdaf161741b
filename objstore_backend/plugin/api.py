"""Airflow's public state-store API over the bucket: the same paths, under ``/objstore-backend``.

Every route declares Airflow's own access dependency with the method of its action
(``requires_access_dag(..., TASK_INSTANCE)``, ``requires_access_asset``): no token 401, a token
without the permission 403. Writes authenticated by the UI's session cookie also need the
:data:`CSRF_HEADER` header, which a cross-site form cannot send and a cross-site script cannot
send without a CORS preflight Airflow does not grant; Bearer-token clients are not exposed to
cross-site forgery and need nothing more. Bodies must be ``application/json`` and are parsed
after the access checks, so an anonymous caller learns nothing from a validation error.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal, TypeVar

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.common.parameters import QueryLimit, QueryOffset
from airflow.api_fastapi.core_api.datamodels.asset_state_store import AssetStateStoreBody
from airflow.api_fastapi.core_api.datamodels.task_state_store import TaskStateStoreBody, TaskStateStorePatchBody
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_asset, requires_access_dag
from airflow.state import AssetScope, TaskScope
from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel, ValidationError

from objstore_backend.errors import StoreError
from objstore_backend.plugin.coordinates import (
    ZERO_REGION,
    parse_region_id,
    region_of,
    resolve_task_scope,
    task_coordinates,
)
from objstore_backend.plugin.models import AssetStateCollection, StateEntry, TaskStateCollection
from objstore_backend.plugin.state import BucketState, DatabaseState, Entry, StateSource, configured_mode

__all__ = ["CSRF_HEADER", "READ_EVERY_DAG", "SourceDep", "Sources", "router", "unforgeable_write"]

#: The header the plugin's pages send with every write (any value).
CSRF_HEADER = "X-Objstore-Backend"
TASK_PATH = "/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/state-store"
ASSET_PATH = "/assets/{asset_id}/state-store"

router = APIRouter()
_Body = TypeVar("_Body", bound=BaseModel)


class Sources:
    """This process's :class:`StateSource`, made on first use and remade if the mode changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._source: StateSource | None = None

    def get(self) -> StateSource:
        mode = configured_mode()
        if mode is None:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                "objstore-backend is installed but not configured: set [state_store] backend (primary mode) or "
                "[workers] state_store_backend (offload mode) to objstore_backend.ObjectStoreBackend",
            )
        with self._lock:
            if self._source is None or self._source.mode != mode:
                self._source = self._make(mode)
            return self._source

    @staticmethod
    def _make(mode: str) -> StateSource:
        from objstore_backend.backend import ObjectStoreBackend

        if mode == "primary":
            from airflow.state import get_state_backend

            backend = get_state_backend()  # the very instance the Execution API writes through
            assert isinstance(backend, ObjectStoreBackend)
            return BucketState(backend)
        return DatabaseState(ObjectStoreBackend())


def _source(request: Request) -> StateSource:
    sources: Sources = request.app.state.sources  # the plugin's own app: mounted apps keep their state
    return sources.get()


SourceDep = Annotated[StateSource, Depends(_source)]


def unforgeable_write(request: Request) -> None:
    """Refuse a cookie-authenticated write that lacks the header only same-origin scripts can add."""
    if request.headers.get("authorization", "").lower().startswith("bearer "):
        return
    if not request.headers.get(CSRF_HEADER):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"write refused: a request authenticated by the session cookie must send the {CSRF_HEADER} header "
            "(the plugin's pages do; API clients send a Bearer token instead). This blocks cross-site forgery.",
        )


async def _body(request: Request, model: type[_Body]) -> _Body:
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"send the body as application/json, not {content_type or 'nothing'}",
        )
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, errors) from None


@asynccontextmanager
async def _store_errors() -> AsyncIterator[None]:
    """The bucket failing is a bad gateway, named; a value the store refuses is a bad request."""
    try:
        yield
    except StoreError as exc:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, f"the state store failed: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc


def _resolve_expires_at(expires_at: datetime | None | Literal["default"]) -> datetime | None:
    """Airflow's rule: ``"default"`` is ``[state_store] default_retention_days`` from now, 0 = never."""
    if expires_at != "default":
        return expires_at
    from airflow.configuration import conf

    days = conf.getint("state_store", "default_retention_days")
    if days < 0:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"[state_store] default_retention_days must be >= 0, got {days}. Set to 0 to disable expiry.",
        )
    return None if days == 0 else datetime.now(timezone.utc) + timedelta(days=days)


def _one(entry: Entry | None, what: str) -> StateEntry:
    if entry is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{what} not found")
    if entry.value is None and entry.problem:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, entry.problem)
    return StateEntry.of(entry)


def _read_every_dag(user: GetUserDep) -> None:
    """Airflow's check for reading every DAG's task instances, whatever the query names.

    ``requires_access_dag`` authorizes the ``dag_id`` of the query when the path has none, so on
    a route about every DAG, ``?dag_id=mine`` would pass with access to one DAG. This asks the
    auth manager what Airflow's own cross-DAG routes (``/dags/~/...``) ask: no DAG named.
    """
    allowed = get_auth_manager().is_authorized_dag(
        method="GET", access_entity=DagAccessEntity.TASK_INSTANCE, details=DagDetails(id=None), user=user
    )
    if not allowed:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden")


#: The overview's permission: every DAG's keys are counted, so reading all DAGs' task instances.
READ_EVERY_DAG = Depends(_read_every_dag)


# -- task instances ----------------------------------------------------------------------------


def _task_access(method: Literal["GET", "PUT", "DELETE"]) -> Any:
    return Depends(requires_access_dag(method=method, access_entity=DagAccessEntity.TASK_INSTANCE))


def _task_scope(
    dag_id: str,
    dag_run_id: str,
    task_id: str,
    map_index: Annotated[int, Query(ge=-1)] = -1,
    region_id: Annotated[str | None, Query()] = None,
    region_index: Annotated[int | None, Query(ge=-1)] = None,
    all_map_indices: Annotated[bool, Query()] = False,
) -> TaskScope:
    """The addressed task instance's scope: Airflow 3.4's ``region_id`` / ``region_index``, or its
    region found from the ``task_instance`` rows when only ``map_index`` is given."""
    return resolve_task_scope(
        dag_id, dag_run_id, task_id, map_index, parse_region_id(region_id), region_index, any_index=all_map_indices
    )


TaskScopeDep = Annotated[TaskScope, Depends(_task_scope)]


def _require_task_instance(scope: TaskScope, any_map_index: bool = False) -> None:
    found = task_coordinates(scope.dag_id, scope.run_id, scope.task_id, region_of(scope))
    if not any(any_map_index or c.region_index == scope.map_index for c in found):
        addressed = "all_map_indices=True" if any_map_index else f"map_index={scope.map_index}"
        region = region_of(scope)
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"Task instance not found for dag_id={scope.dag_id!r}, run_id={scope.run_id!r}, "
            f"task_id={scope.task_id!r}, {addressed}" + (f", region_id={region}" if region != ZERO_REGION else ""),
        )


def _existing_task(scope: TaskScopeDep) -> TaskScope:
    _require_task_instance(scope)
    return scope


ExistingTaskDep = Annotated[TaskScope, Depends(_existing_task)]
_WRITE = Depends(unforgeable_write)


@router.get(TASK_PATH, dependencies=[_task_access("GET")])
async def list_task_state(
    scope: TaskScopeDep, limit: QueryLimit, offset: QueryOffset, source: SourceDep
) -> TaskStateCollection:
    """The task instance's keys with their values, ordered by key."""
    async with _store_errors():
        entries, total = await source.page(scope, limit.value or 0, offset.value or 0)
    return TaskStateCollection(task_state_store=[StateEntry.of(e) for e in entries], total_entries=total)


@router.get(TASK_PATH + "/{key:path}", dependencies=[_task_access("GET")])
async def get_task_state(scope: TaskScopeDep, key: str, source: SourceDep) -> StateEntry:
    """One key with its whole value, however large."""
    async with _store_errors():
        return _one(await source.get(scope, key), f"Task state store key {key!r}")


@router.put(TASK_PATH + "/{key:path}", status_code=204, dependencies=[_task_access("PUT"), _WRITE])
async def set_task_state(scope: ExistingTaskDep, key: str, request: Request, source: SourceDep) -> None:
    """Create or overwrite a key; ``expires_at``: ``"default"`` (the default), null (never), or a time."""
    body = await _body(request, TaskStateStoreBody)
    async with _store_errors():
        await source.set(scope, key, body.value, _resolve_expires_at(body.expires_at))


@router.patch(TASK_PATH + "/{key:path}", status_code=200, dependencies=[_task_access("PUT"), _WRITE])
async def patch_task_state(scope: ExistingTaskDep, key: str, request: Request, source: SourceDep) -> None:
    """Replace the value of an existing key, keeping its expiry."""
    body = await _body(request, TaskStateStorePatchBody)
    async with _store_errors():
        if not await source.patch(scope, key, body.value):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"Task state store key {key!r} not found")


@router.delete(TASK_PATH + "/{key:path}", status_code=204, dependencies=[_task_access("DELETE"), _WRITE])
async def delete_task_state(scope: ExistingTaskDep, key: str, source: SourceDep) -> None:
    """Delete one key; no-op if it does not exist."""
    async with _store_errors():
        await source.delete(scope, key)


@router.delete(TASK_PATH, status_code=204, dependencies=[_task_access("DELETE"), _WRITE])
async def clear_task_state(
    scope: TaskScopeDep, source: SourceDep, all_map_indices: Annotated[bool, Query()] = False
) -> None:
    """Delete every key of the task instance, or of every map index of the task (3.4: in its region)."""
    await asyncio.to_thread(_require_task_instance, scope, all_map_indices)
    async with _store_errors():
        await source.clear(scope, all_map_indices)


# -- assets ----------------------------------------------------------------------------------


def _asset_access(method: Literal["GET", "PUT", "DELETE"]) -> Any:
    return Depends(requires_access_asset(method=method))


def _existing_asset(asset_id: int) -> AssetScope:
    from airflow.models.asset import AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        if session.scalar(select(AssetModel.id).where(AssetModel.id == asset_id)) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"Asset with id {asset_id!r} not found")
    return AssetScope(asset_id=asset_id)


AssetDep = Annotated[AssetScope, Depends(_existing_asset)]


@router.get(ASSET_PATH, dependencies=[_asset_access("GET")])
async def list_asset_state(
    scope: AssetDep, limit: QueryLimit, offset: QueryOffset, source: SourceDep
) -> AssetStateCollection:
    """The asset's keys with their values, ordered by key."""
    async with _store_errors():
        entries, total = await source.page(scope, limit.value or 0, offset.value or 0)
    return AssetStateCollection(asset_state_store=[StateEntry.of(e) for e in entries], total_entries=total)


@router.get(ASSET_PATH + "/{key:path}", dependencies=[_asset_access("GET")])
async def get_asset_state(scope: AssetDep, key: str, source: SourceDep) -> StateEntry:
    """One key with its whole value."""
    async with _store_errors():
        return _one(await source.get(scope, key), f"Asset state store key {key!r}")


@router.put(ASSET_PATH + "/{key:path}", status_code=204, dependencies=[_asset_access("PUT"), _WRITE])
async def set_asset_state(scope: AssetDep, key: str, request: Request, source: SourceDep) -> None:
    """Create or overwrite a key (asset keys never expire, as in Airflow)."""
    body = await _body(request, AssetStateStoreBody)
    async with _store_errors():
        await source.set(scope, key, body.value, None)


@router.patch(ASSET_PATH + "/{key:path}", status_code=200, dependencies=[_asset_access("PUT"), _WRITE])
async def patch_asset_state(scope: AssetDep, key: str, request: Request, source: SourceDep) -> None:
    """Replace the value of an existing key."""
    body = await _body(request, AssetStateStoreBody)
    async with _store_errors():
        if not await source.patch(scope, key, body.value):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"Asset state store key {key!r} not found")


@router.delete(ASSET_PATH + "/{key:path}", status_code=204, dependencies=[_asset_access("DELETE"), _WRITE])
async def delete_asset_state(scope: AssetDep, key: str, source: SourceDep) -> None:
    """Delete one key; no-op if it does not exist."""
    async with _store_errors():
        await source.delete(scope, key)


@router.delete(ASSET_PATH, status_code=204, dependencies=[_asset_access("DELETE"), _WRITE])
async def clear_asset_state(scope: AssetDep, source: SourceDep) -> None:
    """Delete every key of the asset."""
    async with _store_errors():
        await source.clear(scope, False)
