"""The GC's index: what the last sweep learnt of each object, so the next one reads only what changed.

S3 listings carry no user metadata, so a sweep without memory HEADs every object, every night.
Every write of this package has a unique ETag (see ``S3Transport._with_nonce``), so an object
listed with the ETag and last-modified time the index recorded still has the metadata the index
recorded: the sweep HEADs only objects that are new or rewritten. An entry is trusted for nothing
else, so an old, partial or concurrent index costs HEADs, never a wrong delete.

Layout, under the base's :data:`~objstore_backend.layout.RESERVED_PREFIX` (or ``--index``)::

    current.json                 the generation of the plan a new run takes
    plans/<generation>.json      a plan: units (key ranges) and weights (objstore_backend.partition),
                                 written once, never rewritten
    runs/<run>.json              the generation a run (``--run-id``) took: every shard of it takes it
    claims/<generation>.json     the shard discovering a first plan: its siblings wait for that plan
    units/<id>.json              one unit's manifest: its parts (key range, keys, object, sha256) and
                                 the run that swept it (a retried shard of that run skips the unit)
    units/<id>/<token>-<n>.gz    a part: sorted lines "key<TAB>etag<TAB>modified<TAB>mode<TAB>expires"

Each unit is read as a stream merged with the sorted listing (one part in memory at a time), and
written part by part, then published by one write of its manifest: atomic per unit. Documents
carry a format, a version, the base they describe and a sha256; a part's sha256 is in its
manifest. Anything missing, foreign or damaged is reported and that unit gets a full pass.

Stores whose listing carries the metadata (GCS) keep manifests with counts only, for the plan.

One plan per run: the first shard of a run to start records the current generation for its run
(a create-only write, so two first shards agree), the others read it, whatever order and time
they start in. A plan learnt during a run (after its last unit is swept) becomes the current
generation for the next run. Without a run id, each shard takes the current generation. With no
plan at all (the first run), one shard discovers it and the others wait for it (``claims/``).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import orjson

from objstore_backend.discovery import discover
from objstore_backend.errors import CorruptObjectError
from objstore_backend.layout import RESERVED_PREFIX
from objstore_backend.partition import KeyRange, Plan, next_plan
from objstore_backend.store import ObjectMetadata, ObjectStore
from objstore_backend.transports import S3Transport, Transport

__all__ = ["IndexDamaged", "IndexLocation", "SweepIndex", "UnitCursor"]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

FORMAT = "objstore-backend-gc-index"
VERSION = 1
_MODES = {("primary", False): "P", ("offload", False): "O", ("offload", True): "A", ("primary", True): "Q"}
_FROM_MODE = {code: mode for mode, code in _MODES.items()}


class IndexDamaged(Exception):
    """An index document or part that is not what this version wrote, for this base."""


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MILLISECOND = timedelta(milliseconds=1)


def _millis(moment: datetime | None) -> int:
    """Whole milliseconds since the epoch, exactly (a float timestamp rounds the year 9999's last
    millisecond up into the year 10000)."""
    return -1 if moment is None else (moment - _EPOCH) // _MILLISECOND


def _line(key: str, etag: str, modified: int, metadata: ObjectMetadata) -> bytes:
    expires = "" if metadata.expires_at is None else str(_millis(metadata.expires_at))
    return f"{key}\t{etag}\t{modified}\t{_MODES[metadata.mode, metadata.adopted]}\t{expires}\n".encode()


def _parse_line(line: bytes) -> tuple[str, str, int, ObjectMetadata]:
    key, etag, modified, mode, expires = line.decode().split("\t")
    kind, adopted = _FROM_MODE[mode]
    expires_at = _EPOCH + int(expires) * _MILLISECOND if expires else None
    return key, etag, int(modified), ObjectMetadata(kind, expires_at, adopted)  # type: ignore[arg-type]


@dataclass(frozen=True)
class IndexLocation:
    """Where a store's index lives: a prefix (full path ending in ``/``) on some store."""

    transport: Transport
    fs: Any
    root: str
    base: str  # the URL of the store it describes: an index of another base is foreign

    @classmethod
    def for_store(cls, store: ObjectStore, url: str | None = None) -> IndexLocation:
        """Under the store's reserved prefix, or at ``url`` (same storage options)."""
        if url is None:
            return cls(store.transport, store.fs, store.full_path(RESERVED_PREFIX), store.url)
        elsewhere = ObjectStore(url, {**store.storage_options, "retry": store.retry})
        return cls(elsewhere.transport, elsewhere.fs, elsewhere.full_path(""), store.url)

    async def read_document(self, name: str, kind: str) -> dict[str, Any] | None:
        """A document's body; ``None`` if there is none; :class:`IndexDamaged` if it is not ours."""
        try:
            found = await self.transport.read(self.fs, self.root + name)
        except CorruptObjectError as exc:
            raise IndexDamaged(f"{name}: {exc}") from exc
        if found is None:
            return None
        try:
            document = orjson.loads(bytes(found[0]))
            body = document["body"]
            intact = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
            header = (document["format"], document["version"], document["kind"], document["base"])
            sha256 = document["sha256"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise IndexDamaged(f"{name}: unreadable ({exc!r})") from exc
        if header != (FORMAT, VERSION, kind, self.base):
            raise IndexDamaged(f"{name}: written for {header}, not ({FORMAT!r}, {VERSION}, {kind!r}, {self.base!r})")
        if intact != sha256:
            raise IndexDamaged(f"{name}: checksum mismatch")
        if not isinstance(body, dict):
            raise IndexDamaged(f"{name}: unreadable body")
        return body

    async def write_document(self, name: str, kind: str, body: dict[str, Any], *, create_only: bool = False) -> bool:
        """Write a document; with ``create_only``, only if there is none (False: there was one).
        Where the store cannot decide that in the request, a write follows a read."""
        sha256 = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
        document = {"format": FORMAT, "version": VERSION, "kind": kind, "base": self.base, "sha256": sha256}
        data = orjson.dumps({**document, "body": body})
        if not create_only:
            await self.transport.write(self.fs, self.root + name, data, {})
            return True
        if not self.transport.supports_create_only:
            if await self.transport.read(self.fs, self.root + name) is not None:
                return False
            await self.transport.write(self.fs, self.root + name, data, {})
            return True
        try:
            await self.transport.write(self.fs, self.root + name, data, {}, create_only=True)
        except FileExistsError:
            return False
        return True

    async def list_older(self, prefix: str, than: datetime) -> tuple[list[str], int]:
        """The names under ``prefix`` last written before ``than``, and the listing requests."""
        names, requests = [], 0
        async for page in self.transport.list_pages(self.fs, self.root + prefix):
            requests += 1
            names += [e.path[len(self.root) :] for e in page if e.modified is not None and e.modified < than]
        return names, max(requests, 1)

    async def read_part(self, name: str, sha256: str) -> bytes:
        try:
            found = await self.transport.read(self.fs, self.root + name)
            data = gzip.decompress(bytes(found[0])) if found is not None else None
        except (CorruptObjectError, OSError, EOFError) as exc:
            if not isinstance(exc, (CorruptObjectError, EOFError, gzip.BadGzipFile)):
                raise
            raise IndexDamaged(f"{name}: unreadable ({exc})") from exc
        if data is None:
            raise IndexDamaged(f"{name}: missing")
        if hashlib.sha256(data).hexdigest() != sha256:
            raise IndexDamaged(f"{name}: checksum mismatch")
        return data

    async def write_part(self, name: str, data: bytes) -> str:
        await self.transport.write(self.fs, self.root + name, gzip.compress(data, compresslevel=1, mtime=0), {})
        return hashlib.sha256(data).hexdigest()

    async def delete(self, names: list[str]) -> None:
        for start in range(0, len(names), 1000):
            chunk = names[start : start + 1000]
            failures = await self.transport.delete_batch(self.fs, [(self.root + n, None) for n in chunk])
            for path, reason in failures:
                logger.info("gc index: could not delete %s: %s", path, reason)


def _manifest_name(unit: KeyRange) -> str:
    return f"units/{unit.ident}.json"


def _plan_name(generation: int) -> str:
    return f"plans/{generation:08d}.json"


def _claim_name(generation: int) -> str:
    return f"claims/{generation:08d}.json"


def _run_name(run: str) -> str:
    """A run id as an object name: hashed, so any id (a Job name, an Airflow run id) will do."""
    return f"runs/{hashlib.sha256(run.encode('utf-8', 'surrogatepass')).hexdigest()[:32]}.json"


#: A run's record is dropped once this old.
RUN_RECORDS_KEPT = timedelta(days=7)
#: A shard whose run id was first seen longer ago than this begins a new run under that id (a
#: Job made again under its old name, an Airflow run cleared): shards of one run start within it.
RUN_WINDOW = timedelta(hours=12)


#: How long the shards of a first run wait for the plan one of them is discovering.
DISCOVERY_WAIT = timedelta(minutes=5)


def _began_within_window(began: str) -> bool:
    try:
        return datetime.now(timezone.utc) - datetime.fromisoformat(began) < RUN_WINDOW
    except (ValueError, TypeError):
        return False


@dataclass
class _Part:
    range: KeyRange
    count: int
    name: str | None
    sha256: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"range": self.range.as_list(), "count": self.count, "name": self.name, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> _Part:
        after, upto = data["range"]
        return cls(KeyRange(after, upto), int(data["count"]), data["name"], data["sha256"])


@dataclass
class _Manifest:
    parts: list[_Part]
    run: str | None  # the run that swept the unit, if it had an id


def _manifest(body: dict[str, Any], unit: KeyRange, name: str) -> _Manifest:
    try:
        if KeyRange(*body["range"]) != unit:
            raise IndexDamaged(f"{name}: describes {body['range']}, not {unit.as_list()}")
        run = body.get("run")
        if run is not None and not isinstance(run, str):
            raise TypeError(f"run {run!r}")
        return _Manifest([_Part.from_dict(part) for part in body["parts"]], run)
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexDamaged(f"{name}: unreadable parts ({exc!r})") from exc


@dataclass
class SweepIndex:
    """One sweep's use of the index: the plan, a cursor per lister, and tidying up after.

    ``entries``: keep per-object lines (S3); else only counts. ``full``: recall nothing (every
    object is read again). ``writable``: False for a dry run, which writes nothing.
    """

    location: IndexLocation
    entries: bool
    full: bool = False
    writable: bool = True
    on_damage: Callable[[str], None] = lambda message: None
    #: The run this sweep belongs to (its shards share one plan), or ``None``.
    run: str | None = None
    #: The run as its manifests name it: its id and when it began (set by :meth:`plan`).
    sweep: str | None = None
    _token: str = field(default_factory=lambda: secrets.token_hex(6))
    #: Manifests :meth:`unswept` read, by unit, until the unit's reader takes its own.
    _read_before: dict[str, _Manifest | None] = field(default_factory=dict)

    @classmethod
    def for_store(cls, store: ObjectStore, url: str | None = None, **options: Any) -> SweepIndex:
        location = IndexLocation.for_store(store, url)
        return cls(location, entries=isinstance(store.transport, S3Transport), **options)

    def damaged(self, error: IndexDamaged) -> None:
        logger.warning("gc index: %s: a full pass where it applies", error)
        self.on_damage(str(error))

    async def _read(self, name: str, kind: str, parse: Callable[[dict[str, Any]], _T]) -> _T | None:
        """A document parsed by ``parse``; ``None`` if missing, or damaged (reported)."""
        return (await self._lookup(name, kind, parse))[1]

    async def _lookup(self, name: str, kind: str, parse: Callable[[dict[str, Any]], _T]) -> tuple[bool, _T | None]:
        """Whether a document is there, and its value parsed by ``parse`` (``None`` if damaged: reported)."""
        try:
            body = await self.location.read_document(name, kind)
            return (False, None) if body is None else (True, parse(body))
        except IndexDamaged as exc:
            self.damaged(exc)
        except (KeyError, TypeError, ValueError) as exc:
            self.damaged(IndexDamaged(f"{name}: unreadable ({exc!r})"))
        return True, None

    async def _read_plan(self, generation: int) -> Plan | None:
        return await self._read(_plan_name(generation), "plan", Plan.from_dict)

    async def _read_generation(self, name: str) -> int | None:
        return await self._read(name, "generation", lambda body: int(body["generation"]))

    async def _read_run(self, run: str) -> tuple[int, str] | None:
        """The generation run ``run`` took and when it began, if recorded."""
        return await self._read(_run_name(run), "run", lambda body: (int(body["generation"]), str(body["started"])))

    async def _create(self, name: str, kind: str, body: dict[str, Any]) -> bool:
        """Write a document only if there is none yet (False: another shard was first)."""
        if not self.writable:
            return True
        return await self.location.write_document(name, kind, body, create_only=True)

    async def plan(self, store: ObjectStore, fs: Any, shards: int = 1) -> tuple[Plan, int]:
        """The plan this shard's run sweeps by, and the listing requests it took to learn it.

        A run's recorded generation (if the run began within :data:`RUN_WINDOW`); else the
        current one, recorded for the run; else (a first run, or the current plan damaged) a
        discovery's, stored as the next generation."""
        record = None if self.run is None else await self._read_run(self.run)
        if record is not None and _began_within_window(record[1]):
            if (plan := await self._read_plan(record[0])) is not None:
                self.sweep = f"{self.run}@{record[1]}"
                return plan, 0
        current = await self._read_generation("current.json")
        plan = None if current is None else await self._read_plan(current)
        requests = 0
        if plan is None:
            plan, requests = await self._discovered(store, fs, shards, 0 if current is None else current + 1)
        if self.run is not None:
            began = datetime.now(timezone.utc).isoformat()
            body = {"generation": plan.generation, "started": began}
            if record is None:
                if not await self._create(_run_name(self.run), "run", body):
                    # another shard of this run recorded it first: take its plan
                    record = await self._read_run(self.run)
                    if record is not None:
                        began = record[1]
                        plan = await self._read_plan(record[0]) or plan
            elif self.writable:  # the id of a run that began long ago (a Job made again): a new run
                await self.location.write_document(_run_name(self.run), "run", body)
            self.sweep = f"{self.run}@{began}"
        return plan, requests

    async def _discovered(self, store: ObjectStore, fs: Any, shards: int, generation: int) -> tuple[Plan, int]:
        """Plan ``generation`` learnt by one discovery, and the listing requests this shard made.

        The shards of a first run start together: the first to claim the generation (a
        create-only write) lists, the others wait for the plan it stores. A claim older than
        :data:`DISCOVERY_WAIT`, or a wait that long, means the claimant died: discover here."""
        claim = _claim_name(generation)
        now = datetime.now(timezone.utc)
        if not await self._create(claim, "claim", {"started": now.isoformat()}):
            began = await self._read(claim, "claim", lambda body: datetime.fromisoformat(body["started"]))
            if began is not None and now - began < DISCOVERY_WAIT:
                if (plan := await self._plan_when_stored(generation)) is not None:
                    return plan, 0
            logger.warning("gc index: plan %d, claimed at %s, is not there to read: discovering it", generation, began)
        try:
            plan, requests = await discover(store.transport, fs, store.full_path(""), shards)
        except OSError:
            await self.location.delete([claim])  # a retry of this shard claims it again at once
            raise
        plan = Plan(plan.bounds, plan.weights, generation=generation)
        if not await self._create(_plan_name(generation), "plan", plan.to_dict()):
            plan = await self._read_plan(generation) or plan  # another shard's discovery won
        await self._write_current(plan.generation)
        return plan, requests

    async def _plan_when_stored(self, generation: int) -> Plan | None:
        """Plan ``generation`` once another shard stores it; ``None`` if it is stored damaged, or
        not stored within :data:`DISCOVERY_WAIT`."""
        deadline = time.monotonic() + DISCOVERY_WAIT.total_seconds()
        pause = 0.1
        while True:
            stored, plan = await self._lookup(_plan_name(generation), "plan", Plan.from_dict)
            if stored or time.monotonic() >= deadline:
                return plan
            await asyncio.sleep(pause)
            pause = min(2 * pause, 5.0)

    async def _write_current(self, generation: int) -> None:
        if self.writable:
            await self.location.write_document("current.json", "generation", {"generation": generation})

    async def manifest(self, unit: KeyRange) -> _Manifest | None:
        """A unit's manifest, ``None`` if it has no readable one (damage is reported)."""
        name = _manifest_name(unit)
        try:
            body = await self.location.read_document(name, "unit")
            return None if body is None else _manifest(body, unit, name)
        except IndexDamaged as exc:
            self.damaged(exc)
            return None

    async def _manifests(self, units: list[KeyRange]) -> list[_Manifest | None]:
        reading = asyncio.Semaphore(16)

        async def bounded(unit: KeyRange) -> _Manifest | None:
            async with reading:
                return await self.manifest(unit)

        return await asyncio.gather(*(bounded(unit) for unit in units))

    async def unswept(self, plan: Plan, units: range) -> list[int]:
        """The units of ``units`` this run has not swept yet (all of them without a run id)."""
        if self.sweep is None or not self.writable or self.full:
            return list(units)
        read = dict(zip(units, await self._manifests([plan.units[i] for i in units]), strict=True))
        unswept = [i for i, found in read.items() if found is None or found.run != self.sweep]
        self._read_before = {plan.units[i].ident: read[i] for i in unswept}
        return unswept

    async def manifest_before_sweep(self, unit: KeyRange) -> _Manifest | None:
        """The manifest ``unit`` had when this shard began (read once: :meth:`unswept` may have)."""
        if unit.ident in self._read_before:
            return self._read_before.pop(unit.ident)
        return await self.manifest(unit)

    def cursor(self, plan: Plan, units: range, clean: Callable[[], bool] = lambda: True) -> UnitCursor:
        """A lister's cursor; a unit it publishes while ``clean()`` is False is not marked swept
        by the run (a shard started again sweeps it again: its errors get another try)."""
        return UnitCursor(self, plan, [plan.units[i] for i in units], clean)

    async def settle(self, plan: Plan) -> int:
        """After a shard's sweep: once every unit has been swept (by this run, with a run id),
        drop what only the previous plan's units used, make the next run's plan if the units
        are out of balance, and drop run records a week old. Returns the listing requests made.

        Every shard checks; only a shard that sees the sweep complete does anything.
        """
        if not self.writable:
            return 0
        found = await self._manifests(plan.units)
        manifests = [manifest for manifest in found if manifest is not None]
        if len(manifests) < len(found) or any(self.sweep is not None and m.run != self.sweep for m in manifests):
            return 0  # some units not swept yet (other shards still running, or failed)
        pieces = [(part.range, part.count) for manifest in manifests for part in manifest.parts]
        counts = [sum(part.count for part in manifest.parts) for manifest in manifests]
        current = {unit.ident for unit in plan.units}
        for unit in plan.previous_units:
            if unit.ident not in current and (old := await self.manifest(unit)) is not None:
                await self.location.delete([p.name for p in old.parts if p.name] + [_manifest_name(unit)])
        if (new := next_plan(plan, pieces, counts)) is not None:
            logger.info("gc index: the next run's plan: %d units, %d before", len(new.units), len(plan.units))
            await self._create(_plan_name(new.generation), "plan", new.to_dict())
            await self._write_current(new.generation)
            if plan.generation > 0:  # and its claim, if a discovery made it
                await self.location.delete([_plan_name(plan.generation - 1), _claim_name(plan.generation - 1)])
        return await self._forget_old_runs() if self.run is not None else 0

    async def _forget_old_runs(self) -> int:
        """Delete run records older than :data:`RUN_RECORDS_KEPT`; the listing requests made."""
        old = datetime.now(timezone.utc) - RUN_RECORDS_KEPT
        names, requests = await self.location.list_older("runs/", old)
        await self.location.delete(names)
        return requests


class _UnitReader:
    """A unit's index entries, streamed in key order from its parts (or the previous plan's)."""

    def __init__(self, index: SweepIndex, plan: Plan, unit: KeyRange) -> None:
        self.index, self.plan, self.unit = index, plan, unit
        self.own: list[_Part] | None = None
        self._sources: list[_Part] = []
        self._lines: list[bytes] = []
        self._at = 0
        self._loaded = False
        self._broken = False

    async def load(self) -> None:
        """Read the manifests (small); parts are read when the listing reaches them."""
        self._loaded = True
        found = await self.index.manifest_before_sweep(self.unit)
        self.own = None if found is None else found.parts
        if self.index.full or not self.index.entries:
            return
        if self.own is not None:
            self._sources = list(self.own)
            return
        for previous in self.plan.previous_units:  # the unit is new since a rebalance
            if previous.overlaps(self.unit) and (old := await self.index.manifest(previous)) is not None:
                self._sources += [p for p in old.parts if p.range.overlaps(self.unit)]

    async def _next_line(self) -> bytes | None:
        while self._at >= len(self._lines):
            if not self._sources:
                return None
            part = self._sources.pop(0)
            self._lines, self._at = [], 0
            if part.name is None or part.sha256 is None or part.count == 0:
                continue
            try:
                self._lines = (await self.index.location.read_part(part.name, part.sha256)).splitlines()
            except IndexDamaged as exc:
                self.index.damaged(exc)
                self._broken = True
                self._sources = []
                return None
        self._at += 1
        return self._lines[self._at - 1]

    async def find(self, key: str) -> tuple[str, int, ObjectMetadata] | None:
        """The entry for ``key`` (keys asked in increasing order), or ``None``."""
        if not self._loaded:
            await self.load()
        while not self._broken:
            line = self._lines[self._at] if self._at < len(self._lines) else await self._peek()
            if line is None:
                return None
            try:
                found, etag, modified, metadata = _parse_line(line)
            except (ValueError, KeyError) as exc:
                self.index.damaged(IndexDamaged(f"{self.unit.ident}: unreadable line ({exc!r})"))
                self._broken = True
                return None
            if found > key:
                return None
            self._at += 1
            if found == key:
                return etag, modified, metadata
        return None

    async def _peek(self) -> bytes | None:
        line = await self._next_line()
        if line is not None:
            self._at -= 1
        return line


class _UnitWriter:
    """A unit's new index, written part by part, published by its manifest."""

    def __init__(self, index: SweepIndex, plan: Plan, unit: KeyRange, clean: Callable[[], bool]) -> None:
        self.index, self.plan, self.unit, self.clean = index, plan, unit, clean
        self.parts: list[_Part] = []
        self._lines: list[bytes] = []
        self._count = 0
        self._after = unit.after
        self._last: str | None = None

    async def add(self, key: str, known: tuple[str, int, ObjectMetadata] | None) -> None:
        if self._count >= self.plan.part_size:
            await self._flush(self._last)
        self._count += 1
        self._last = key
        if known is not None and self.index.entries:
            self._lines.append(_line(key, *known))

    async def _flush(self, upto: str | None) -> None:
        name = sha256 = None
        if self._lines:
            name = f"units/{self.unit.ident}/{self.index._token}-{len(self.parts)}.gz"
            sha256 = await self.index.location.write_part(name, b"".join(self._lines))
        self.parts.append(_Part(KeyRange(self._after, upto), self._count, name, sha256))
        self._after, self._lines, self._count = upto, [], 0

    async def publish(self, replaced: list[_Part] | None) -> None:
        """Write the last part and the manifest, then drop the parts of the manifest replaced."""
        await self._flush(self.unit.upto)
        swept_by = self.index.sweep if self.clean() else None
        body = {"range": self.unit.as_list(), "parts": [part.as_dict() for part in self.parts], "run": swept_by}
        await self.index.location.write_document(_manifest_name(self.unit), "unit", body)
        mine = {part.name for part in self.parts}
        await self.index.location.delete([p.name for p in replaced or [] if p.name and p.name not in mine])


class UnitCursor:
    """One lister's walk through its units, in key order: recall entries, record the new index."""

    def __init__(self, index: SweepIndex, plan: Plan, units: list[KeyRange], clean: Callable[[], bool]) -> None:
        self.index, self.plan, self.units, self.clean = index, plan, units, clean
        self._reading = 0
        self._readers: dict[int, _UnitReader] = {}
        self._writing = 0
        self._writer = _UnitWriter(index, plan, units[0], clean)

    @property
    def range(self) -> KeyRange:
        return KeyRange(self.units[0].after, self.units[-1].upto)

    def _reader_for(self, position: int) -> _UnitReader:
        if position not in self._readers:
            self._readers[position] = _UnitReader(self.index, self.plan, self.units[position])
        return self._readers[position]

    async def recall(self, key: str, etag: str | None, modified: datetime | None) -> ObjectMetadata | None:
        """The metadata the index holds for this very write of ``key``, or ``None`` (read it)."""
        while self._reading < len(self.units) - 1 and key not in self.units[self._reading]:
            self._reading += 1
        if self.index.full or not self.index.entries or etag is None:
            return None
        found = await self._reader_for(self._reading).find(key)
        if found is None or found[0] != etag or found[1] != _millis(modified):
            return None
        return found[2]

    async def record(
        self, key: str, etag: str | None, modified: datetime | None, metadata: ObjectMetadata | None
    ) -> None:
        """Count ``key`` in its unit and, with ``metadata`` (still current), index it."""
        while self._writing < len(self.units) - 1 and key not in self.units[self._writing]:
            await self._publish_one()
        known = None if metadata is None or etag is None else (etag, _millis(modified), metadata)
        await self._writer.add(key, known)

    async def _publish_one(self) -> None:
        reader = self._reader_for(self._writing)
        if not reader._loaded:
            await reader.load()
        if self.index.writable:
            await self._writer.publish(reader.own)
        self._readers.pop(self._writing, None)
        self._writing += 1
        if self._writing < len(self.units):
            self._writer = _UnitWriter(self.index, self.plan, self.units[self._writing], self.clean)

    async def close(self) -> None:
        """The listing reached the end of the range: publish every unit not yet published."""
        while self._writing < len(self.units):
            await self._publish_one()
