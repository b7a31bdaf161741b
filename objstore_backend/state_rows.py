"""Airflow's state rows, read-only: every row of ``task_state_store`` and ``asset_state_store``.

``import`` reads them through any SQLAlchemy URL (give it a role that can only ``SELECT``),
the way the GC's reconciler does: plain SQL, no Airflow installed. The rows stream in
pages of :data:`PAGE_ROWS`, ordered by primary key, so memory does not grow with the table.
Needs ``sqlalchemy`` and the DB's driver.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from objstore_backend.reconcile import create_db_engine

__all__ = ["AirflowStateDB", "AssetScopeId", "StateRow", "TaskScopeIds"]

PAGE_ROWS = 1000

#: The columns import needs, per table: a DB without them is not an Airflow 3.3 metadata DB.
_COLUMNS = {
    "task_state_store": ("id", "dag_id", "run_id", "task_id", "map_index", "key", "value", "updated_at", "expires_at"),
    "asset_state_store": ("asset_id", "key", "value", "updated_at"),
}
#: Read beside each table's own columns: an asset row's asset name and uri, which the references
#: workers wrote for it name (``asset/name/<name>/<key>``), checked by ``import``.
_JOINED = {
    "task_state_store": "",
    "asset_state_store": ", (SELECT name FROM asset WHERE asset.id = asset_state_store.asset_id) AS asset_name"
    ", (SELECT uri FROM asset WHERE asset.id = asset_state_store.asset_id) AS asset_uri",
}
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

    def __str__(self) -> str:
        return f"task {self.dag_id}/{self.run_id}/{self.task_id}/{self.map_index}"


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
        self._check_schema()

    def _check_schema(self) -> None:
        """A clear error for a DB that is unreachable or not Airflow's (3.3 or later) before reading a row."""
        from sqlalchemy.exc import SQLAlchemyError

        try:
            inspector = self._sql.inspect(self._engine)
            for table, wanted in _COLUMNS.items():
                if not inspector.has_table(table):
                    raise ValueError(
                        f"{self.display_url} is not an Airflow 3.3 metadata DB: it has no table {table} "
                        "(wrong database, or not migrated with `airflow db migrate`)"
                    )
                columns = {column["name"] for column in inspector.get_columns(table)}
                missing = [name for name in wanted if name not in columns]
                if missing:
                    raise ValueError(
                        f"{self.display_url} is not an Airflow 3.3 metadata DB: "
                        f"table {table} lacks {', '.join(missing)}"
                    )
        except SQLAlchemyError as exc:
            raise OSError(
                f"cannot read Airflow's metadata DB at {self.display_url}: {exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0]}"
            ) from exc

    def _pages(self, table: str) -> Iterator[list[Any]]:
        """The table's rows in pages, by primary key (keyset pagination: each page is one short query)."""
        after, order, key_columns = _KEYSET[table]
        columns = ", ".join(_COLUMNS[table]) + _JOINED[table]
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

    def rows(self) -> Iterator[list[StateRow]]:
        """Every state row, task rows first, a page at a time."""
        for page in self._pages("task_state_store"):
            yield [
                StateRow(
                    TaskScopeIds(r.dag_id, r.run_id, r.task_id, int(r.map_index)),
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
