"""The local filesystem store (the embedded default): atomic writes, same expiry semantics."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from airflow.sdk.state import TaskScope

from objstore_backend.backend import ObjectStoreBackend
from objstore_backend.config import StoreSettings
from objstore_backend.gc import GCOptions, run_gc

TASK = TaskScope("d", "r", "t")


def test_readers_never_see_half_a_value(tmp_path: Path) -> None:
    backend = ObjectStoreBackend(StoreSettings(path=str(tmp_path)))
    values = ['{"v": "%s"}' % (letter * 2_000_000) for letter in "ab"]
    backend.set(TASK, "k", values[0])
    stop = threading.Event()
    writes = 0

    def writer() -> None:
        nonlocal writes
        while not stop.is_set():
            backend.set(TASK, "k", values[writes % 2])
            writes += 1

    thread = threading.Thread(target=writer)
    thread.start()
    reads, deadline = 0, time.monotonic() + 2
    try:
        while time.monotonic() < deadline:
            assert backend.get(TASK, "k") in values
            reads += 1
    finally:
        stop.set()
        thread.join()
    assert reads > 20 and writes > 20
    # no temporary file is left behind
    directory = tmp_path / "task" / "d" / "r" / "t" / "-1"
    assert os.listdir(directory) == ["k"]


def test_expiry_works_as_on_s3(tmp_path: Path) -> None:
    backend = ObjectStoreBackend(StoreSettings(path=str(tmp_path)))
    backend.set(TASK, "old", "1", expires_at=datetime.now(timezone.utc) - timedelta(seconds=1))
    backend.set(TASK, "new", "2", expires_at=datetime.now(timezone.utc) + timedelta(minutes=1))
    assert backend.get(TASK, "old") is None and backend.get(TASK, "new") == "2"
    assert backend.store.head("task/d/r/t/-1/new").expires_at > datetime.now(timezone.utc)


def test_the_gc_removes_temp_files_of_killed_writers_once_an_hour_old(tmp_path: Path) -> None:
    backend = ObjectStoreBackend(StoreSettings(path=str(tmp_path)))
    backend.set(TASK, "k", "1")
    directory = tmp_path / "task" / "d" / "r" / "t" / "-1"
    two_hours_ago = time.time() - 7200
    for name in ("~tmp-stale", "~gc-stale"):  # a killed writer's temp file; a killed GC's grave
        (directory / name).write_bytes(b"partial")
        os.utime(directory / name, (two_hours_ago, two_hours_ago))
    (directory / "~tmp-fresh").write_bytes(b"being written")

    dry = run_gc(backend.store, GCOptions(dry_run=True))
    assert dry.abandoned_temp_files == 1 and (directory / "~tmp-stale").exists()
    assert run_gc(backend.store, GCOptions(shard=(1, 2))).abandoned_temp_files == 0  # shard 0's job

    report = run_gc(backend.store)
    assert report.abandoned_temp_files == 1 and report.errors == 0
    assert sorted(os.listdir(directory)) == ["k", "~gc-stale", "~tmp-fresh"]  # the grave may hold a live value
    assert backend.get(TASK, "k") == "1"
