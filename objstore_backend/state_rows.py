"""Airflow's state rows, read-only: every row of ``task_state_store`` and ``asset_state_store``.

``import`` reads them through any SQLAlchemy URL (give it a role that can only ``SELECT``),
the way the GC's reconciler does: plain SQL, no Airflow installed. The rows stream in
pages of :data:`PAGE_ROWS`, ordered by primary key, so memory does not grow with the table.
Needs ``sqlalchemy`` and the DB's driver.

Airflow 3.3 keys a task row by ``map_index``; 3.4 renames it ``region_index`` and adds
``region_id`` (a loop iteration or dynamic region; the zero UUID is none). The columns present
say which release's schema a DB has: they are read once, on opening.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from objstore_backend.reconcile import create_db_engine

__all__ = ["AirflowStateDB", "AssetScopeId", "StateRow", "TaskScopeIds"]

PAGE_ROWS = 1000

#: The columns import needs, per table, besides a task row's scope columns (:data:`TASK_SCOPE_COLUMNS`).
_COLUMNS = {
    "task_state_store": ("id", "dag_id", "run_id", "task_id", "key", "value", "updated_at", "expires_at"),
    "asset_state_store": ("asset_id", "key", "value", "updated_at"),
}
#: Read beside each table's own columns: an asset row's asset name and uri, which the references
#: workers wrote for it name (``asset/name/<name>/<key>``), checked by ``import``.
_JOINED = {
    "task_state_store": "",
    "asset_state_store": ", (SELECT name FROM asset WHERE asset.id = asset_state_store.asset_id) AS asset_name"
    ", (SELECT uri FROM asset WHERE asset.id = asset_state_store.asset_id) AS asset_uri",
}
#: What keys a task row within its task, per Airflow release: the columns tell the schemas apart.
TASK_SCOPE_COLUMNS = {
    "3.3": ("map_index",),
    "3.4": ("region_id", "region_index"),
}
_ALL_TASK_SCOPE_COLUMNS = sorted({name for names in TASK_SCOPE_COLUMNS.values() for name in names})
#: Each table's primary key, the order rows are read in (keyset pagination).
_KEYSET = {
    "task_state_store": ("id > :id", "id", ("id",)),
    "asset_state_store": (
        "asset_id > :asset_id OR (asset_id = :asset_id AND key > :key)",
        "asset_id, key",
        ("asset_id", "key"),
    ),
}


@dataclass(frozen=True, slots=True)
class TaskScopeIds:
    """The ids of a task scope, as :mod:`objstore_backend.layout` reads them (duck-typed)."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    region_id: UUID | None = None  # Airflow 3.4's region (a mapped task's, a task loop's); None: none

    def __str__(self) -> str:
        region = "" if self.region_id is None else f"region={self.region_id}/"
        return f"task {self.dag_id}/{self.run_id}/{region}{self.task_id}/{self.map_index}"


@dataclass(frozen=True, slots=True)
class AssetScopeId:
    """An asset scope as the API server sees it: by asset id (with the name and uri workers know it by)."""

    asset_id: int
    name: str | None = None
    uri: str | None = None

    def __str__(self) -> str:
        return f"asset id={self.asset_id}"


@dataclass(frozen=True, slots=True)
class StateRow:
    """One row: its scope, key, stored value (plain JSON or a wrapped reference) and times."""

    scope: TaskScopeIds | AssetScopeId
    key: str
    value: str | None
    updated_at: datetime | None
    expires_at: datetime | None = None  # None: never expires (asset rows never do)

    def __str__(self) -> str:
        return f"{self.scope}/{self.key}"


def _region(stored: Any) -> UUID | None:
    """A stored ``region_id`` as a UUID, None for the zero UUID (no region).

    SQLite hands back Airflow's 32 hex digits, PostgreSQL a UUID, MySQL 16 bytes.
    """
    try:
        if isinstance(stored, UUID):
            region = stored
        elif isinstance(stored, bytes) and len(stored) == 16:
            region = UUID(bytes=stored)
        elif isinstance(stored, str):
            region = UUID(stored)
        else:
            raise TypeError
    except (TypeError, ValueError):
        raise ValueError(f"not a region id: {stored!r}") from None
    return None if region.int == 0 else region


def _utc(moment: Any) -> datetime | None:
    """A DB time as an aware UTC datetime: SQLite hands back naive text, PostgreSQL aware datetimes."""
    if moment is None or moment == "":
        return None
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if not isinstance(moment, datetime):
        raise ValueError(f"not a time: {moment!r}")
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


class AirflowStateDB:
    """Read access to the state tables of Airflow's metadata DB; checks the schema on opening."""

    def __init__(self, url: str) -> None:
        self._engine = create_db_engine(url)
        import sqlalchemy

        self._sql = sqlalchemy
        self.display_url = self._engine.url.render_as_string(hide_password=True)
        self.release = self._check_schema()
        self._columns = {
            "task_state_store": _COLUMNS["task_state_store"] + TASK_SCOPE_COLUMNS[self.release],
            "asset_state_store": _COLUMNS["asset_state_store"],
        }

    def _not_airflows(self, problem: str) -> ValueError:
        return ValueError(f"{self.display_url} is not an Airflow 3.3 metadata DB (nor 3.4): {problem}")

    def _check_schema(self) -> str:
        """The Airflow release whose schema the DB has; a clear error for a DB that is unreachable
        or not Airflow's before reading a row."""
        from sqlalchemy.exc import SQLAlchemyError

        try:
            inspector = self._sql.inspect(self._engine)
            columns: dict[str, set[str]] = {}
            for table, wanted in _COLUMNS.items():
                if not inspector.has_table(table):
                    raise self._not_airflows(
                        f"it has no table {table} (wrong database, or not migrated with `airflow db migrate`)"
                    )
                columns[table] = {column["name"] for column in inspector.get_columns(table)}
                missing = [name for name in wanted if name not in columns[table]]
                if missing:
                    raise self._not_airflows(f"table {table} lacks {', '.join(missing)}")
            found = {name for name in _ALL_TASK_SCOPE_COLUMNS if name in columns["task_state_store"]}
            for release, names in TASK_SCOPE_COLUMNS.items():
                if found == set(names):
                    return release
            schemas = "; ".join(
                f"Airflow {release}'s {' and '.join(names)}" for release, names in TASK_SCOPE_COLUMNS.items()
            )
            raise self._not_airflows(
                f"table task_state_store has {' and '.join(sorted(found)) or 'none'} of "
                f"{', '.join(_ALL_TASK_SCOPE_COLUMNS)}, not {schemas} "
                f"(alembic revision: {self._alembic_revision()})"
            )
        except SQLAlchemyError as exc:
            raise OSError(
                f"cannot read Airflow's metadata DB at {self.display_url}: {exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0]}"
            ) from exc

    def _alembic_revision(self) -> str:
        """The DB's migration revision, as `airflow db migrate` recorded it (to name a half-migrated DB)."""
        if not self._sql.inspect(self._engine).has_table("alembic_version"):
            return "none recorded"
        with self._engine.connect() as connection:
            revisions = [
                row[0] for row in connection.execute(self._sql.text("SELECT version_num FROM alembic_version"))
            ]
        return ", ".join(revisions) or "none recorded"

    def _pages(self, table: str) -> Iterator[list[Any]]:
        """The table's rows in pages, by primary key (keyset pagination: each page is one short query)."""
        after, order, key_columns = _KEYSET[table]
        columns = ", ".join(self._columns[table]) + _JOINED[table]
        first = self._sql.text(f"SELECT {columns} FROM {table} ORDER BY {order} LIMIT {PAGE_ROWS}")
        rest = self._sql.text(f"SELECT {columns} FROM {table} WHERE {after} ORDER BY {order} LIMIT {PAGE_ROWS}")
        position: dict[str, Any] | None = None
        while True:
            with self._engine.connect() as connection:
                page = list(connection.execute(first) if position is None else connection.execute(rest, position))
            if not page:
                return
            yield page
            position = {name: getattr(page[-1], name) for name in key_columns}

    def count(self) -> int:
        with self._engine.connect() as connection:
            return sum(
                int(connection.execute(self._sql.text(f"SELECT COUNT(*) FROM {table}")).scalar_one())  # noqa: S608
                for table in _COLUMNS
            )

    def _task_scope(self, row: Any) -> TaskScopeIds:
        if self.release == "3.3":
            return TaskScopeIds(row.dag_id, row.run_id, row.task_id, int(row.map_index))
        return TaskScopeIds(row.dag_id, row.run_id, row.task_id, int(row.region_index), _region(row.region_id))

    def rows(self) -> Iterator[list[StateRow]]:
        """Every state row, task rows first, a page at a time."""
        for page in self._pages("task_state_store"):
            yield [
                StateRow(
                    self._task_scope(r),
                    r.key,
                    r.value,
                    _utc(r.updated_at),
                    _utc(r.expires_at),
                )
                for r in page
            ]
        for page in self._pages("asset_state_store"):
            yield [
                StateRow(AssetScopeId(int(r.asset_id), r.asset_name, r.asset_uri), r.key, r.value, _utc(r.updated_at))
                for r in page
            ]

    def close(self) -> None:
        self._engine.dispose()
