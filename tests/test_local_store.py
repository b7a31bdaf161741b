"""The local filesystem store (the embedded default): atomic writes, same expiry semantics."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from airflow.sdk.state import AssetScope, TaskScope

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


def _directories(root: Path) -> list[str]:
    """The state's directories (not the GC's index under its reserved ``~`` prefix)."""
    found = (p.relative_to(root) for p in root.rglob("*") if p.is_dir())
    return sorted(str(path) for path in found if not path.parts[0].startswith("~"))


def test_directories_go_when_delete_clear_or_the_gc_empties_them(tmp_path: Path) -> None:
    backend = ObjectStoreBackend(StoreSettings(path=str(tmp_path)))
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    backend.set(TaskScope("d", "r1", "t"), "k", "1")
    backend.delete(TaskScope("d", "r1", "t"), "k")
    assert _directories(tmp_path) == []  # down to the base, which stays
    for index in (-1, 0, 1):
        backend.set(TaskScope("d", "r2", "t", index), "k", "1")
    backend.set(TaskScope("d", "r2", "other"), "k", "1")
    backend.clear(TaskScope("d", "r2", "t"), all_map_indices=True)
    assert _directories(tmp_path) == ["task", "task/d", "task/d/r2", "task/d/r2/other", "task/d/r2/other/-1"]
    backend.set(TaskScope("d", "r3", "t", 4), "k", "1", expires_at=past)
    backend.set(AssetScope(name="a"), "k", "1", expires_at=past)
    (tmp_path / "task" / "left" / "empty").mkdir(parents=True)  # by a version that left them behind
    report = run_gc(backend.store)
    assert report.deleted == 2 and _directories(tmp_path) == _directories(tmp_path) == [
        "task",
        "task/d",
        "task/d/r2",
        "task/d/r2/other",
        "task/d/r2/other/-1",
    ]
    assert backend.get(TaskScope("d", "r2", "other"), "k") == "1"


def test_writers_never_lose_their_directory_to_a_concurrent_delete(tmp_path: Path) -> None:
    """Threads write, read back and delete keys in the same directories, so that each delete may
    remove a directory (and its parents) another writer is about to write into."""
    backend = ObjectStoreBackend(StoreSettings(path=str(tmp_path)))
    failures: list[BaseException] = []
    rounds = 0

    def writer(number: int) -> None:
        """Even writers share one map index's directory and delete; odd ones clear their own."""
        nonlocal rounds
        scope, key = TaskScope("d", "r", "t", -1 if number % 2 == 0 else number), f"k{number}"
        try:
            for i in range(300):
                backend.set(scope, key, str(i))
                assert backend.get(scope, key) == str(i)
                backend.delete(scope, key) if number % 2 == 0 else backend.clear(scope)
                rounds += 1
        except BaseException as exc:  # reported below, with the others
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == [] and rounds == 8 * 300
    assert _directories(tmp_path) == []
