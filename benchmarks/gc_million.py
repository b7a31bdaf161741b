"""The GC on a million objects: a first and a second 16-shard run, request by request, shard by shard.

Seeding a million objects with HTTP PUTs takes hours on moto, so this process runs moto's S3
server (request-counting, as every benchmark's) and fills the bucket through moto's in-process
backend, which that server serves: the same paths (the store's layout, the skew of
``gc_scale.py``: one DAG holds half the keys) and the same metadata (``ObjectMetadata``) as the
store writes; 1 key in 20 already expired. The GC itself talks HTTP: each shard is an
``objstore-backend gc --json --shard I/N`` process of its own (path and storage options from the
documented ``OBJSTORE_BACKEND_*`` env vars, the index at its default ``~gc-index/``), all shards
at once, so each shard's peak RSS is its own.

* first run: no index, no plan; deletes the expired keys;
* 1% of the keys rewritten (new bodies, hence new ETags, and new expiries);
* second run: with the index and the plan the first run wrote.

Per run: LIST, HEAD and DELETE requests and the index's own GETs and PUTs (counted by the
server), the shards' ``metadata_reads`` and ``index_hits``, wall seconds, objects/s, peak RSS
per shard (largest and median), the index's bytes per live key, and the balance (the largest
shard's ``scanned`` over the mean). Prints a markdown table, then the whole result as JSON.

moto answers each ListObjectsV2 page by copying and sorting the whole bucket, O(keys) a page
(8-10 s at a million keys), and spends most of a small request finding its backend, under a
lock: the script gives the bucket a sorted index of its key names and answers its listings from
it, and lists moto's modules once (``_faster_moto.py``: the same answers as moto's; the listing
is checked against moto's own on a small bucket before it starts, and the script refuses to run
where they differ). It prints the seconds a page takes both ways. Run:
``python benchmarks/gc_million.py --objects 100000``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

import _faster_moto
from _servers import REPO, S3_OPTIONS, s3_client
from _skew import skewed_path
from moto.s3.models import S3Backend

from objstore_backend.layout import RESERVED_PREFIX
from objstore_backend.store import ObjectMetadata
from tests.servers import CountingMotoServer, s3_kind

BUCKET = "million"
BASE = "state"
EXPIRED_EVERY = 20  # 1 key in 20 expired before the first run
CHANGED_EVERY = 100  # 1% of the keys rewritten before the second run


def moto_bucket() -> Any:
    """The benchmark bucket in moto's in-process backend (created over HTTP first)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    return backend, backend.get_bucket(BUCKET)


def seed(indices: Iterable[int], total: int, generation: int, now: datetime) -> None:
    """Write keys ``indices`` straight into moto's backend, as the store's S3 transport would."""
    backend, _ = moto_bucket()
    live = ObjectMetadata("primary", now + timedelta(days=7 + generation), updated_at=now).to_strings()
    expired = ObjectMetadata("primary", now - timedelta(days=1), updated_at=now - timedelta(days=8)).to_strings()
    for i in indices:
        meta = expired if generation == 0 and i % EXPIRED_EVERY == 0 else live
        key = backend.put_object(
            BUCKET,
            f"{BASE}/{skewed_path(i, total)}",
            b'{"v": %d, "g": %d}' % (i, generation),
            disable_notification=True,
        )
        key.set_metadata({"Content-Type": "application/json", **{f"x-amz-meta-{k}": v for k, v in meta.items()}})


def seconds_per_page(list_objects_v2: Callable[..., Any]) -> float:
    """What ``list_objects_v2`` (moto's or the indexed one) takes to answer one 1,000-key page of the bucket."""
    backend, bucket = moto_bucket()
    started = time.perf_counter()
    list_objects_v2(backend, bucket, f"{BASE}/", None, None, f"{BASE}/task/dag20/", 1000)
    return time.perf_counter() - started


def index_size() -> tuple[int, int]:
    """The index's objects and bytes (everything under ``~gc-index/``), read from moto's backend."""
    _, bucket = moto_bucket()
    prefix = f"{BASE}/{RESERVED_PREFIX}"
    sizes = [key.size for name, key in list(bucket.keys.items()) if name.startswith(prefix)]
    return len(sizes), sum(sizes)


def live_keys() -> int:
    _, bucket = moto_bucket()
    return sum(1 for name in list(bucket.keys) if not name.startswith(f"{BASE}/{RESERVED_PREFIX}"))


def requests(server: CountingMotoServer) -> dict[str, int]:
    """The run's requests by kind, the index's own (under ``~gc-index/``) apart; clears the log."""
    by_kind: dict[str, int] = {}
    for method, path, query in server.log.snapshot():
        kind = s3_kind(method, path, query)
        if RESERVED_PREFIX in path.replace("%7E", "~").replace("%7e", "~") and kind != "LIST":
            kind = f"index {kind}"
        by_kind[kind] = by_kind.get(kind, 0) + 1
    server.log.clear()
    return by_kind


#: Runs ``python ARGV...`` as its child, then prints the child's peak RSS as a last line of JSON.
#: A child's ``ru_maxrss`` starts from the RSS of the process it was started from (Linux keeps the
#: larger of the two across exec), and this process holds moto and the whole bucket: started from
#: this small launcher instead, each shard's peak RSS is its own.
PEAK_RSS_LAUNCHER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
_, status, usage = os.wait4(pid, 0)
print(json.dumps({"peak_rss_kb": usage.ru_maxrss}), flush=True)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def sweep(server: CountingMotoServer, shards: int, extra: list[str]) -> dict[str, Any]:
    """One run: ``shards`` GC processes at once; their reports, peak RSS, and the server's counts."""
    env = {
        **os.environ,
        "OBJSTORE_BACKEND_PATH": f"s3://{BUCKET}/{BASE}",
        # a long read timeout: up to shards x concurrency requests queue on moto's one core
        "OBJSTORE_BACKEND_STORAGE_OPTIONS": json.dumps(
            {**S3_OPTIONS, "endpoint_url": server.endpoint_url, "config_kwargs": {"read_timeout": 900}}
        ),
    }
    server.log.clear()
    load = os.getloadavg()[0]
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", PEAK_RSS_LAUNCHER, "-m", "objstore_backend.cli", "gc", "--json"]
            + ["--shard", f"{i}/{shards}", *extra],
            stdout=subprocess.PIPE,
            cwd=REPO,
            env=env,
        )
        for i in range(shards)
    ]
    outputs = [process.communicate()[0].decode().splitlines() for process in processes]
    seconds = time.perf_counter() - started
    assert all(process.returncode == 0 for process in processes), [lines[-3:] for lines in outputs]
    reports = [json.loads(lines[-2]) for lines in outputs]
    rss_mb = [json.loads(lines[-1])["peak_rss_kb"] / 1024 for lines in outputs]
    failed = [r["error_samples"] for r in reports if r["errors"]]
    assert not failed, failed
    scanned = [r["scanned"] for r in reports]
    index_objects, index_bytes = index_size()
    keys = live_keys()
    return {
        "requests": requests(server),
        "scanned": sum(scanned),
        "deleted": sum(r["deleted"] for r in reports),
        "metadata_reads": sum(r["metadata_reads"] for r in reports),
        "index_hits": sum(r["index_hits"] for r in reports),
        "index_damaged": sum(r["index_damaged"] for r in reports),
        "seconds": seconds,
        "objects/s": sum(scanned) / seconds,
        "peak RSS MB max": max(rss_mb),
        "peak RSS MB median": statistics.median(rss_mb),
        "peak RSS MB per shard": rss_mb,
        "largest/mean": max(scanned) / (sum(scanned) / len(scanned)),
        "scanned per shard": scanned,
        "live keys": keys,
        "index objects": index_objects,
        "index bytes": index_bytes,
        "index bytes/key": index_bytes / max(keys, 1),
        "load average before": load,
        "load average after": os.getloadavg()[0],
    }


COLUMNS = {  # table column: how a run's result shows in it
    "LIST": lambda r: f"{r['requests'].get('LIST', 0):,}",
    "HEAD": lambda r: f"{r['requests'].get('HEAD', 0):,}",
    "DELETE (batch)": lambda r: f"{r['requests'].get('BATCH-DELETE', 0) + r['requests'].get('DELETE', 0):,}",
    "index GET / PUT": lambda r: f"{r['requests'].get('index GET', 0):,} / {r['requests'].get('index PUT', 0):,}",
    "metadata_reads": lambda r: f"{r['metadata_reads']:,}",
    "index_hits": lambda r: f"{r['index_hits']:,}",
    "seconds": lambda r: f"{r['seconds']:,.0f}",
    "objects/s": lambda r: f"{r['objects/s']:,.0f}",
    "peak RSS MB per shard (max / median)": lambda r: f"{r['peak RSS MB max']:.0f} / {r['peak RSS MB median']:.0f}",
    "index bytes/key": lambda r: f"{r['index bytes/key']:.1f}",
    "largest/mean shard": lambda r: f"{r['largest/mean']:.2f}",
    "load avg": lambda r: f"{r['load average before']:.1f}-{r['load average after']:.1f}",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=64, help="each shard's requests in flight")
    parser.add_argument("--list-concurrency", type=int, default=4, help="each shard's listers")
    parser.add_argument("--json", metavar="FILE", help="also write the result as JSON to FILE")
    args = parser.parse_args()
    total, shards = args.objects, args.shards
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    command = f"python benchmarks/gc_million.py --objects {total} --shards {shards}"
    print(f"# gc_million: {total:,} objects, {shards} shards, {platform.machine()}, {os.cpu_count()} CPUs, ")
    print(f"# commit {commit.stdout.strip()}, load average {os.getloadavg()[0]:.1f}\n# {command}\n")
    result: dict[str, Any] = {"objects": total, "shards": shards, "commit": commit.stdout.strip(), "runs": {}}
    try:
        _faster_moto.check()
    except AssertionError as exc:
        sys.exit(f"the indexed listing answers otherwise than moto's own, not run: {exc}")
    _faster_moto.speed_up_server()
    server = CountingMotoServer().start()
    try:
        s3_client(server.endpoint_url).create_bucket(Bucket=BUCKET)
        now = datetime.now(timezone.utc)
        started = time.perf_counter()
        seed(range(total), total, 0, now)
        _faster_moto.index_bucket(*moto_bucket())
        result["seed seconds"] = time.perf_counter() - started
        result["moto seconds per LIST page"] = page = seconds_per_page(S3Backend.list_objects_v2)
        result["indexed seconds per LIST page"] = indexed = seconds_per_page(_faster_moto.list_objects_v2)
        pages = -(-total // 1000)
        print(f"seeded and indexed in {result['seed seconds']:.0f} s ({total // EXPIRED_EVERY:,} expired); a 1,000-key")
        print(f"LIST page takes moto {page:.2f} s at this size, {indexed:.4f} s indexed: one listing ({pages:,} pages)")
        print(f"costs moto {page * pages:,.0f} s of its one core, {indexed * pages:,.1f} s indexed\n", flush=True)
        extra = ["--concurrency", str(args.concurrency), "--list-concurrency", str(args.list_concurrency)]
        print("| run | keys rewritten | " + " | ".join(COLUMNS) + " |")
        print("|---|---:|" + "---:|" * len(COLUMNS), flush=True)
        for name in ("first", "second"):
            changed = range(1, total, CHANGED_EVERY) if name == "second" else range(0)
            seed(changed, total, 1, now)
            row = result["runs"][name] = {"keys rewritten": len(changed), **sweep(server, shards, extra)}
            cells = " | ".join(show(row) for show in COLUMNS.values())
            print(f"| {name} | {len(changed):,} | {cells} |", flush=True)
    finally:
        server.stop()
    print("\n" + json.dumps(result))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(result, file, indent=1)


if __name__ == "__main__":
    main()
