"""``import``: copy a running deployment's live state from Airflow's metadata DB into the store.

Every row of ``task_state_store`` and ``asset_state_store`` becomes a primary-mode object at
the path the API server's ``get`` reads (asset rows by asset id), with the row's exact
``expires_at`` (``None`` stays never-expiring) and the row's ``updated_at`` as the object's
update time. A row's value may be plain JSON (Airflow's default backend), a reference to an
object this package wrote in offload mode (``objstore:`` and ``inline:``), or a common.io
1.11 reference (see :mod:`objstore_backend.commonio`): the value is resolved and written,
never the reference.

Nothing is lost and nothing newer is overwritten. Each object is written create-only, decided
by the store in the same request; only when one is there already is it read, and then:
the same value and expiry is left as it is (a second run writes nothing); an older copy
(its recorded update time before the row's, or the very offload object the row points at)
is replaced; anything else (written by the API server after the switch, or undated) is kept
and counted ``skipped_newer``. The DB is only read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

import orjson

from objstore_backend.codec import check_json_document, compress, validate_json_text
from objstore_backend.commonio import CommonIOSource, is_path_ref
from objstore_backend.errors import RefusedReferenceError
from objstore_backend.layout import object_path, parse, recorded_key
from objstore_backend.refs import reference_refusal
from objstore_backend.state_rows import AirflowStateDB, AssetScopeId, StateRow
from objstore_backend.store import ObjectMetadata, ObjectStore, StoredObject

__all__ = ["ImportOptions", "ImportReport", "MoveReport", "run_import"]

_REF_KEY = "__airflow_state_ref__"
_OBJECT_REF = "objstore:"
_INLINE_REF = "inline:"

#: How many problems the JSON summary names (all of them are logged as they happen).
MAX_NAMED = 100

IMPORTED, UNCHANGED, EXPIRED, NEWER, UNRESOLVED, ERROR = (
    "imported",
    "unchanged",
    "skipped_expired",
    "skipped_newer",
    "unresolved",
    "errors",
)


class _Unresolved(Exception):
    """A reference whose object is missing."""


@dataclass(frozen=True)
class ImportOptions:
    dry_run: bool = False
    concurrency: int = 32
    compression: str = "none"
    #: where common.io's references point; ``None``: such a reference is an error, named
    commonio: CommonIOSource | None = None
    #: Every writer of the store is stopped for the run: import even where create-only writes
    #: cannot be conditional (see :meth:`~objstore_backend.store.ObjectStore.check_guarded`).
    writers_stopped: bool = False


@dataclass
class MoveReport:
    """What happened to each key moved between Airflow's DB and the store (``import`` and ``export``),
    by outcome; every key not moved is named in ``problems`` or ``kept_newer``."""

    unchanged: int = 0
    skipped_expired: int = 0
    skipped_newer: int = 0
    errors: int = 0
    bytes: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    problems: list[str] = field(default_factory=list)
    kept_newer: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The counts (the command's own first), then the first :data:`MAX_NAMED` names of each list."""
        shared = MoveReport.__dataclass_fields__
        names = [f.name for f in fields(self) if f.name not in shared] + [f.name for f in fields(MoveReport)]
        summary: dict[str, Any] = {name: getattr(self, name) for name in names}
        summary["seconds"] = round(self.seconds, 3)
        summary["problems"], summary["kept_newer"] = self.problems[:MAX_NAMED], self.kept_newer[:MAX_NAMED]
        return summary


@dataclass
class ImportReport(MoveReport):
    rows: int = 0
    imported: int = 0
    unresolved: int = 0

    def count(self, outcome: str, note: str | None) -> None:
        self.rows += 1
        setattr(self, outcome, getattr(self, outcome) + 1)
        if note is not None and outcome in (UNRESOLVED, ERROR):
            self.problems.append(note)
        elif note is not None and outcome == NEWER:
            self.kept_newer.append(note)

    @property
    def failed(self) -> bool:
        return bool(self.unresolved or self.errors)


class _Importer:
    def __init__(self, store: ObjectStore, options: ImportOptions, report: ImportReport) -> None:
        self.store = store
        self.options = options
        self.report = report
        self.now = datetime.now(timezone.utc)

    async def _resolve(self, row: StateRow) -> tuple[bytes, str | None]:
        """The row's value as JSON bytes, and the path of our offload object it came from, if any."""
        if row.value is None:
            raise ValueError("the row has no value")
        if _REF_KEY not in row.value:
            return validate_json_text(row.value), None
        try:
            document = orjson.loads(row.value)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"the stored value is not JSON: {exc}") from None
        if not isinstance(document, dict) or _REF_KEY not in document:
            return validate_json_text(row.value), None
        ref = document[_REF_KEY]
        if not isinstance(ref, str):
            raise ValueError(f"the reference is not a string: {ref!r}")
        if ref.startswith(_INLINE_REF):
            return validate_json_text(ref[len(_INLINE_REF) :]), None
        if ref.startswith(_OBJECT_REF):
            return await self._read_own(ref[len(_OBJECT_REF) :], row)
        if not is_path_ref(ref):  # common.io keeps a value under its threshold as the JSON text
            return validate_json_text(ref), None
        return await self._read_commonio(ref), None

    async def _read_own(self, relative: str, row: StateRow) -> tuple[bytes, str]:
        """Our offload object behind the row, if it is the row's own key's (never another scope's, copied in)."""
        if parse(relative) is None:
            raise ValueError(f"the reference objstore:{relative} is not a path of this package's layout")
        names = (row.scope.name, row.scope.uri) if isinstance(row.scope, AssetScopeId) else (None, None)
        refusal = reference_refusal(relative, row.scope, row.key, asset_name=names[0], asset_uri=names[1])
        if refusal is not None:
            raise RefusedReferenceError(f"not imported: {refusal}")
        found = await self.store.aread(relative)
        if found is None:
            raise _Unresolved(f"the referenced object {self.store.display_path(relative)} is missing")
        try:
            check_json_document(found.body)
        except ValueError as exc:
            raise ValueError(f"the referenced object {self.store.display_path(relative)} is {exc}") from None
        return bytes(found.body), relative

    async def _read_commonio(self, ref: str) -> bytes:
        source = self.options.commonio
        if source is None:
            raise ValueError(
                f"a common.io reference ({ref}) but no common.io base path: give --commonio-path "
                "or set [common.io] state_store_objectstorage_path"
            )
        data = await asyncio.to_thread(source.read, ref)
        if data is None:
            raise _Unresolved(f"the common.io object {ref} is missing")
        try:
            return validate_json_text(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"the common.io object {ref} is not a JSON document: {exc}") from None

    def _keeps(self, existing: StoredObject, body: bytes, row: StateRow, source: str | None, path: str) -> str | None:
        """Why the object already at ``path`` stays (``UNCHANGED`` / ``NEWER``), or ``None`` to replace it."""
        meta = existing.metadata
        if meta.mode == "primary" and meta.expires_at == row.expires_at and existing.body == body:
            return UNCHANGED
        if source == path and meta.mode == "offload" and not meta.adopted:
            return None  # the row's own offload object: it becomes the primary object
        if meta.updated_at is not None and row.updated_at is not None and meta.updated_at < row.updated_at:
            return None  # an older copy (an earlier import of an earlier value)
        return NEWER

    async def _write(self, path: str, body: bytes, row: StateRow, *, create_only: bool) -> None:
        metadata = ObjectMetadata("primary", row.expires_at, updated_at=row.updated_at, key=recorded_key(row.key))
        await self.store.awrite(path, compress(body, self.options.compression), metadata, create_only=create_only)

    async def _import(self, row: StateRow) -> tuple[str, str | None]:
        if row.expires_at is not None and row.expires_at <= self.now:
            return EXPIRED, None
        try:
            body, source = await self._resolve(row)
        except _Unresolved as exc:
            return UNRESOLVED, f"{row}: {exc}"
        path = object_path(row.scope, row.key)
        if not self.options.dry_run and source != path:
            try:
                await self._write(path, body, row, create_only=True)
            except FileExistsError:
                pass
            else:
                self.report.bytes += len(body)
                return IMPORTED, None
        existing = await self.store.aread(path)
        kept = None if existing is None else self._keeps(existing, body, row, source, path)
        if kept is not None:
            return kept, f"{row}: {self.store.display_path(path)} is newer than the row" if kept == NEWER else None
        if not self.options.dry_run:
            await self._write(path, body, row, create_only=existing is None)
        self.report.bytes += len(body)
        return IMPORTED, None

    async def one(self, row: StateRow) -> tuple[str, str | None]:
        try:
            return await self._import(row)
        except FileExistsError:
            return NEWER, f"{row}: written by someone else while importing it"
        except (OSError, ValueError, TypeError) as exc:  # the store, or a row's source, failed or is damaged
            return ERROR, f"{row}: {exc}"


async def _run(
    fs: Any,
    db: AirflowStateDB,
    importer: _Importer,
    progress: Callable[[int], None] | None,
    on_problem: Callable[[str], None],
) -> None:
    """On the store's own I/O loop (``fs`` is its filesystem), like the GC: one client session."""
    semaphore = asyncio.Semaphore(importer.options.concurrency)

    async def bounded(row: StateRow) -> tuple[str, str | None]:
        async with semaphore:
            return await importer.one(row)

    for page in db.rows():
        for outcome, note in await asyncio.gather(*(bounded(row) for row in page)):
            importer.report.count(outcome, note)
            if note is not None:
                on_problem(f"{outcome}: {note}")
        if progress is not None:
            progress(len(page))


def run_import(
    store: ObjectStore,
    db: AirflowStateDB,
    options: ImportOptions | None = None,
    *,
    progress: Callable[[int], None] | None = None,
    on_problem: Callable[[str], None] = lambda note: None,
) -> ImportReport:
    """Import every live row of ``db`` into ``store``; a DB failure midway is reported, not raised.

    Raises :class:`~objstore_backend.errors.UnguardedStoreError`, before any row is read, where
    the store cannot write create-only (a dry run writes nothing: it runs anywhere).
    """
    from sqlalchemy.exc import SQLAlchemyError

    options = options or ImportOptions()
    if not options.dry_run:
        store.check_guarded("import", writers_stopped=options.writers_stopped)
    report = ImportReport(dry_run=options.dry_run)
    started = time.monotonic()
    try:
        store._run(_run, db, _Importer(store, options, report), progress, on_problem)
    except SQLAlchemyError as exc:
        note = f"reading {db.display_url} failed after {report.rows} rows: {str(exc).splitlines()[0]}"
        report.errors += 1
        report.problems.append(note)
        on_problem(f"errors: {note}")
    report.seconds = time.monotonic() - started
    return report
