"""Offload-mode reconciliation: does Airflow's metadata DB still reference an object?

Offload objects carry no expiry; Airflow's DB holds the reference and its expiry. When Airflow
drops the row (``airflow state-store clean``, ``airflow db clean``, a cleared task instance),
the object is orphaned. The GC asks this reconciler, over a **read-only** connection to the
metadata DB (any SQLAlchemy URL; give it a role that can only ``SELECT`` from
``task_state_store`` and ``asset_state_store``), whether the reference still exists.

The DB is read one DAG run at a time, as the sorted listing reaches it, with a small cache,
so memory does not grow with the number of runs. Needs ``sqlalchemy`` and the DB's driver.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from objstore_backend.errors import MetadataDBError
from objstore_backend.layout import Location, ScopeKind, is_hashed

__all__ = ["AirflowDBReconciler", "create_db_engine"]

_REF_KEY = "__airflow_state_ref__"
_REF_PREFIX = "objstore:"


def create_db_engine(url: str) -> Any:
    """A SQLAlchemy engine for ``url``, its dialect and driver loaded; no connection yet.

    Errors never repeat the URL: it may hold a password.
    """
    try:
        import sqlalchemy
    except ImportError as exc:
        raise ValueError("reading Airflow's metadata DB needs sqlalchemy: install objstore-backend[reconcile]") from exc
    try:
        return sqlalchemy.create_engine(url)
    except sqlalchemy.exc.NoSuchModuleError:
        raise ValueError("the URL names a database SQLAlchemy does not know") from None
    except sqlalchemy.exc.ArgumentError:
        raise ValueError("not a SQLAlchemy URL (dialect+driver://user:password@host:port/database)") from None
    except ImportError as exc:
        raise ValueError(f"the database driver is not installed (no module {exc.name!r})") from None


def _refs(values: list[str]) -> set[str]:
    """The object paths referenced by stored values (wrapped ``objstore:`` refs)."""
    paths = set()
    for value in values:
        if _REF_KEY not in value:  # cheap filter: plain values are no references
            continue
        try:
            ref = json.loads(value).get(_REF_KEY)
        except (ValueError, AttributeError):
            continue
        if isinstance(ref, str) and ref.startswith(_REF_PREFIX):
            paths.add(ref[len(_REF_PREFIX) :])
    return paths


class AirflowDBReconciler:
    """References read from Airflow's metadata DB, per DAG run, cached."""

    def __init__(self, url: str, *, cached_runs: int = 256) -> None:
        """Check ``url`` and load its driver (no connection yet). Errors never repeat the URL:
        it may hold a password."""
        self._engine = create_db_engine(url)
        import sqlalchemy

        self._sql = sqlalchemy
        self._runs: OrderedDict[tuple[str, str], set[str]] = OrderedDict()
        self._cached_runs = cached_runs
        self._assets: set[str] | None = None

    def _select(self, query: str, **params: Any) -> list[str]:
        try:
            with self._engine.connect() as connection:
                return [row[0] for row in connection.execute(self._sql.text(query), params)]
        except self._sql.exc.SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc  # the driver's error: no SQL, no URL
            first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
            raise MetadataDBError(
                f"reading Airflow's metadata DB failed: {type(cause).__name__}: {first_line}"
            ) from exc

    def _run_refs(self, dag_id: str, run_id: str) -> set[str]:
        key = (dag_id, run_id)
        if key in self._runs:
            self._runs.move_to_end(key)
            return self._runs[key]
        refs = _refs(
            self._select(
                "SELECT value FROM task_state_store WHERE dag_id = :dag_id AND run_id = :run_id",
                dag_id=dag_id,
                run_id=run_id,
            )
        )
        self._runs[key] = refs
        if len(self._runs) > self._cached_runs:
            self._runs.popitem(last=False)
        return refs

    def is_referenced(self, location: Location, path: str) -> bool:
        if location.kind is ScopeKind.TASK:
            dag_id, run_id = location.ids[:2]
            if is_hashed(dag_id) or is_hashed(run_id):  # an id too long to keep whole: keep the object
                return True
            return path in self._run_refs(dag_id, run_id)
        if self._assets is None:  # assets are few: read their references once
            self._assets = _refs(self._select("SELECT value FROM asset_state_store"))
        return path in self._assets
