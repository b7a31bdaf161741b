"""In primary mode, Airflow 3.4's clear of task instances takes their state out of the bucket too.

``POST /api/v2/dags/{dag_id}/clearTaskInstances`` (the UI's Clear calls it) discards the cleared
task instances' task state unless the body says ``"keep_task_state": true``, but only from the
metadata DB (``_discard_task_state_store`` uses ``_get_db_backend()``): with
``ObjectStoreBackend`` as ``[state_store] backend`` the bucket kept the state and the next
attempt resumed from it, though the clear said it was gone.

This root middleware completes the clear: when Airflow answers 200 to a request that was no dry
run and did not keep the state, it clears the scope of every task instance the answer lists
(exactly the ones Airflow discarded: ``region_id`` / ``region_index`` included) through the
backend the Execution API uses. The body is read with Airflow's own ``ClearTaskInstancesBody``,
so defaults (``dry_run`` true) and coercions are Airflow's. If the bucket fails, the answer is
**502** naming each task instance whose state is left and the plugin's DELETE that clears it:
never a success while state survives. Airflow 3.3's clear keeps task state (its body has no
``keep_task_state``); so does this middleware there. In offload mode Airflow's discard drops the
rows and the GC's reconciliation (``objstore-backend gc --airflow-db``) reclaims the objects.

Why a middleware: it sees the public, versioned REST contract (the request body and the answer
listing the cleared task instances), where patching Airflow's private ``_discard_task_state_store``
would break silently on a rename, and 3.4's listener hooks have no "cleared" event.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import quote
from uuid import UUID

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from objstore_backend.plugin.coordinates import ZERO_REGION, Coordinates, scope_of
from objstore_backend.plugin.refusal import PLUGIN_PREFIX, airflow_route
from objstore_backend.plugin.state import configured_mode

__all__ = ["AirflowClearsReachTheBucket", "discards_on_clear"]

log = logging.getLogger(__name__)
_CLEAR_ENDPOINT = ("airflow.api_fastapi.core_api.routes.public.task_instances", "post_clear_task_instances")


def discards_on_clear() -> bool:
    """Whether this Airflow's clear discards task state (3.4 on: the body has ``keep_task_state``)."""
    from airflow.api_fastapi.core_api.datamodels.task_instances import ClearTaskInstancesBody

    return "keep_task_state" in ClearTaskInstancesBody.model_fields


class AirflowClearsReachTheBucket:
    """Pure ASGI middleware; every other request passes through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_clear(scope) or configured_mode() != "primary" or not discards_on_clear():
            await self.app(scope, receive, send)
            return
        body = await _request_body(receive)
        if not _discards(body):
            await self.app(scope, _replay(body, receive), send)
            return
        messages: list[Message] = []

        async def keep(message: Message) -> None:
            messages.append(message)

        await self.app(scope, _replay(body, receive), keep)
        start = next((m for m in messages if m["type"] == "http.response.start"), None)
        if start is not None and start["status"] == 200:
            answer = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
            left = await _clear_bucket(json.loads(answer)["task_instances"])
            if left:
                await _bucket_failed(left, scope)(scope, receive, send)
                return
        for message in messages:
            await send(message)


def _is_clear(scope: Scope) -> bool:
    if scope["type"] != "http" or scope["method"] != "POST" or "clearTaskInstances" not in scope["path"]:
        return False
    found = airflow_route(scope)
    endpoint = getattr(found[0], "endpoint", None) if found is not None else None
    return (getattr(endpoint, "__module__", None), getattr(endpoint, "__name__", None)) == _CLEAR_ENDPOINT


async def _request_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The request body once more for Airflow, then the client's own messages (a disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


def _discards(body: bytes) -> bool:
    """Whether Airflow discards task state for this body: no dry run, state not kept.

    Read with Airflow's own model; a body it refuses gets its 422 and changes nothing."""
    from airflow.api_fastapi.core_api.datamodels.task_instances import ClearTaskInstancesBody
    from pydantic import ValidationError

    try:
        parsed = ClearTaskInstancesBody.model_validate_json(body)
    except (ValidationError, ValueError):
        return False
    return not parsed.dry_run and not getattr(parsed, "keep_task_state", True)


def _coordinates(listed: dict[str, Any]) -> Coordinates:
    """A cleared task instance's place as Airflow's answer gives it (no region: left out)."""
    if listed.get("region_id") is None:
        return Coordinates(ZERO_REGION, int(listed["map_index"]))
    return Coordinates(UUID(str(listed["region_id"])), int(listed["region_index"]))


async def _clear_bucket(cleared: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
    """Clear each listed task instance's state; those left, with why."""
    from airflow.state import get_state_backend

    backend: Any = get_state_backend()  # the very instance the Execution API writes through

    async def clear(listed: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
        scope = scope_of(listed["dag_id"], listed["dag_run_id"], listed["task_id"], _coordinates(listed))
        try:
            await backend.aclear(scope)
        except Exception as exc:  # any failure leaves state: reported, never a success
            log.warning("clearing the task state of %s failed", scope, exc_info=True)
            return listed, f"{type(exc).__name__}: {exc}"
        return None

    results = await asyncio.gather(*(clear(listed) for listed in cleared))
    return [result for result in results if result is not None]


def _bucket_failed(left: list[tuple[dict[str, Any], str]], scope: Scope) -> JSONResponse:
    root = scope.get("root_path", "")

    def retry(listed: dict[str, Any]) -> str:
        where = _coordinates(listed)
        query = f"region_id={where.region_id}&region_index={where.region_index}"
        return (
            f"DELETE {root}{PLUGIN_PREFIX}/dags/{quote(listed['dag_id'], safe='')}/dagRuns/"
            f"{quote(listed['dag_run_id'], safe='')}/taskInstances/{quote(listed['task_id'], safe='')}"
            f"/state-store?{query}"
        )

    return JSONResponse(
        {
            "detail": (
                f"Airflow cleared the task instances, but the task state of {len(left)} of them could not be "
                "removed from object storage: their next attempt would resume from it. Clear each one's state "
                "with the request given in task_instances_left."
            ),
            "task_instances_left": [
                {
                    "dag_id": listed["dag_id"],
                    "dag_run_id": listed["dag_run_id"],
                    "task_id": listed["task_id"],
                    "map_index": listed["map_index"],
                    "error": error,
                    "clear_with": retry(listed),
                }
                for listed, error in left
            ],
        },
        502,
    )
