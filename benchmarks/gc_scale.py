"""The GC at scale on one counting moto server: shards, listers and the index, request by request.

Fills a bucket with ``--objects`` live keys over a skewed layout (one DAG holds half of them),
then for 1, 4 and 16 shards (each with an index of its own, ``--index``, so each starts cold):

* a first run: every shard an ``objstore-backend gc --json`` process of its own, all at once;
* 1% of the keys rewritten with new expiries;
* a second run, the same way.

Per run: LIST and HEAD requests (counted by the server), wall seconds, objects/s, the peak RSS
of the largest shard process, and the largest shard's objects over the mean. Prints a markdown
table. Run: ``python benchmarks/gc_scale.py --objects 100000``.
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

from _servers import REPO, S3_OPTIONS, counts, moto_server, s3_client
from _skew import skewed_path

from objstore_backend.store import ObjectMetadata, ObjectStore


def write(store: ObjectStore, indices: list[int], total: int, expires_at: datetime) -> None:
    metadata = ObjectMetadata("primary", expires_at)

    async def write_all() -> None:
        semaphore = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            async with semaphore:
                await store.awrite(skewed_path(i, total), b'{"v": 1}', metadata)

        await asyncio.gather(*(one(i) for i in indices))

    asyncio.run(write_all())


def sweep(endpoint: str, url: str, index_url: str, shards: int) -> dict[str, float]:
    """One run of ``shards`` GC processes at once: requests, time, peak RSS, balance."""
    options = json.dumps({**S3_OPTIONS, "endpoint_url": endpoint})
    counts(endpoint)  # reset
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "objstore_backend.cli", "gc", "--json", "--path", url]
            + ["--storage-options", options, "--index", index_url, "--shard", f"{i}/{shards}", "--concurrency", "64"],
            stdout=subprocess.PIPE,
            cwd=REPO,
        )
        for i in range(shards)
    ]
    peak_rss = 0
    for process in processes:
        _, _, usage = os.wait4(process.pid, 0)
        peak_rss = max(peak_rss, usage.ru_maxrss)
    seconds = time.perf_counter() - started
    reports = []
    for process in processes:
        assert process.stdout is not None
        reports.append(json.loads(process.stdout.read().decode().splitlines()[-1]))
        process.returncode = 0
    requests = counts(endpoint)
    scanned = [r["scanned"] for r in reports]
    assert not any(r["errors"] for r in reports), [r["error_samples"] for r in reports]
    return {
        "LIST": requests.get("LIST", 0),
        "HEAD": requests.get("HEAD", 0),
        "seconds": seconds,
        "objects/s": sum(scanned) / seconds,
        "peak RSS MB": peak_rss / 1024,
        "largest/mean": max(scanned) / (sum(scanned) / len(scanned)),
        "scanned": sum(scanned),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--shards", default="1,4,16")
    args = parser.parse_args()
    total = args.objects
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    print(f"# gc_scale: {total:,} objects, {platform.machine()}, {os.cpu_count()} CPUs, commit {commit.stdout.strip()}")
    print(f"# python benchmarks/gc_scale.py --objects {total} --shards {args.shards}\n")
    with moto_server() as endpoint:
        s3_client(endpoint).create_bucket(Bucket="scale")
        # the index in a bucket of its own: moto's listing of a bucket fails (HTTP 500, a KeyError
        # inside moto) when another thread deletes from that same bucket meanwhile
        s3_client(endpoint).create_bucket(Bucket="scale-index")
        url = "s3://scale/state"
        store = ObjectStore(url, {**S3_OPTIONS, "endpoint_url": endpoint})
        started = time.perf_counter()
        write(store, list(range(total)), total, datetime.now(timezone.utc) + timedelta(days=7))
        print(f"# filled in {time.perf_counter() - started:.0f} s\n")
        pages = -(-total // 1000)
        print(f"one listing = {pages} LIST pages; goals: second-run HEAD <= 1.1x changed, ")
        print(f"LIST <= 1.25 x {pages} + 3 per shard\n")
        columns = ["LIST", "HEAD", "seconds", "objects/s", "peak RSS MB", "largest/mean"]
        print("| shards | run | changed | " + " | ".join(columns) + " |")
        print("|---|---|---|" + "---|" * len(columns))
        for shards in (int(n) for n in args.shards.split(",")):
            index_url = f"s3://scale-index/{shards}-shards"
            changed = list(range(shards, total, 100))  # 1%, a different 1% for each shard count
            for name in ("first", "second"):
                if name == "second":
                    write(store, changed, total, datetime.now(timezone.utc) + timedelta(days=9))
                row = sweep(endpoint, url, index_url, shards)
                cells = [f"{row[c]:,.0f}" if c in ("LIST", "HEAD", "objects/s") else f"{row[c]:.2f}" for c in columns]
                rewritten = len(changed) if name == "second" else 0
                print(f"| {shards} | {name} | {rewritten:,} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
