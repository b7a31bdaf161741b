"""The store overview: what ``objstore-backend audit`` computes, taken on demand, read by pages.

Taking an inventory lists (and on S3 HEADs) every object under the base path, so a page view
never does it: ``POST /overview/inventory`` takes one (one at a time per process) and keeps
it; ``GET /overview`` answers from the last one, its per-DAG table a page at a time. A request
within :data:`REUSE_SECONDS` of the last scan's end (a second click, a second tab, one queued
behind a running scan) gets that inventory instead of a rescan; ``taken_at`` says when it was taken.
Both routes need access to every DAG, whatever the query says: the figures cover them all.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from airflow.api_fastapi.common.parameters import QueryLimit, QueryOffset
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from objstore_backend.audit import AuditReport, run_audit
from objstore_backend.plugin.api import READ_EVERY_DAG, SourceDep, unforgeable_write
from objstore_backend.store import ObjectStore

__all__ = ["REUSE_SECONDS", "Inventories", "router"]

#: How long after a scan ends a new inventory request gets that scan's result instead of a rescan.
REUSE_SECONDS = 30.0

router = APIRouter()


@dataclass(frozen=True)
class _Taken:
    report: AuditReport
    store: str
    taken_at: datetime
    seconds: float
    finished: float  # time.monotonic() at the scan's end


class Inventories:
    """The last inventory this process took; one scan at a time, a fresh one reused."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self.last: _Taken | None = None

    async def take(self, store: ObjectStore) -> _Taken:
        """Scan ``store``, unless a scan of it ended less than :data:`REUSE_SECONDS` ago."""
        async with self._lock:  # a request queued behind a running scan finds its result here
            last = self.last
            if last is not None and last.store == store.url and time.monotonic() - last.finished < REUSE_SECONDS:
                return last
            started = time.monotonic()
            report = await asyncio.to_thread(run_audit, store, top_dags=None)
            finished = time.monotonic()
            self.last = _Taken(report, store.url, datetime.now(timezone.utc), round(finished - started, 3), finished)
            return self.last


class DagRow(BaseModel):
    dag_id: str
    keys: int
    bytes: int


class Overview(BaseModel):
    store: str | None = None
    taken_at: datetime | None = None
    seconds: float | None = None
    inventory: dict[str, Any] | None = None
    findings: list[dict[str, str]] = []
    dags: list[DagRow] = []
    total_dags: int = 0


def _overview(taken: _Taken | None, limit: int, offset: int) -> Overview:
    if taken is None:
        return Overview()
    inventory = asdict(taken.report.inventory)
    dags = inventory.pop("top_dags")
    return Overview(
        store=taken.store,
        taken_at=taken.taken_at,
        seconds=taken.seconds,
        inventory=inventory,
        findings=[asdict(f) for f in taken.report.findings],
        dags=[DagRow(**row) for row in dags[offset : offset + limit]],
        total_dags=len(dags),
    )


def _inventories(request: Request) -> Inventories:
    inventories: Inventories = request.app.state.inventories
    return inventories


@router.get("/overview", dependencies=[READ_EVERY_DAG])
async def overview(request: Request, limit: QueryLimit, offset: QueryOffset) -> Overview:
    """The last inventory taken (empty fields if none yet); DAGs by bytes, a page at a time."""
    return _overview(_inventories(request).last, limit.value or 0, offset.value or 0)


@router.post("/overview/inventory", dependencies=[READ_EVERY_DAG, Depends(unforgeable_write)])
async def take_inventory(request: Request, source: SourceDep, limit: QueryLimit) -> Overview:
    """Scan the store now (every object under the base path) and keep the result."""
    taken = await _inventories(request).take(source.store)
    return _overview(taken, limit.value or 0, 0)
