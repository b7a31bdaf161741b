"""Concurrency: many writers, readers and clears at once; writers killed mid-``set``; the GC
against live writers. On the local disk (the embedded default), on S3 (moto) and on Azure (Azurite).

Worker processes come from a forkserver that imports the package once (``tests/_workers.py``),
so a process starts in milliseconds; they reach moto, which runs in the pytest process, and Azurite over HTTP.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from airflow.sdk.state import TaskScope

from objstore_backend.backend import ObjectStoreBackend
from objstore_backend.config import StoreSettings
from objstore_backend.gc import GCOptions, _Sweep, run_gc
from objstore_backend.layout import object_path
from objstore_backend.transports import CHANGED
from tests import _workers

PAST = datetime.now(timezone.utc) - timedelta(minutes=1)
FUTURE = datetime.now(timezone.utc) + timedelta(days=1)


@pytest.fixture(scope="module")
def forkserver() -> Any:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests._workers", "adlfs", "azure.storage.blob"])
    return context


def _cloud_location(where: str, request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    if where == "azure":
        return f"abfs://{request.getfixturevalue('azure_container')}/state", request.getfixturevalue("azure_options")
    return f"s3://{request.getfixturevalue('s3_bucket')}/state", request.getfixturevalue("s3_options")


@pytest.fixture(params=["local", "s3", "azure"])
def location(request: pytest.FixtureRequest, tmp_path: Any) -> tuple[str, dict[str, Any]]:
    if request.param == "local":
        return str(tmp_path / "state"), {}
    return _cloud_location(request.param, request)


def test_threads_and_processes_write_read_and_clear_the_same_keys(
    location: tuple[str, dict[str, Any]], forkserver: Any
) -> None:
    """3 threads sharing one backend (as the API server's threads do) and 3 processes, for 2 s:
    every read is whole and one of the values written; every clear leaves nothing of its scope
    and nothing missing next to it (task ``t1`` against ``t10``); nothing is lost at the end."""
    url, options = location
    backend = ObjectStoreBackend(StoreSettings(path=url, storage_options=options))
    for key in _workers.SHARED_KEYS:
        backend.set(_workers.SHARED, key, _workers.make_value(99, 0, 10))
    seconds = 1.5
    with ProcessPoolExecutor(3, mp_context=forkserver) as processes, ThreadPoolExecutor(3) as threads:
        futures = [processes.submit(_workers.hammer, url, options, w, seconds, w) for w in range(3)]
        futures += [threads.submit(_workers.hammer, url, options, w, seconds, w, backend) for w in range(3, 6)]
        results = [future.result(timeout=60) for future in futures]
    totals = Counter()
    for result in results:
        totals.update(result["counts"])
        _, neighbour = _workers.owned_scopes(result["worker"])
        assert backend.get(neighbour, "k") == result["neighbour"]  # the last value each wrote is there
    for key in _workers.SHARED_KEYS:
        assert _workers.check_value(backend.get(_workers.SHARED, key))["writer"] in range(100)
    assert totals["set"] > 30 and totals["get"] > 5 and totals["clear"] > 5, totals


@pytest.mark.parametrize("where", ["local", "s3", "azure"])
def test_a_writer_killed_mid_set_never_leaves_a_torn_value(
    where: str, forkserver: Any, request: pytest.FixtureRequest, tmp_path: Any
) -> None:
    """kill -9 a process rewriting one big key, at random moments: the key always reads whole,
    as the last value a ``set`` returned for or the one in flight; no temporary file is listed."""
    if where == "local":
        url, options, size, kills = str(tmp_path / "state"), {}, 4_000_000, 6
    else:
        (url, options), size, kills = _cloud_location(where, request), 2_000_000, 4
    backend = ObjectStoreBackend(StoreSettings(path=url, storage_options=options))
    scope = TaskScope("killed", "run", "writer")
    progress = forkserver.Value("q", 0)
    rng = random.Random(7)
    for _ in range(kills):
        started = progress.value
        writer = forkserver.Process(target=_workers.write_forever, args=(url, options, progress, size))
        writer.start()
        deadline = time.monotonic() + 30
        while progress.value == started and time.monotonic() < deadline:  # at least one set returned
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.25))
        writer.kill()
        writer.join(timeout=10)
        assert writer.exitcode == -9
        returned = progress.value
        seq = _workers.check_big_value(backend.get(scope, "k"))
        assert seq in (returned - 1, returned), (seq, returned)
        assert [o.path for o in backend.store.iter_objects()] == [object_path(scope, "k")]
    if where == "local":  # a killed writer leaves at most its temp file, which nothing lists or reads
        directory = os.path.dirname(backend.store.full_path(object_path(scope, "k")))
        leftovers = [name for name in os.listdir(directory) if name != "k"]
        assert all(name.startswith("~tmp-") for name in leftovers) and len(leftovers) <= kills
        # two hours on, the GC takes them away, and nothing else
        report = run_gc(backend.store, GCOptions(now=datetime.now(timezone.utc) + timedelta(hours=2)))
        assert report.abandoned_temp_files == len(leftovers) and os.listdir(directory) == ["k"]
        assert _workers.check_big_value(backend.get(scope, "k")) == seq


# -- the GC against live writers ------------------------------------------------------------------


def _gc_location(where: str, request: pytest.FixtureRequest, tmp_path: Any) -> tuple[ObjectStoreBackend, GCOptions]:
    if where == "local":
        return ObjectStoreBackend(StoreSettings(path=str(tmp_path / "state"))), GCOptions(concurrency=8)
    url, options = _cloud_location(where, request)
    backend = ObjectStoreBackend(StoreSettings(path=url, storage_options=options))
    # moto ignores the ETag condition inside DeleteObjects (AWS honours it): one conditional delete per key;
    # Azurite honours it inside blob batches
    return backend, GCOptions(concurrency=8, batched_deletes=where == "azure")


@pytest.mark.parametrize("compression", ["none", "gzip"])
@pytest.mark.parametrize("where", ["local", "s3", "azure"])
def test_a_key_rewritten_with_the_same_value_between_check_and_delete_survives(
    where: str, compression: str, request: pytest.FixtureRequest, tmp_path: Any
) -> None:
    """The S3 ETag is the body's MD5: a same-value rewrite with a fresh expiry kept the ETag the GC
    checked, and its If-Match delete went through. Every write now has bytes, hence an ETag, of its own."""
    backend, options = _gc_location(where, request, tmp_path)
    if compression == "gzip":
        backend = ObjectStoreBackend(StoreSettings(**{**backend.settings.__dict__, "compression": "gzip"}))
    scope = TaskScope("d", "r", "heartbeat")
    backend.set(scope, "k", '"running"', expires_at=PAST)
    original_delete = _Sweep.delete

    async def rewrite_then_delete(self: _Sweep, fs: Any, due: list) -> set[str]:
        await backend.aset(scope, "k", '"running"', expires_at=FUTURE)  # same value, fresh expiry
        return await original_delete(self, fs, due)

    try:
        _Sweep.delete = rewrite_then_delete  # type: ignore[method-assign]
        report = run_gc(backend.store, options)
    finally:
        _Sweep.delete = original_delete  # type: ignore[method-assign]
    assert backend.get(scope, "k") == '"running"'
    assert (report.expired, report.deleted, report.kept, report.errors) == (1, 0, 1, 0)


def test_local_conditional_delete_never_hides_a_live_key_from_readers(tmp_path: Any) -> None:
    """The GC's delete of a stale version, racing a writer, never makes the key vanish for a reader."""
    backend = ObjectStoreBackend(StoreSettings(path=str(tmp_path / "state")))
    scope = TaskScope("d", "r", "t")
    backend.set(scope, "k", '"v0"')
    store = backend.store
    [listed] = list(store.iter_objects())
    stale = listed.version
    stop = threading.Event()
    seen: Counter[str] = Counter()

    def write() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            backend.set(scope, "k", f'"v{n}"')

    def read() -> None:
        while not stop.is_set():
            seen["missing" if backend.get(scope, "k") is None else "present"] += 1

    workers = [threading.Thread(target=write), threading.Thread(target=read)]
    workers[0].start()
    while backend.get(scope, "k") == '"v0"':  # the version checked is gone: any delete would be wrong
        time.sleep(0.001)
    workers[1].start()
    outcomes: Counter[str] = Counter()
    deadline = time.monotonic() + 1.0
    try:
        while time.monotonic() < deadline:
            failures = store._run(store.transport.delete_batch, [(store.full_path(listed.path), stale)])
            outcomes[failures[0][1] if failures else "deleted"] += 1
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert outcomes == {CHANGED: sum(outcomes.values())} and seen["missing"] == 0, (outcomes, seen)
    assert seen["present"] > 100


def test_local_versions_tell_writes_apart_when_inode_mtime_and_size_repeat(tmp_path: Any) -> None:
    """A freed inode is soon reused, and coarse file clocks (whole seconds on some filesystems) can
    give two quick writes of the same size the same inode, mtime and size: the write nonce differs."""
    backend = ObjectStoreBackend(StoreSettings(path=str(tmp_path / "state")))
    scope = TaskScope("d", "r", "t")
    backend.set(scope, "k", '"a"')
    path = backend.store.full_path(object_path(scope, "k"))
    first = os.stat(path)
    checked = backend.store.transport._version(path, first)
    backend.set(scope, "k", '"b"')  # same size
    assert backend.store.transport._version(path, first) != checked  # as if inode and times were reused
    failures = backend.store._run(backend.store.transport.delete_batch, [(path, checked)])
    assert failures == [(path, CHANGED)] and backend.get(scope, "k") == '"b"'


@pytest.mark.parametrize("where", ["local", "s3", "azure"])
def test_gc_against_live_writers_loses_no_live_key(where: str, request: pytest.FixtureRequest, tmp_path: Any) -> None:
    """Writers rewrite keys with a 0.4 s retention (half the time the same value), half the time
    just after the expiry, so keys keep expiring and coming back, while the GC sweeps in a loop
    with its check-to-delete window widened. A key a writer wrote and whose expiry has not passed must
    read back: none may be lost. The GC must have deleted expired keys and kept rewritten ones."""
    backend, options = _gc_location(where, request, tmp_path)
    retention, stop = 0.4, threading.Event()
    lost: list[str] = []
    writes = Counter()

    def writer(index: int) -> None:
        rng = random.Random(index)
        scope, value = TaskScope("gc", "run", f"w{index}"), '"start"'
        while not stop.is_set():
            key = rng.choice("abc")
            if rng.random() < 0.5:
                value = f'"{index}-{writes[index]}"'
            expires = datetime.now(timezone.utc) + timedelta(seconds=retention)
            backend.set(scope, key, value, expires_at=expires)
            writes[index] += 1
            # half the time come back just after the expiry, when the GC may be deleting the key
            time.sleep(rng.uniform(0, retention) if rng.random() < 0.5 else retention + rng.uniform(0, 0.15))
            # read only while surely live: a None now is a live key the GC deleted
            if datetime.now(timezone.utc) < expires - timedelta(seconds=0.1):
                got = backend.get(scope, key)
                if got != value:
                    lost.append(f"{scope.task_id}/{key}: wrote {value}, read {got}")

    original_delete = _Sweep.delete

    async def slow_delete(self: _Sweep, fs: Any, due: list) -> set[str]:
        await asyncio.sleep(0.15)  # widen the window between the GC's check and its delete
        return await original_delete(self, fs, due)

    totals: Counter[str] = Counter()
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    _Sweep.delete = slow_delete  # type: ignore[method-assign]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            report = run_gc(backend.store, options)
            totals.update({"deleted": report.deleted, "kept": report.kept, "errors": report.errors, "runs": 1})
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        _Sweep.delete = original_delete  # type: ignore[method-assign]
    print(f"\nGC against live writers ({where}): {dict(totals)}, writes {sum(writes.values())}")
    assert lost == [], lost
    assert totals["errors"] == 0 and totals["deleted"] > 0 and totals["kept"] > 0, totals


# -- short-lived event loops --------------------------------------------------------------------------


@pytest.mark.parametrize("cloud", ["s3", "gcs"])
def test_short_lived_event_loops_leave_no_client_behind(
    cloud: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncio.run per call (and loops closed by hand): every per-loop filesystem is closed and freed."""
    import gc
    import logging
    import warnings
    import weakref

    scheme = {"s3": "s3", "gcs": "gs"}[cloud]
    bucket, options = request.getfixturevalue(f"{cloud}_bucket"), request.getfixturevalue(f"{cloud}_options")
    backend = ObjectStoreBackend(StoreSettings(path=f"{scheme}://{bucket}/state", storage_options=options))
    scope = TaskScope("d", "r", "t")
    backend.set(scope, "k", '"v"')
    loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
    filesystems: weakref.WeakSet[Any] = weakref.WeakSet()

    async def one_call() -> str | None:
        loops.add(asyncio.get_running_loop())
        value = await backend.aget(scope, "k")
        filesystems.add(await backend.store._bound_fs())
        return value

    def by_hand() -> str | None:  # a loop closed without shutdown_asyncgens()
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(one_call())
        finally:
            loop.close()

    runs = {"s3": 12, "gcs": 40}[cloud]  # a new S3 client costs about 0.5 s (botocore's models)
    caplog.set_level(logging.WARNING)  # asyncio logs aiohttp's unclosed sessions as errors
    warned: list[str] = []  # the text only: a warning keeps its source object (and its loop) alive
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *_, **__: warned.append(str(message))
        answers = [asyncio.run(one_call()) for _ in range(runs)] + [by_hand() for _ in range(runs // 4)]
        answers.append(asyncio.run(one_call()))  # forgets the loops closed by hand
        gc.collect()
    assert answers == ['"v"'] * (runs + runs // 4 + 1)
    assert (len(filesystems), len(loops)) == (0, 0)
    messages = warned + [r.getMessage() for r in caplog.records]
    assert [m for m in messages if "Unclosed client session" in m or "Unclosed connector" in m] == []
