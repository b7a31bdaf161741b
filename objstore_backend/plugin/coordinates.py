"""Which task instance a request addresses: the scope its state lives under, on 3.3 and 3.4.

Airflow 3.3 names a task instance by ``map_index``. Airflow 3.4 stores mapped task instances and
loop iterations in a *dynamic region*: a non-zero ``region_id`` shared by the expansion (or by
the loop's iterations), and ``region_index`` = the map index (or the iteration). Its routes take
``region_id`` / ``region_index``, and, given only a ``map_index``, find the region from the
``task_instance`` rows (``services/public/task_coordinates.py``); its UI fills ``{MAP_INDEX}``
in a tab's link but has no region placeholder. :func:`resolve_task_scope` does the same from the
rows, so the tab and the routes reach the keys the worker wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from airflow.state import TaskScope
from fastapi import HTTPException, status

__all__ = [
    "HAS_REGIONS",
    "ZERO_REGION",
    "Coordinates",
    "parse_region_id",
    "region_of",
    "resolve_task_scope",
    "scope_of",
    "task_coordinates",
    "with_index",
]

#: Whether this Airflow stores task state by region (3.4 on): ``TaskScope`` has ``region_id``.
HAS_REGIONS = "region_id" in getattr(TaskScope, "__dataclass_fields__", {})
#: The region of every task instance outside expansions and loops (3.4's sentinel).
ZERO_REGION = UUID(int=0)


@dataclass(frozen=True, slots=True)
class Coordinates:
    """Where one live task instance's state lives: its region (zero: none) and index there."""

    region_id: UUID
    region_index: int


def scope_of(dag_id: str, run_id: str, task_id: str, where: Coordinates) -> TaskScope:
    """The ``TaskScope`` of a task instance at ``where`` (3.3: the index is the map index)."""
    if not HAS_REGIONS:
        return TaskScope(dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=where.region_index)
    extra: Any = {"region_id": where.region_id, "region_index": where.region_index}
    return TaskScope(dag_id=dag_id, run_id=run_id, task_id=task_id, **extra)


def region_of(scope: TaskScope) -> UUID:
    """A scope's region (the zero region on 3.3)."""
    region: UUID = getattr(scope, "region_id", ZERO_REGION)
    return region


def with_index(scope: TaskScope, index: int) -> TaskScope:
    """The same task and region at another index (a stored row's)."""
    return scope_of(scope.dag_id, scope.run_id, scope.task_id, Coordinates(region_of(scope), index))


def parse_region_id(raw: str | None) -> UUID | None:
    """A ``region_id`` query parameter, or a 400 naming what was given."""
    if raw is None:
        return None
    try:
        return UUID(raw)
    except ValueError:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"region_id must be a UUID, got {raw[:100]!r}") from None


def task_coordinates(dag_id: str, run_id: str, task_id: str, region_id: UUID | None = None) -> list[Coordinates]:
    """Where the task's live instances in the run are, by region and index (3.3: zero region)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    filters = [TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id, TaskInstance.task_id == task_id]
    if not HAS_REGIONS:
        indexes = select(TaskInstance.map_index).where(*filters)
        with create_session() as session:
            return [Coordinates(ZERO_REGION, index) for index in session.scalars(indexes)]
    ti: Any = TaskInstance  # 3.4's columns: typed against 3.3's model
    if region_id is not None:
        filters.append(ti.region_id == region_id)
    statement = select(ti.region_id, ti.region_index).where(*filters).order_by(ti.region_id, ti.region_index)
    with create_session() as session:
        return [Coordinates(UUID(str(region)), index) for region, index in session.execute(statement)]


def _choices(found: list[Coordinates]) -> str:
    return ", ".join(f"region_id={c.region_id}&region_index={c.region_index}" for c in found[:10])


def resolve_task_scope(
    dag_id: str,
    run_id: str,
    task_id: str,
    map_index: int = -1,
    region_id: UUID | None = None,
    region_index: int | None = None,
    *,
    any_index: bool = False,
) -> TaskScope:
    """The scope a request addresses, as Airflow 3.4's ``resolve_task_scope`` decides it.

    ``region_id`` and ``region_index`` together name it outright. Otherwise the task's rows
    decide: a task with no region keeps ``map_index``; one in regions (an expansion, a loop)
    needs exactly one instance at ``map_index`` (its index in the expansion), or with
    ``any_index`` (a clear of every map index) exactly one region. None: 404; several: 400
    listing them. The scope of a task instance that does not exist is only refused by writes.
    """
    if region_index is not None and region_id is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "region_index requires region_id")
    if region_id is not None and region_id != ZERO_REGION and not HAS_REGIONS:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, "this Airflow release has no dynamic regions: address the task by map_index"
        )
    if region_id is not None and region_index is not None:
        if map_index not in (-1, region_index):
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "map_index conflicts with region_index")
        return scope_of(dag_id, run_id, task_id, Coordinates(region_id, region_index))
    if region_id == ZERO_REGION or not HAS_REGIONS:
        return scope_of(dag_id, run_id, task_id, Coordinates(ZERO_REGION, map_index))
    regional = [c for c in task_coordinates(dag_id, run_id, task_id, region_id) if c.region_id != ZERO_REGION]
    if not regional and region_id is None:
        return scope_of(dag_id, run_id, task_id, Coordinates(ZERO_REGION, map_index))
    found = regional if any_index or map_index == -1 else [c for c in regional if c.region_index == map_index]
    if not found:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"Task instance not found for dag_id={dag_id!r}, run_id={run_id!r}, task_id={task_id!r}, "
            f"map_index={map_index}" + (f", region_id={region_id}" if region_id is not None else ""),
        )
    if any_index and len({c.region_id for c in found}) == 1:
        return scope_of(dag_id, run_id, task_id, Coordinates(found[0].region_id, map_index))
    if len(found) > 1:
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST,
            f"task {task_id!r} has {len(found)} instances in dynamic regions (an expansion or a loop) at "
            f"map_index={map_index}: select one with region_id and region_index ({_choices(found)})",
        )
    return scope_of(dag_id, run_id, task_id, found[0])
