"""``export``: leave primary mode, writing the store's live keys back into Airflow's metadata DB.

An Airflow adapter: it runs where Airflow and its DB settings are, and writes every row
through Airflow's own ``MetastoreBackend.set``, so the rows are exactly what Airflow writes
(the task row's ``dag_run_id``, the exact ``expires_at``). Only primary-mode keys (and
adopted ones) go back: offload objects are the targets of references the DB still holds.
A row already in the DB with the same value and expiry is left alone (a second run writes
nothing); one updated after the object's value was set (``updated_at``) is newer and kept;
a row as old as the object (the row it was imported from, maybe a reference) gets the value. A key
whose DAG run or asset is gone from the DB has no row to go to (foreign keys): counted as
``no_owner`` and named. A key hashed in its path goes back under the key the object records;
one that records none cannot be recovered and is an error, named. A key in an Airflow 3.4 dynamic
region (``region=<uuid>/``: a mapped task or a task loop) goes back to its region's row on 3.4, and
is an error, named, on 3.3, which has no regions. The store is only read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from airflow.models.asset import AssetModel
from airflow.models.asset_state_store import AssetStateStoreModel
from airflow.models.dagrun import DagRun
from airflow.models.task_state_store import TaskStateStoreModel
from airflow.state import AssetScope, TaskScope
from airflow.state.metastore import MetastoreBackend
from airflow.utils.session import create_session
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from objstore_backend.codec import check_json_document
from objstore_backend.errors import CorruptObjectError, StoreError
from objstore_backend.layout import Location, ScopeKind, is_hashed, original_key, parse
from objstore_backend.migrate import MoveReport
from objstore_backend.store import ListedObject, ObjectStore

__all__ = ["ExportReport", "run_export"]


@dataclass
class ExportReport(MoveReport):
    objects: int = 0
    exported: int = 0
    skipped_offload: int = 0
    no_owner: int = 0
    foreign: int = 0

    @property
    def failed(self) -> bool:
        return bool(self.errors or self.no_owner)


class _NoOwner(Exception):
    """The key's DAG run or asset is not in the DB."""


def _task_scope(location: Location, path: str) -> Any:
    """Airflow's task scope for a task key: 3.4's region-keyed scope for a ``region=`` path."""
    if any(is_hashed(segment) for segment in location.ids):
        raise ValueError(f"{path}: an id too long to keep whole in the path cannot be recovered")
    if len(location.ids) == 4:
        dag_id, run_id, task_id, map_index = location.ids
        return TaskScope(dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=int(map_index))
    dag_id, run_id, region, task_id, region_index = location.ids
    if not hasattr(TaskStateStoreModel, "region_id"):
        raise ValueError(
            f"{path}: a task in an Airflow 3.4 dynamic region (a mapped task or a task loop); this Airflow "
            "has no regions: export it with Airflow 3.4"
        )
    region_scope: Any = TaskScope  # typed as the installed release's: 3.3's takes no region
    return region_scope(
        dag_id=dag_id,
        run_id=run_id,
        task_id=task_id,
        region_id=UUID(region.removeprefix("region=")),
        region_index=int(region_index),
    )


def _scope(location: Location, path: str) -> Any:
    """The core scope Airflow's backend takes for the key at ``path``; ``ValueError`` if there is none."""
    if location.kind is ScopeKind.ASSET_ID:
        return AssetScope(asset_id=int(location.ids[0]))
    if location.kind is not ScopeKind.TASK:
        raise ValueError(
            f"{path}: keyed by asset {location.kind.value.split('/')[1]}, which the API server never writes"
        )
    return _task_scope(location, path)


class _Exporter:
    def __init__(self, store: ObjectStore, report: ExportReport, session: Any) -> None:
        self.store = store
        self.report = report
        self.session = session
        self.backend = MetastoreBackend()
        self.now = datetime.now(timezone.utc)

    def _existing_row(self, scope: Any, key: str) -> Any:
        """The DB's row for the key (value, updated_at, expires_at), checking its owner exists."""
        if hasattr(scope, "task_id"):
            run = select(DagRun.id).where(DagRun.dag_id == scope.dag_id, DagRun.run_id == scope.run_id)
            if self.session.scalar(run) is None:
                raise _NoOwner(f"the DAG run {scope.dag_id}/{scope.run_id} is not in the DB")
            model: Any = TaskStateStoreModel
            where = [model.dag_id == scope.dag_id, model.run_id == scope.run_id, model.task_id == scope.task_id]
            if hasattr(model, "region_id"):  # Airflow 3.4
                where += [model.region_id == scope.region_id, model.region_index == scope.region_index]
            else:
                where.append(model.map_index == scope.map_index)
        else:
            if self.session.scalar(select(AssetModel.id).where(AssetModel.id == scope.asset_id)) is None:
                raise _NoOwner(f"the asset id={scope.asset_id} is not in the DB")
            model = AssetStateStoreModel
            where = [model.asset_id == scope.asset_id]
        return self.session.scalar(select(model).where(*where, model.key == key))

    def one(self, listed: ListedObject, dry_run: bool) -> tuple[str, str | None]:
        path = listed.path
        location = parse(path)
        if location is None:
            return "foreign", None
        found = self.store.read(path)
        if found is None:  # deleted since listed: not a live key any more
            return "gone", None
        meta = found.metadata
        if meta.mode == "offload" and not meta.adopted:
            return "skipped_offload", None
        if meta.is_expired(self.now):
            return "skipped_expired", None
        scope = _scope(location, path)
        key = original_key(location, meta.key)
        if key is None:
            raise ValueError(
                f"{path}: the key is too long to keep whole in the path, and the object does not record it "
                "(written before keys were recorded, or too long for the store's metadata): it cannot be recovered"
            )
        check_json_document(found.body)
        value = found.body.decode("utf-8")
        row = self._existing_row(scope, key)
        expires_at = meta.expires_at if hasattr(scope, "task_id") else None
        if row is not None:
            row_expires = getattr(row, "expires_at", None)
            if row.value == value and row_expires == expires_at:
                return "unchanged", None
            # Same time: the object was imported from this very row (whose reference it resolved).
            written = meta.updated_at or listed.modified
            if written is None or row.updated_at > written:
                return "skipped_newer", f"{path}: the DB row (updated {row.updated_at.isoformat()}) is newer"
        if not dry_run:
            self.backend.set(scope, key, value, expires_at=expires_at, session=self.session)
            self.session.commit()
        self.report.bytes += len(found.body)
        return "exported", None


def run_export(
    store: ObjectStore,
    *,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
    on_problem: Callable[[str], None] = lambda note: None,
) -> ExportReport:
    """Write every live primary-mode key of ``store`` into Airflow's metadata DB (as configured)."""
    report = ExportReport(dry_run=dry_run)
    started = time.monotonic()
    with create_session() as session:
        exporter = _Exporter(store, report, session)
        for listed in store.iter_objects():
            report.objects += 1
            try:
                outcome, note = exporter.one(listed, dry_run)
            except _NoOwner as exc:
                outcome, note = "no_owner", f"{listed.path}: {exc}"
            except (StoreError, CorruptObjectError, ValueError, SQLAlchemyError) as exc:
                session.rollback()
                outcome, note = "errors", f"{listed.path}: {str(exc).splitlines()[0]}"
            if outcome != "gone":
                setattr(report, outcome, getattr(report, outcome) + 1)
            if note is not None:
                (report.kept_newer if outcome == "skipped_newer" else report.problems).append(note)
                on_problem(f"{outcome}: {note}")
            if progress is not None:
                progress(1)
    report.seconds = time.monotonic() - started
    return report
