"""The plugin's pages: the task instance tab, the assets page and the store overview.

Server-rendered shells (no build step): the HTML carries the page's ids as JSON and one
script that calls the plugin's routes with ``fetch()``, so every value shown went through the
same access checks as the API. Keys and values are inserted as text, never as HTML. Each page
requires the read permission of what it shows; Airflow frames it (same origin, its cookie).
"""

from __future__ import annotations

import html
import json
from importlib.resources import files
from typing import Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import requires_access_asset, requires_access_dag
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse

from objstore_backend.plugin.api import CSRF_HEADER, READ_EVERY_DAG
from objstore_backend.plugin.coordinates import ZERO_REGION, parse_region_id, task_coordinates

__all__ = ["router"]

router = APIRouter()
_STATIC = files("objstore_backend.plugin") / "static"
_STYLE = (_STATIC / "page.css").read_text(encoding="utf-8")
_SCRIPT = (_STATIC / "page.js").read_text(encoding="utf-8")
_READ_TASKS = Depends(requires_access_dag(method="GET", access_entity=DagAccessEntity.TASK_INSTANCE))
_READ_ASSETS = Depends(requires_access_asset(method="GET"))


def _page(request: Request, title: str, subtitle: str, config: dict[str, Any]) -> HTMLResponse:
    api = request.scope.get("root_path", "").rstrip("/")  # where this app is mounted
    config = {**config, "api": api, "airflow": api.rsplit("/", 1)[0], "csrf_header": CSRF_HEADER}
    data = json.dumps(config).replace("<", "\\u003c")  # no "</script>" can end the block early
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body><h1>{html.escape(title)}</h1><p class="sub">{html.escape(subtitle)}</p>
<div id="status" class="status" role="status"></div><main id="main"></main>
<script type="application/json" id="config">{data}</script><script>{_SCRIPT}</script></body></html>"""
    headers = {"Cache-Control": "no-store", "X-Frame-Options": "SAMEORIGIN", "X-Content-Type-Options": "nosniff"}
    return HTMLResponse(body, headers=headers)


def _map_index(raw: str) -> int:
    """Airflow 3.3 leaves ``{MAP_INDEX}`` literal on a non-mapped task instance's page: -1."""
    try:
        return max(int(raw), -1)
    except ValueError:
        return -1


def _instances(dag_id: str, run_id: str, task_id: str, index: int, region_id: str | None) -> list[dict[str, Any]]:
    """The task's instances in dynamic regions at this map index (3.4: each iteration of a loop,
    or one member of an expansion), for the page to choose from; none outside regions."""
    region = parse_region_id(region_id)
    found = [
        c
        for c in task_coordinates(dag_id, run_id, task_id, region)
        if c.region_id != ZERO_REGION and index in (-1, c.region_index)
    ]
    return [{"region_id": str(c.region_id), "region_index": c.region_index} for c in found]


@router.get("/ui/task-instance", dependencies=[_READ_TASKS], response_class=HTMLResponse)
def task_instance_page(
    request: Request,
    dag_id: str,
    run_id: str,
    task_id: str,
    map_index: str = Query("-1"),
    region_id: str | None = None,
    region_index: int | None = None,
) -> HTMLResponse:
    """The task instance tab: its keys, values, expiry, size and mode, with edit/delete/clear.

    Airflow 3.4's UI links it with ``{MAP_INDEX}`` only; a task in a loop has one instance per
    iteration, each with its own keys, so the page offers them to choose from."""
    index = _map_index(map_index)
    where = f"{dag_id} / {run_id} / {task_id}" + (f" [{index}]" if index >= 0 else "")
    config = {
        "page": "task",
        "dag_id": dag_id,
        "run_id": run_id,
        "task_id": task_id,
        "map_index": index,
        "instances": _instances(dag_id, run_id, task_id, index, region_id),
        "chosen": {"region_id": region_id, "region_index": region_index},
    }
    return _page(request, "State store (object storage)", where, config)


@router.get("/ui/assets", dependencies=[_READ_ASSETS], response_class=HTMLResponse)
def assets_page(request: Request, asset_id: int | None = None) -> HTMLResponse:
    """Every asset (from Airflow's API), and the keys of the one chosen."""
    return _page(request, "Asset state (object storage)", "", {"page": "asset", "asset_id": asset_id})


@router.get("/ui/overview", dependencies=[READ_EVERY_DAG], response_class=HTMLResponse)
def overview_page(request: Request) -> HTMLResponse:
    """Keys and bytes by DAG, the GC backlog and the bucket's findings, from the last inventory."""
    return _page(
        request, "State store overview", "What `objstore-backend audit` reports, taken on demand.", {"page": "overview"}
    )
