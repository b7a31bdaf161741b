"""GC scan rate and peak memory on one moto S3 server, against a raw loop of concurrent HEADs.

Starts moto's S3 server (counting requests) in its own process on a free port, fills two
buckets (``--small`` and ``--large`` objects), then measures in one run:

* objects scanned per second by ``run_gc`` (dry run: every object is HEADed, nothing deleted)
  at concurrency 1, 16 and 64, beside the floor: the same listing plus raw ``head_object``
  calls through s3fs, 64 in flight;
* the peak RSS of a whole ``objstore-backend gc --dry-run`` process at both bucket sizes
  (streaming: it should not grow with the bucket).

Prints a markdown table. Run: ``python benchmarks/gc_scan.py`` (about 5 minutes with the
defaults; ``--large 20000`` for a quick look). The ``gc`` section of ``benchmarks/compare.py``
is the short form, with the same functions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from _servers import REPO, S3_OPTIONS, counts, moto_server, s3_client

from objstore_backend.gc import GCOptions, run_gc
from objstore_backend.store import ObjectMetadata, ObjectStore


def fill(store: ObjectStore, count: int) -> None:
    """``count`` live primary objects, 25 map indices per task, written 64 at a time."""
    metadata = ObjectMetadata("primary", datetime.now(timezone.utc) + timedelta(days=1))

    async def write_all() -> None:
        semaphore = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            async with semaphore:
                await store.awrite(f"task/bench/run{i // 1000}/t{i // 25 % 40}/{i % 25}/k", b'{"v": 1}', metadata)

        await asyncio.gather(*(one(i) for i in range(count)))

    asyncio.run(write_all())


def raw_scan(store: ObjectStore, concurrency: int) -> float:
    """The floor: list every page and HEAD every object with plain s3fs calls, no GC logic."""

    async def scan() -> int:
        fs = await store._bound_fs()
        bucket, prefix, _ = fs.split_path(store.full_path(""))
        semaphore = asyncio.Semaphore(concurrency)

        async def head(key: str) -> None:
            async with semaphore:
                await fs._call_s3("head_object", Bucket=bucket, Key=key)

        scanned, token = 0, {}
        while True:
            page = await fs._call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, **token)
            keys = [item["Key"] for item in page.get("Contents", [])]
            await asyncio.gather(*(head(key) for key in keys))
            scanned += len(keys)
            if not page.get("IsTruncated"):
                return scanned
            token = {"ContinuationToken": page["NextContinuationToken"]}

    started = time.perf_counter()
    scanned = asyncio.run(scan())
    return scanned / (time.perf_counter() - started)


def gc_rate(store: ObjectStore, concurrency: int, objects: int) -> float:
    """Objects per second of one ``run_gc`` dry run over the ``objects`` in ``store``."""
    report = run_gc(store, GCOptions(dry_run=True, concurrency=concurrency))
    assert report.scanned == objects and report.errors == 0, report
    return report.scanned / report.seconds


#: Starts the command and reports its peak RSS. A child's ``ru_maxrss`` is at least the RSS of
#: the process it was forked from (Linux carries the parent's high-water mark over the exec), so
#: measured straight from this process, which holds the filled buckets' bookkeeping, it would
#: report this process's size; a launcher of ~10 MiB keeps that out of the figure.
_LAUNCHER = (
    "import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, "
    "stderr=subprocess.DEVNULL); _, status, usage = os.wait4(p.pid, 0); "
    "assert status == 0, f'gc exited with {status}'; print(usage.ru_maxrss)"
)


def peak_rss_mib(url: str, storage_options: dict[str, Any]) -> float:
    """Peak RSS of a whole `objstore-backend gc --dry-run` process (started from a small launcher)."""
    options = json.dumps(storage_options)
    command = [
        sys.executable,
        "-m",
        "objstore_backend.cli",
        "gc",
        "--dry-run",
        "--json",
        "--path",
        url,
        "--storage-options",
        options,
        "--concurrency",
        "64",
    ]
    out = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *command], cwd=REPO, capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip()) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    args = parser.parse_args()

    with moto_server() as endpoint:
        s3 = s3_client(endpoint)
        stores = {}
        for size in (args.small, args.large):
            s3.create_bucket(Bucket=f"bench-{size}")
            stores[size] = ObjectStore(f"s3://bench-{size}/state", {**S3_OPTIONS, "endpoint_url": endpoint})
            started = time.perf_counter()
            fill(stores[size], size)
            print(f"filled {size} objects in {time.perf_counter() - started:.0f} s", file=sys.stderr)

        small = stores[args.small]
        counts(endpoint)
        raw = raw_scan(small, 64)
        raw_requests = counts(endpoint)
        rows = [("raw s3fs: list + HEAD, 64 in flight", raw, raw_requests)]
        for concurrency in (1, 16, 64):
            rate = gc_rate(small, concurrency, args.small)
            rows.append((f"objstore-backend gc, concurrency {concurrency}", rate, counts(endpoint)))

        print(
            f"\nGC scan of {args.small:,} objects on one moto S3 server "
            f"({platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()})\n"
        )
        print("| scanner | objects/s | vs raw | requests |")
        print("|---|---:|---:|---|")
        for name, rate, requests in rows:
            shown = ", ".join(f"{k} {v:,}" for k, v in sorted(requests.items()))
            print(f"| {name} | {rate:,.0f} | {rate / raw:.0%} | {shown} |")

        print("\n| objects in the bucket | peak RSS of `objstore-backend gc --dry-run` |")
        print("|---:|---:|")
        for size, store in stores.items():
            print(f"| {size:,} | {peak_rss_mib(store.url, {**S3_OPTIONS, 'endpoint_url': endpoint}):.0f} MiB |")


if __name__ == "__main__":
    main()
