"""The GC's first plan on skewed layouts: how balanced its shards are, and what it cost.

    python benchmarks/first_plan.py

Runs the discovery (objstore_backend.discovery) over an in-memory sorted listing that answers as
S3 does (pages of 1,000 keys after a StartAfter; delimiter listings naming up to 1,000 prefixes a
page), so buckets of 400,000 keys take seconds. It measures the plan alone: the keys the largest
of N shards would scan over the mean, and the listing requests the discovery made beside the
allowance (a quarter of one listing + 2 per shard). Real-server runs: tests/test_gc_scale.py.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import Counter
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

from objstore_backend.discovery import discover

PAGE = 1000
PAST = "\U0010ffff"


class SortedListing:
    """A bucket as a sorted list of keys, listed the way S3 lists it."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = sorted(keys)

    async def list_prefixes(
        self, fs: Any, prefix: str, *, max_pages: int = 2, start_after: str | None = None
    ) -> tuple[list[str], int]:
        found: list[str] = []
        at = bisect.bisect_right(self.keys, max(prefix, start_after or ""))
        while at < len(self.keys) and self.keys[at].startswith(prefix) and len(found) < PAGE * max_pages:
            rest = self.keys[at][len(prefix) :]
            if "/" in rest:
                found.append(prefix + rest[: rest.index("/") + 1])
                at = bisect.bisect_left(self.keys, found[-1] + PAST)
            else:
                at += 1
        return found, max(1, -(-len(found) // PAGE))

    async def list_pages(self, fs: Any, base: str, start_after: str | None = None) -> AsyncIterator[list[Any]]:
        at = bisect.bisect_right(self.keys, start_after) if start_after else bisect.bisect_left(self.keys, base)
        while at < len(self.keys) and self.keys[at].startswith(base):
            yield [SimpleNamespace(path=key) for key in self.keys[at : at + PAGE] if key.startswith(base)]
            at += PAGE


def one_run_holds_half(total: int) -> list[str]:
    """One DAG run (a task mapped 250 ways, 4 tasks) holds half; twelve small DAGs the rest."""
    keys = [f"task/etl/manual__1/t{i % 4}/{i // 4 % 250}/k{i}" for i in range(total // 2)]
    return keys + [f"task/dag{i % 12:02}/run{i // 120:03}/t{i % 3}/-1/k{i}" for i in range(total - len(keys))]


def one_dag_holds_half(total: int) -> list[str]:
    """benchmarks/gc_scale.py's layout: DAG ``big`` (50 keys a run) holds half, 40 small DAGs the rest."""
    big = [f"task/big/run{i // 50:06}/t{i % 5}/{i % 10}/k{i}" for i in range(total // 2)]
    return big + [f"task/dag{i % 40:02}/run{i // 400:05}/t/-1/k{i}" for i in range(total // 2, total)]


def a_loop_holds_half(total: int) -> list[str]:
    """Airflow 3.4: one run's task loop (a region, 2,000 iterations) holds half, 50 DAGs the rest."""
    region = "region=0b4e7a2c-0000-4000-8000-000000000001"
    keys = [f"task/etl/manual__1/{region}/t{i % 3}/{i // 3 % 2000}/k{i}" for i in range(total // 2)]
    return keys + [f"task/d{i % 50:02}/r{i // 500:04}/t/-1/k{i}" for i in range(total - len(keys))]


def dags_of_eight_keys(total: int) -> list[str]:
    """Many DAGs of 8 keys (50,000 at 400,000 keys): their listing takes many pages."""
    dags = max(1, total // 8)
    return [f"task/d{i % dags:06}/r{i // dags}/t/-1/k{i}" for i in range(total)]


def many_small_dags(total: int) -> list[str]:
    """A key per DAG: more DAGs than one delimiter listing names."""
    return [f"task/d{i:07}/r/t/-1/k" for i in range(total)]


LAYOUTS: dict[str, Callable[[int], list[str]]] = {
    "one run holds half": one_run_holds_half,
    "one DAG holds half": one_dag_holds_half,
    "a 3.4 loop holds half": a_loop_holds_half,
    "DAGs of 8 keys": dags_of_eight_keys,
    "a key per DAG": many_small_dags,
}


def measure(keys: list[str], shards: int) -> tuple[float, int]:
    base = "bucket/state/"
    plan, requests = asyncio.run(discover(SortedListing([base + key for key in keys]), None, base, shards))
    per_unit = Counter(bisect.bisect_left(plan.bounds, key) for key in keys)
    sizes = [sum(per_unit[u] for u in plan.shard_units(i, shards)) for i in range(shards)]
    return max(sizes) / (len(keys) / shards), requests


def main() -> None:
    print("| layout | keys | shards | largest / mean | discovery requests | allowance |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, layout in LAYOUTS.items():
        for total in (1_600, 20_000, 100_000, 400_000):
            keys = layout(total)
            for shards in (4, 8, 16):
                balance, requests = measure(keys, shards)
                allowance = total / PAGE / 4 + 2 * shards
                print(f"| {name} | {total:,} | {shards} | {balance:.2f} | {requests} | {allowance:.0f} |")


if __name__ == "__main__":
    main()
