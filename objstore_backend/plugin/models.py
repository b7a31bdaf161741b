"""Response shapes: Airflow's public state-store API, plus where each value lives.

A client of ``/api/v2/.../state-store`` reads ``/objstore-backend/.../state-store`` unchanged:
the collection keys (``task_state_store`` / ``asset_state_store``, ``total_entries``) and the
entry fields (``key``, ``value``, ``updated_at``, ``expires_at``) are Airflow's. The extra
fields say what the bucket adds: size, mode, expiry state, and why a value is left out.
Request bodies are Airflow's own models, so validation (no null, no NaN, the size limit) and
its messages are the same.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel

from objstore_backend.plugin.state import Entry

__all__ = ["AssetStateCollection", "StateEntry", "TaskStateCollection"]


class StateEntry(BaseModel):
    """One key: Airflow's ``TaskStateStoreResponse`` fields first."""

    key: str
    value: Any = None
    updated_at: datetime | None
    expires_at: datetime | None
    expired: bool
    size_bytes: int | None
    mode: str
    problem: str | None = None

    @classmethod
    def of(cls, entry: Entry) -> StateEntry:
        expired = entry.expires_at is not None and entry.expires_at <= datetime.now(timezone.utc)
        return cls(
            key=entry.key,
            value=entry.value,
            updated_at=entry.updated_at,
            expires_at=entry.expires_at,
            expired=expired,
            size_bytes=entry.size_bytes,
            mode=entry.mode,
            problem=entry.problem,
        )


class TaskStateCollection(BaseModel):
    task_state_store: list[StateEntry]
    total_entries: int


class AssetStateCollection(BaseModel):
    asset_state_store: list[StateEntry]
    total_entries: int
