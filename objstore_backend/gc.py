"""The GC sweep: expired objects out, live state untouched, at bucket scale.

Nothing in Airflow 3.3 cleans a custom backend (``airflow state-store clean`` skips it, and no
one calls ``cleanup()``), so this sweep is what reclaims space. It streams the listing a page
at a time (memory stays flat whatever the bucket holds) while the next page is fetched, reads
each object's expiry (from the listing on GCS; with HEADs, ``concurrency`` in flight, on S3),
and deletes in batches with a condition on the version it checked, so a key rewritten between
the check and the delete survives. Where the filesystem has no such condition (sftp, ftp, hdfs,
smb, webdav...) it refuses to run, unless told every writer is stopped (``writers_stopped``).

Never deleted: unexpired and never-expiring objects, objects that do not parse as this
layout (foreign), unreadable objects, and offload objects unless a :class:`Reconciler` proves
Airflow no longer references them and they are older than a grace period.
On the local disk it also removes the temp files of writers killed mid-write, once an hour old.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from objstore_backend.errors import MetadataDBError
from objstore_backend.gc_index import SweepIndex, UnitCursor
from objstore_backend.layout import Location
from objstore_backend.scan import ScanCounts, Scanned, scan_pages
from objstore_backend.store import ObjectStore
from objstore_backend.transports import CHANGED, GONE

__all__ = ["GCOptions", "GCReport", "Reconciler", "default_run_id", "parse_shard", "run_gc"]

logger = logging.getLogger(__name__)

_MAX_ERROR_SAMPLES = 10
#: A write's temp file untouched this long belongs to a writer that was killed.
ABANDONED_AFTER = timedelta(hours=1)


class Reconciler(Protocol):
    """Tells whether Airflow still references an offload object (see :mod:`objstore_backend.reconcile`)."""

    def is_referenced(self, location: Location, path: str) -> bool:
        """Raises :class:`~objstore_backend.errors.MetadataDBError` when it cannot tell."""
        ...


@dataclass(frozen=True)
class GCOptions:
    dry_run: bool = False
    concurrency: int = 32
    shard: tuple[int, int] = (0, 1)
    #: Listers on disjoint key ranges at once, within this shard.
    list_concurrency: int = 4
    #: Read every object's metadata again, whatever the index knows (the index is rewritten).
    full: bool = False
    #: Where the index lives (any fsspec URL); ``None``: under the base's reserved prefix.
    index_url: str | None = None
    offload_grace: timedelta = timedelta(hours=1)
    #: False: one conditional DeleteObject per key, for S3-compatible servers that ignore
    #: the ETag condition inside DeleteObjects (AWS S3 honours it).
    batched_deletes: bool = True
    #: Every writer of the store is stopped for the sweep: run even where deletes cannot be
    #: conditional (see :meth:`~objstore_backend.store.ObjectStore.check_guarded`).
    writers_stopped: bool = False
    reconciler: Reconciler | None = None
    #: The run this shard belongs to: the shards of one run sweep by one plan, and a shard
    #: started again skips the units its run has swept (see :func:`default_run_id`).
    run_id: str | None = None
    now: datetime | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.list_concurrency < 1:
            raise ValueError(f"list concurrency must be >= 1, got {self.list_concurrency}")
        index, count = self.shard
        if not 0 <= index < count:
            raise ValueError(f"shard must be I/N with 0 <= I < N, got {index}/{count}")


@dataclass
class GCReport:
    """What a sweep saw and did; ``errors`` > 0 means the job failed."""

    scanned: int = 0
    expired: int = 0
    deleted: int = 0
    kept: int = 0  # due for deletion, but rewritten (or deleted) since it was checked
    live: int = 0
    never_expire: int = 0
    offload: int = 0  # offload objects left alone (referenced, young, or no reconciler)
    offload_orphans: int = 0
    offload_unchecked: int = 0  # kept: the reconciler could not read Airflow's DB (counted in errors)
    foreign: int = 0
    unreadable: int = 0
    abandoned_temp_files: int = 0  # of writers killed mid-write (local disk): removed, or counted in a dry run
    errors: int = 0
    bytes_deleted: int = 0
    list_requests: int = 0  # listing pages requested (discovery included)
    metadata_reads: int = 0  # HEADs (S3) or header reads (local disk)
    index_hits: int = 0  # objects decided from the index, not read again
    index_damaged: int = 0  # index documents or parts found damaged or foreign: full pass there
    ranges: int = 0  # key ranges this shard listed (one lister each)
    units_skipped: int = 0  # units its run had swept already (a shard started again)
    seconds: float = 0.0
    dry_run: bool = False
    shard: str = "0/1"
    error_samples: list[str] = field(default_factory=list)
    would_delete: list[str] = field(default_factory=list)  # dry run only, first few

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _error(self, message: str) -> None:
        self.errors += 1
        logger.warning("gc: %s", message)
        if len(self.error_samples) < _MAX_ERROR_SAMPLES:
            self.error_samples.append(message)


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)``; Kubernetes Indexed Jobs give I as ``$JOB_COMPLETION_INDEX``."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError as exc:
        raise ValueError(f"shard must look like I/N (e.g. 0/4), got {text!r}") from exc
    GCOptions(shard=(index, count))  # range check
    return index, count


@dataclass
class _Sweep:
    """One run's state: the store, the options, the report, and a progress callback."""

    store: ObjectStore
    options: GCOptions
    report: GCReport
    progress: Callable[[int], None]
    index: SweepIndex
    now: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    db_failed: bool = False  # Airflow's DB could not be read: reconciliation is off for this sweep
    counts: ScanCounts = field(default_factory=ScanCounts)
    #: One reconciler call at a time: its cache is not shared across threads.
    reconciling: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def offload_is_orphan(self, found: Scanned) -> bool:
        reconciler, modified = self.options.reconciler, found.entry.modified
        if reconciler is None or modified is None or found.location is None:
            return False
        if self.now - modified < self.options.offload_grace:
            return False  # may be an in-flight set whose DB row is not written yet
        if self.db_failed:  # one error, not one per object, and no wait on a dead DB per object
            self.report.offload_unchecked += 1
            return False
        try:
            async with self.reconciling:
                return not await asyncio.to_thread(reconciler.is_referenced, found.location, found.entry.path)
        except MetadataDBError as exc:
            self.db_failed = True
            self.report.offload_unchecked += 1
            self.report._error(f"{exc}; offload objects are kept unchecked for the rest of this sweep")
            return False

    async def is_due(self, found: Scanned) -> bool:
        """Count one object; True if it is due for deletion."""
        report, metadata = self.report, found.metadata
        if found.location is None:
            report.foreign += 1
            logger.debug("gc: foreign object %s", found.entry.path)
            return False
        if found.unreadable is not None:
            report.unreadable += 1
            logger.info("gc: %s", found.unreadable)
            return False
        if found.error is not None:
            report._error(found.error)
            return False
        if metadata is None:  # deleted since listed
            return False
        if metadata.mode == "offload" and not metadata.adopted:
            if await self.offload_is_orphan(found):
                report.offload_orphans += 1
                return True
            report.offload += 1
            return False
        if metadata.expires_at is None:
            report.never_expire += 1
            return False
        if metadata.is_expired(self.now):
            report.expired += 1
            return True
        report.live += 1
        return False

    async def delete(self, fs: Any, due: list[Scanned]) -> set[str]:
        """Delete what is due; the full paths of the objects that are gone or changed since."""
        report = self.report
        if not due:
            return set()
        if self.options.dry_run:
            for found in due:
                logger.info("gc: would delete %s", found.entry.path)
                if len(report.would_delete) < 100:
                    report.would_delete.append(found.entry.path)
            return set()
        failures = dict(
            await self.store.transport.delete_batch(
                fs,
                [(found.full_path, found.entry.version) for found in due],
                batched=self.options.batched_deletes,
                concurrency=self.options.concurrency,
            )
        )
        outdated = set()
        for found in due:
            reason = failures.get(found.full_path)
            if reason in (None, CHANGED, GONE):
                outdated.add(found.full_path)
            if reason is None:
                report.deleted += 1
                report.bytes_deleted += found.entry.size
                logger.debug("gc: deleted %s", found.entry.path)
            elif reason in (CHANGED, GONE):
                report.kept += 1
                logger.debug("gc: kept %s (%s)", found.entry.path, reason)
            else:
                report._error(f"deleting {found.entry.path}: {reason}")
        return outdated

    async def sweep_range(self, fs: Any, cursor: UnitCursor) -> None:
        """List one key range and sweep it, recalling and recording the index as it goes."""
        pages = scan_pages(
            self.store,
            fs,
            concurrency=self.options.concurrency,
            key_range=cursor.range,
            recall=cursor.recall,
            counts=self.counts,
        )
        try:
            async for page in pages:
                due = [found for found in page if await self.is_due(found)]
                self.report.scanned += len(page)
                outdated = await self.delete(fs, due)
                for found in page:
                    current = found.metadata if found.full_path not in outdated else None
                    await cursor.record(found.entry.path, found.entry.version, found.entry.modified, current)
                self.progress(len(page))
            await cursor.close()
        except OSError as exc:  # this range's listing (or its index) failed: the other ranges go on
            self.report._error(f"listing {self.store.display_path(cursor.range.after or '')}...: {exc!r}")

    async def run(self, fs: Any) -> None:
        plan, discovery_requests = await self.index.plan(self.store, fs, self.options.shard[1])
        self.counts.list_requests += discovery_requests
        mine = plan.shard_units(*self.options.shard)
        units = await self.index.unswept(plan, mine)
        self.report.units_skipped = len(mine) - len(units)
        stretches = _stretches(units)  # one, unless a shard started again skips swept units
        per_stretch = max(1, self.options.list_concurrency // max(len(stretches), 1))
        listers = [group for stretch in stretches for group in plan.lister_groups(stretch, per_stretch)]
        self.report.ranges = len(listers)

        def clean() -> bool:  # units swept after an error are swept again by a retry of this shard
            return self.report.errors == 0

        await asyncio.gather(*(self.sweep_range(fs, self.index.cursor(plan, group, clean)) for group in listers))
        if not self.report.errors:
            self.counts.list_requests += await self.index.settle(plan)
        if self.options.shard[0] == 0:  # one walk of the whole store, not one per shard
            self.report.abandoned_temp_files = await self.store.transport.remove_abandoned(
                fs, self.store.full_path(""), self.now - ABANDONED_AFTER, dry_run=self.options.dry_run
            )


def _stretches(units: list[int]) -> list[range]:
    """Unit numbers as runs of consecutive ones (each listed from its start to its end)."""
    stretches: list[range] = []
    for unit in units:
        if stretches and stretches[-1].stop == unit:
            stretches[-1] = range(stretches[-1].start, unit + 1)
        else:
            stretches.append(range(unit, unit + 1))
    return stretches


def default_run_id(environ: Mapping[str, str] | None = None, hostname: str | None = None) -> str | None:
    """The run a shard belongs to when none is given: ``OBJSTORE_BACKEND_RUN_ID``, else, in a
    Kubernetes Indexed Job (``JOB_COMPLETION_INDEX`` set), the Job's name, which Kubernetes
    makes the pod's hostname ``<job name>-<index>`` (a CronJob names each run's Job anew)."""
    environ = os.environ if environ is None else environ
    if environ.get("OBJSTORE_BACKEND_RUN_ID"):
        return environ["OBJSTORE_BACKEND_RUN_ID"]
    index = environ.get("JOB_COMPLETION_INDEX")
    hostname = socket.gethostname() if hostname is None else hostname
    if index and hostname.endswith(f"-{index}") and len(hostname) > len(index) + 1:
        return hostname[: -len(index) - 1]
    return None


def run_gc(
    store: ObjectStore, options: GCOptions | None = None, progress: Callable[[int], None] | None = None
) -> GCReport:
    """Sweep the store once; ``progress`` is called with the number of objects each page scanned.

    Raises :class:`~objstore_backend.errors.UnguardedStoreError`, before any request, where the
    store cannot delete conditionally (a dry run deletes nothing: it runs anywhere).
    """
    options = options or GCOptions()
    if not options.dry_run:
        store.check_guarded("gc", writers_stopped=options.writers_stopped)
    index, count = options.shard
    report = GCReport(dry_run=options.dry_run, shard=f"{index}/{count}")

    def damaged(message: str) -> None:
        report.index_damaged += 1
        if len(report.error_samples) < _MAX_ERROR_SAMPLES:
            report.error_samples.append(f"index (not an error, a full pass there): {message}")

    sweep_index = SweepIndex.for_store(
        store,
        options.index_url,
        full=options.full,
        writable=not options.dry_run,
        on_damage=damaged,
        run=options.run_id,
    )
    sweep = _Sweep(store, options, report, progress or (lambda _: None), sweep_index)
    if options.now is not None:
        sweep.now = options.now
    started = time.monotonic()
    try:
        store._run(sweep.run)
    except OSError as exc:  # the plan or the discovery failed: nothing more can be done
        report._error(f"listing {store.url}: {exc!r}")
    report.list_requests = sweep.counts.list_requests
    report.metadata_reads = sweep.counts.metadata_reads
    report.index_hits = sweep.counts.index_hits
    report.seconds = round(time.monotonic() - started, 3)
    logger.info("gc: %s", {k: v for k, v in report.as_dict().items() if k not in ("would_delete",)})
    return report
