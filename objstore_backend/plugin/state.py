"""The state of one task instance or asset as the plugin shows and edits it, wherever it lives.

* **primary** mode (``[state_store] backend`` is ours): the bucket is the truth. A listing of
  the scope's prefix says which keys exist (and their size and time); each value and expiry
  is read from its object, many reads in flight. Offload objects left from before a switch are
  not keys; writes store the value typed, never adopting an object it may name.
* **offload** mode (``[workers] state_store_backend`` is ours): Airflow's rows say which keys
  exist and when they expire, as tasks see them; a value behind an ``objstore:`` reference is
  read from the bucket. Writes go where a task's would: the value to the bucket through the
  backend's hook, the reference to Airflow's row; deletes remove the row first, like Airflow's
  worker, then the object it referenced. A reference naming any object but its own key's (a row
  forged through Airflow's REST API) is never read or deleted: the entry shows its ``problem``.

Values larger than :data:`VALUE_LIMIT_BYTES` are not read for a list (a page stays quick
whatever a task stored); a GET of the key alone returns them whole.
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from airflow.state import AssetScope, TaskScope

from objstore_backend.backend import INLINE_REF_PREFIX, OBJECT_REF_PREFIX, ObjectStoreBackend, is_live_in_primary
from objstore_backend.codec import decode_json, encode_json
from objstore_backend.errors import StoreError
from objstore_backend.layout import Location, is_hashed, object_path, original_key, parse, scope_prefix
from objstore_backend.plugin.coordinates import HAS_REGIONS, region_of, with_index
from objstore_backend.refs import reference_refusal
from objstore_backend.store import ListedObject, ObjectMetadata
from objstore_backend.transports.base import META_KEY, parse_key

__all__ = ["VALUE_LIMIT_BYTES", "BucketState", "DatabaseState", "Entry", "Mode", "StateSource", "configured_mode"]

#: Values above this many bytes are left out of lists (``value`` null, ``problem`` says why).
VALUE_LIMIT_BYTES = 256 * 1024
#: Objects read at once for one page.
_READS_IN_FLIGHT = 32
_WRAPPED_REF_KEY = "__airflow_state_ref__"

Mode = Literal["primary", "offload"]
Scope = TaskScope | AssetScope


def configured_mode() -> Mode | None:
    """Which side of Airflow uses :class:`ObjectStoreBackend` in this deployment, if any.

    Read from Airflow's config on each call (cheap: the classes are imported once by Python).
    Both set: primary, as the server side then holds every value.
    """
    from airflow.configuration import conf

    def ours(section: str, key: str) -> bool:
        try:
            configured = conf.getimport(section, key, fallback=None)
        except Exception:  # a class that does not import is not ours; Airflow reports it itself
            return False
        return isinstance(configured, type) and issubclass(configured, ObjectStoreBackend)

    if ours("state_store", "backend"):
        return "primary"
    if ours("workers", "state_store_backend"):
        return "offload"
    return None


@dataclass(frozen=True, slots=True)
class Entry:
    """One key as the routes answer it: Airflow's fields, plus where the value lives and its size.

    ``mode``: ``primary`` (an object), ``offload`` (an object behind Airflow's reference),
    ``inline`` (small, inside Airflow's reference), ``database`` (a plain Airflow row).
    ``problem`` says why ``value`` is ``None``: too large for a list, a missing or damaged object.
    """

    key: str
    value: Any
    size_bytes: int | None
    updated_at: datetime | None
    expires_at: datetime | None
    mode: str
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class _Read:
    value: Any = None
    size: int | None = None
    metadata: ObjectMetadata | None = None
    problem: str | None = None
    missing: bool = False


class StateSource(ABC):
    """The operations behind the routes; one implementation per mode."""

    mode: Mode

    def __init__(self, backend: ObjectStoreBackend) -> None:
        self.backend = backend
        self.store = backend.store

    @abstractmethod
    async def page(self, scope: Scope, limit: int, offset: int) -> tuple[list[Entry], int]:
        """One page of the scope's keys, ordered by key, and how many keys it holds."""

    @abstractmethod
    async def get(self, scope: Scope, key: str) -> Entry | None:
        """One key with its whole value, or ``None`` if it does not exist."""

    @abstractmethod
    async def set(self, scope: Scope, key: str, value: Any, expires_at: datetime | None) -> None:
        """Create or overwrite a key."""

    @abstractmethod
    async def patch(self, scope: Scope, key: str, value: Any) -> bool:
        """Replace the value of an existing key, keeping its expiry; ``False`` if there is none."""

    @abstractmethod
    async def delete(self, scope: Scope, key: str) -> None:
        """Delete one key; a missing key is fine."""

    @abstractmethod
    async def clear(self, scope: Scope, all_map_indices: bool) -> None:
        """Delete every key of the scope (with ``all_map_indices``, of every map index of the task)."""

    async def _read(self, path: str, listed: ListedObject | None, *, whole: bool) -> _Read:
        """An object's value, unless ``whole`` is false and the listing shows it is too large."""
        if not whole and listed is not None and listed.size > VALUE_LIMIT_BYTES:
            return _Read(
                size=listed.size,
                metadata=await self.store.ahead(path),
                problem=f"{listed.size} bytes, more than a list shows: GET the key alone to read it",
            )
        try:
            found = await self.store.aread(path)
        except (StoreError, ValueError) as exc:  # damaged in the bucket: say so, keep the rest of the page
            return _Read(size=listed.size if listed else None, problem=str(exc))
        if found is None:
            return _Read(problem=f"{self.store.display_path(path)} is missing", missing=True)
        try:
            value = decode_json(found.body)
        except ValueError as exc:
            return _Read(size=len(found.body), metadata=found.metadata, problem=f"not a JSON document: {exc}")
        return _Read(value, len(found.body), found.metadata)

    def _listing(self, prefix: str) -> dict[str, ListedObject]:
        return {entry.path: entry for entry in self.store.iter_objects(prefix)}

    async def _gather(self, calls: Sequence[Any]) -> list[Any]:
        semaphore = asyncio.Semaphore(_READS_IN_FLIGHT)

        async def bounded(call: Any) -> Any:
            async with semaphore:
                return await call

        return list(await asyncio.gather(*(bounded(call) for call in calls)))


#: Why a list shows no value for an object left by offload mode (:func:`is_live_in_primary`): it
#: is listed, not hidden, so a page costs one listing and one read per key, and the operator sees
#: what the next ``import`` or GC will settle.
_NOT_LIVE = (
    "an offload-mode object from before the switch to primary mode, which tasks do not read: "
    "`objstore-backend import` brings it over while Airflow's row still holds it, the GC with "
    "--airflow-db reclaims it once the row is gone"
)


class BucketState(StateSource):
    """Primary mode: every key is an object under the scope's prefix."""

    mode: Mode = "primary"

    async def _keys(self, scope: Scope) -> list[tuple[str, ListedObject]]:
        """The scope's keys and their objects, by key. A key hashed in its path is the one its object
        records (from the listing where it carries metadata, else one HEAD each); one that records
        none keeps its hashed name (:meth:`delete` refuses that name, saying why)."""
        listed = await asyncio.to_thread(self._listing, scope_prefix(scope))
        located = [(location, entry) for location, entry in ((parse(p), e) for p, e in listed.items()) if location]

        async def key_of(location: Location, entry: ListedObject) -> str:
            if not is_hashed(location.key):
                return location.key
            if entry.metadata is not None:
                recorded = parse_key(entry.metadata[META_KEY]) if META_KEY in entry.metadata else None
            else:
                metadata = await self.store.ahead(entry.path)
                recorded = metadata.key if metadata is not None else None
            return original_key(location, recorded) or location.key

        keys = await self._gather([key_of(location, entry) for location, entry in located])
        return sorted(zip(keys, (entry for _, entry in located), strict=True), key=lambda item: item[0])

    def _entry(self, key: str, listed: ListedObject, read: _Read) -> Entry:
        metadata = read.metadata
        if metadata is not None and not is_live_in_primary(metadata):
            read = _Read(size=read.size, metadata=metadata, problem=_NOT_LIVE)
        return Entry(
            key=key,
            value=read.value,
            size_bytes=read.size,
            updated_at=listed.modified,
            expires_at=metadata.expires_at if metadata else None,
            mode="primary" if metadata is None or metadata.mode == "primary" or metadata.adopted else "offload",
            problem=read.problem,
        )

    async def page(self, scope: Scope, limit: int, offset: int) -> tuple[list[Entry], int]:
        keys = await self._keys(scope)
        page = keys[offset : offset + limit]
        reads = await self._gather([self._read(listed.path, listed, whole=False) for _, listed in page])
        return [self._entry(key, listed, read) for (key, listed), read in zip(page, reads, strict=True)], len(keys)

    async def get(self, scope: Scope, key: str) -> Entry | None:
        path = object_path(scope, key)
        listed = next((entry for _, entry in await self._keys(scope) if entry.path == path), None)
        if listed is None:
            return None
        read = await self._read(path, listed, whole=True)
        if read.missing or (read.metadata is not None and not is_live_in_primary(read.metadata)):
            return None
        return self._entry(key, listed, read)

    async def set(self, scope: Scope, key: str, value: Any, expires_at: datetime | None) -> None:
        await self.backend.awrite_value(scope, key, encode_json(value).decode(), expires_at=expires_at)

    async def patch(self, scope: Scope, key: str, value: Any) -> bool:
        metadata = await self.store.ahead(object_path(scope, key))
        if metadata is None or not is_live_in_primary(metadata):
            return False
        await self.backend.awrite_value(scope, key, encode_json(value).decode(), expires_at=metadata.expires_at)
        return True

    async def delete(self, scope: Scope, key: str) -> None:
        stored = await self.store.ahead(scope_prefix(scope) + key) if is_hashed(key) else None
        if stored is not None:  # ``key`` is the hashed name a listing shows, not a key
            raise ValueError(
                f"{key!r} is the stored name of the key {stored.key!r}: delete that key"
                if stored.key is not None
                else f"{key!r} is the stored name of a key too long for a path, and its object does not record "
                "the key (written before keys were recorded): it cannot be deleted by key. Clearing the "
                "task's (or asset's) state removes it with the rest"
            )
        await self.backend.adelete(scope, key)

    async def clear(self, scope: Scope, all_map_indices: bool) -> None:
        await self.backend.aclear(scope, all_map_indices=all_map_indices)


@dataclass(frozen=True, slots=True)
class _Row:
    key: str
    value: str
    updated_at: datetime | None
    expires_at: datetime | None = None  # task rows only, like the map index
    map_index: int | None = None  # a task row's index (a clear of every map index reads several)


#: An asset's name and uri, which workers address it by (both ``None`` for a task scope).
_AssetNames = tuple[str | None, str | None]


def _index_column(model: Any, name: str = "region_index") -> Any:
    """A column of ``task_state_store`` by its 3.4 name; 3.3 has ``map_index`` and no region."""
    return getattr(model, name if HAS_REGIONS else "map_index")


def _reference(stored: Any) -> str | None:
    if isinstance(stored, dict) and len(stored) == 1 and isinstance(stored.get(_WRAPPED_REF_KEY), str):
        return str(stored[_WRAPPED_REF_KEY])
    return None


class DatabaseState(StateSource):
    """Offload mode: Airflow's rows, each reference resolved from the bucket."""

    mode: Mode = "offload"

    # -- Airflow's rows (sync SQLAlchemy, run on a worker thread) -------------------------

    @staticmethod
    def _model_and_filters(scope: Scope, all_map_indices: bool = False) -> tuple[Any, list[Any]]:
        if isinstance(scope, TaskScope):
            from airflow.models.task_state_store import TaskStateStoreModel as Model

            filters = [Model.dag_id == scope.dag_id, Model.run_id == scope.run_id, Model.task_id == scope.task_id]
            if HAS_REGIONS:  # 3.4: the region always, as Airflow's metastore clears
                filters.append(_index_column(Model, "region_id") == region_of(scope))
            if not all_map_indices:
                filters.append(_index_column(Model) == scope.map_index)
            return Model, filters
        from airflow.models.asset_state_store import AssetStateStoreModel as AssetModel

        return AssetModel, [AssetModel.asset_id == scope.asset_id]

    def _rows(
        self,
        scope: Scope,
        *,
        key: str | None = None,
        limit: int | None = None,
        offset: int = 0,
        all_map_indices: bool = False,
    ) -> tuple[list[_Row], int]:
        from airflow.utils.session import create_session
        from sqlalchemy import func, select

        model, filters = self._model_and_filters(scope, all_map_indices)
        if key is not None:
            filters.append(model.key == key)
        columns = [model.key, model.value, model.updated_at]
        if isinstance(scope, TaskScope):  # asset keys have no expiry (nor map index) in Airflow
            columns += [model.expires_at, _index_column(model)]
        statement = select(*columns).where(*filters).order_by(model.key.asc())
        if limit is not None:
            statement = statement.offset(offset).limit(limit)
        with create_session() as session:
            total = session.scalar(select(func.count()).select_from(model).where(*filters)) or 0
            rows = [_Row(*row) for row in session.execute(statement)]
        return rows, total

    def _asset_names(self, scope: Scope) -> _AssetNames:
        """The asset's name and uri, read from Airflow's ``asset`` table."""
        if isinstance(scope, TaskScope):
            return None, None
        from airflow.models.asset import AssetModel
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            found = session.execute(
                select(AssetModel.name, AssetModel.uri).where(AssetModel.id == scope.asset_id)
            ).first()
        return (found[0], found[1]) if found is not None else (None, None)

    def _worker_scope(self, scope: Scope) -> Scope:
        """The scope a task's hook writes under: asset scopes by name, as workers address them."""
        name, _ = self._asset_names(scope)
        return AssetScope(name=name) if name is not None else scope

    def _write_row(self, scope: Scope, key: str, stored: str, expires_at: datetime | None) -> None:
        from airflow.state.metastore import MetastoreBackend

        if isinstance(scope, TaskScope):
            MetastoreBackend().set(scope, key, stored, expires_at=expires_at)
        else:
            from airflow._shared.state import AssetStateStoreWriterKind
            from airflow.utils.session import create_session

            with create_session() as session:
                MetastoreBackend().set_asset_state_store(
                    scope, key, stored, kind=AssetStateStoreWriterKind.API, session=session
                )

    def _delete_rows(self, scope: Scope, key: str | None, all_map_indices: bool) -> list[_Row]:
        """Delete the rows (one key, or the scope's), returning what they held."""
        from airflow.state.metastore import MetastoreBackend

        rows, _ = self._rows(scope, key=key, all_map_indices=all_map_indices)
        if key is not None:
            MetastoreBackend().delete(scope, key)
        else:
            MetastoreBackend().clear(scope, all_map_indices=all_map_indices)
        return rows

    # -- references ------------------------------------------------------------------------

    def _object_of(self, row: _Row, scope: Scope, asset: _AssetNames) -> tuple[str | None, str | None]:
        """The object the row's reference leads to, or why it leads nowhere (a reference to another
        key's object, forged through Airflow's REST API, or one this package did not write)."""
        try:
            ref = _reference(json.loads(row.value))
        except ValueError:
            return None, None
        if ref is None or ref.startswith(INLINE_REF_PREFIX):
            return None, None
        path = ref[len(OBJECT_REF_PREFIX) :] if ref.startswith(OBJECT_REF_PREFIX) else None
        if path is None or parse(path) is None:
            return None, f"a reference objstore-backend did not write: {ref[:200]!r}"
        if isinstance(scope, TaskScope) and row.map_index is not None:
            scope = with_index(scope, row.map_index)
        refusal = reference_refusal(path, scope, row.key, asset_name=asset[0], asset_uri=asset[1])
        return (None, refusal) if refusal is not None else (path, None)

    async def _entry(
        self, row: _Row, scope: Scope, asset: _AssetNames, listed: dict[str, ListedObject] | None
    ) -> Entry:
        def entry(value: Any, size: int | None, mode: str, problem: str | None = None) -> Entry:
            return Entry(row.key, value, size, row.updated_at, row.expires_at, mode, problem)

        try:
            stored = json.loads(row.value)
        except ValueError as exc:
            return entry(None, len(row.value), "database", f"Airflow's row is not JSON: {exc}")
        ref = _reference(stored)
        if ref is None:
            return entry(stored, len(row.value), "database")
        if ref.startswith(INLINE_REF_PREFIX):
            text = ref[len(INLINE_REF_PREFIX) :]
            return entry(decode_json(text), len(text.encode()), "inline")
        path, problem = self._object_of(row, scope, asset)
        if path is None:
            return entry(None, None, "offload", problem)
        read = await self._read(path, None if listed is None else listed.get(path), whole=listed is None)
        if read.missing:
            missing = (
                f"Airflow references {self.store.display_path(path)}, which is missing (deleted by hand, "
                "by a bucket lifecycle rule, or written to another base path)"
            )
            return entry(None, None, "offload", missing)
        return entry(read.value, read.size, "offload", read.problem)

    async def page(self, scope: Scope, limit: int, offset: int) -> tuple[list[Entry], int]:
        rows, total = await asyncio.to_thread(self._rows, scope, limit=limit, offset=offset)
        asset = await asyncio.to_thread(self._asset_names, scope)
        paths = [p for p, _ in (self._object_of(row, scope, asset) for row in rows) if p is not None]
        prefixes = sorted({path.rsplit("/", 1)[0] + "/" for path in paths})
        listed: dict[str, ListedObject] = {}
        for found in await asyncio.gather(*(asyncio.to_thread(self._listing, prefix) for prefix in prefixes)):
            listed.update(found)
        return await self._gather([self._entry(row, scope, asset, listed) for row in rows]), total

    async def get(self, scope: Scope, key: str) -> Entry | None:
        rows, _ = await asyncio.to_thread(self._rows, scope, key=key)
        if not rows:
            return None
        return await self._entry(rows[0], scope, await asyncio.to_thread(self._asset_names, scope), None)

    async def _store_value(self, scope: Scope, key: str, value: Any, expires_at: datetime | None) -> None:
        worker_scope = await asyncio.to_thread(self._worker_scope, scope)
        hook = (
            self.backend.serialize_task_state_store_to_ref
            if isinstance(scope, TaskScope)
            else self.backend.serialize_asset_state_store_to_ref
        )
        ref = await asyncio.to_thread(hook, value=value, key=key, scope=worker_scope)
        await asyncio.to_thread(self._write_row, scope, key, json.dumps({_WRAPPED_REF_KEY: ref}), expires_at)

    async def set(self, scope: Scope, key: str, value: Any, expires_at: datetime | None) -> None:
        await self._store_value(scope, key, value, expires_at)

    async def patch(self, scope: Scope, key: str, value: Any) -> bool:
        rows, _ = await asyncio.to_thread(self._rows, scope, key=key)
        if not rows:
            return False
        await self._store_value(scope, key, value, rows[0].expires_at)
        return True

    async def _remove(self, scope: Scope, key: str | None, all_map_indices: bool) -> None:
        """Airflow's rows, then the objects they lead to: never another key's object a row names."""
        rows = await asyncio.to_thread(self._delete_rows, scope, key, all_map_indices)
        asset = await asyncio.to_thread(self._asset_names, scope)
        paths = {p for p, _ in (self._object_of(row, scope, asset) for row in rows) if p is not None}
        await self._gather([self.store.adelete(path) for path in sorted(paths)])

    async def delete(self, scope: Scope, key: str) -> None:
        await self._remove(scope, key, False)

    async def clear(self, scope: Scope, all_map_indices: bool) -> None:
        await self._remove(scope, None, all_map_indices)
