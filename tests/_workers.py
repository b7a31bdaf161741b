"""Code run in worker processes by tests/test_concurrency.py (importable by a forkserver child).

Values carry their own checksum, so a reader can tell a whole value from a torn or mixed one.
"""

from __future__ import annotations

import hashlib
import random
import time
from typing import Any

import orjson
from airflow.sdk.state import AssetScope, TaskScope

from objstore_backend.backend import ObjectStoreBackend
from objstore_backend.config import StoreSettings
from objstore_backend.layout import scope_prefix

SHARED = AssetScope(name="shared")
SHARED_KEYS = ("s0", "s1", "s2")


def make_value(writer: int, seq: int, size: int) -> str:
    blob = chr(ord("a") + seq % 26) * size
    digest = hashlib.sha256(f"{writer}/{seq}/{blob}".encode()).hexdigest()
    return orjson.dumps({"writer": writer, "seq": seq, "blob": blob, "sha": digest}).decode()


def check_value(text: str | None) -> dict[str, Any]:
    """The value's fields if it is whole; raises AssertionError if torn, mixed or missing."""
    assert text is not None, "a key that was written reads as missing"
    document = orjson.loads(text)
    digest = hashlib.sha256(f"{document['writer']}/{document['seq']}/{document['blob']}".encode()).hexdigest()
    assert digest == document["sha"], f"torn or mixed value: writer {document['writer']} seq {document['seq']}"
    return document


def owned_scopes(worker: int) -> tuple[list[TaskScope], TaskScope]:
    """A worker's scopes: two map indices of task ``t{w}`` (it clears them), and its neighbour
    ``t{w}0`` (same prefix plus a character: a clear of ``t{w}`` must never reach it)."""
    return [TaskScope("d", "r", f"t{worker}", i) for i in (1, 10)], TaskScope("d", "r", f"t{worker}0", 1)


def hammer(url: str, options: dict[str, Any], worker: int, seconds: float, seed: int, backend: Any = None) -> dict:
    """Write, read and clear for ``seconds``; every read is checked. Returns counts and last values."""
    backend = backend or ObjectStoreBackend(StoreSettings(path=url, storage_options=options))
    rng = random.Random(seed)
    cleared, neighbour = owned_scopes(worker)
    counts = {"set": 0, "get": 0, "clear": 0}
    last_neighbour = None
    seq = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seq += 1
        op = rng.random()
        if op < 0.3:
            backend.set(SHARED, rng.choice(SHARED_KEYS), make_value(worker, seq, rng.choice((10, 3000))))
            counts["set"] += 1
        elif op < 0.6:
            check_value(backend.get(SHARED, rng.choice(SHARED_KEYS)))  # written before the workers start
            counts["get"] += 1
        elif op < 0.8:
            for scope in cleared:
                backend.set(scope, "k", make_value(worker, seq, 100))
            last_neighbour = make_value(worker, seq, 100)
            backend.set(neighbour, "k", last_neighbour)
            counts["set"] += 3
        else:
            backend.clear(cleared[0], all_map_indices=True)
            counts["clear"] += 1
            left = [o.path for o in backend.store.iter_objects(scope_prefix(cleared[0], all_map_indices=True))]
            assert left == [], f"worker {worker}: the clear left {left}"
            if last_neighbour is not None:  # the neighbour with a longer task id is untouched
                assert backend.get(neighbour, "k") == last_neighbour
    return {"worker": worker, "counts": counts, "neighbour": last_neighbour}


def big_value(seq: int, blob: str, digest: str) -> str:
    return f'{{"seq": {seq}, "sha": "{digest}", "blob": "{blob}"}}'


def check_big_value(text: str | None) -> int:
    """The seq of a whole big value; raises AssertionError if it is torn or missing."""
    assert text is not None, "the key reads as missing"
    document = orjson.loads(text)
    assert hashlib.sha256(document["blob"].encode()).hexdigest() == document["sha"], "torn value"
    return int(document["seq"])


def write_forever(url: str, options: dict[str, Any], progress: Any, size: int) -> None:
    """Rewrite one big key until killed; ``progress.value`` = the number of sets that returned."""
    backend = ObjectStoreBackend(StoreSettings(path=url, storage_options=options))
    scope = TaskScope("killed", "run", "writer")
    blob = "x" * size
    digest = hashlib.sha256(blob.encode()).hexdigest()
    seq = progress.value
    while True:
        backend.set(scope, "k", big_value(seq, blob, digest))
        seq += 1
        progress.value = seq
