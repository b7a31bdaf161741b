"""The comparison's ``ops``, ``metrics``, ``clear``, ``gc`` and ``import`` sections: each measures, then
returns its table.

Requests are counted by the server (``count()`` returns them by kind and resets the count);
times are medians; ratios are *ours / the other*.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import Any

from _contenders import Contender, StateBackend
from _measure import log, ratio, requests_cell, timed
from _servers import REPO, S3_OPTIONS, counts, statsd_server

#: A small state value, as a task would keep: a job id and a watermark.
SMALL_VALUE = {"job_id": "emr-0123456789abcdef", "watermark": "2026-01-01T00:00:00+00:00", "done": [1, 2, 3]}
OPS = ("set", "get", "delete")
MODE_LABELS = {
    "primary": "primary (`set`/`get`/`delete`)",
    "offload": "offload (`serialize`/`deserialize`/`delete`)",
}

# -- ops -----------------------------------------------------------------------------------


def measure_ops(
    contenders: list[Contender], mode: str, scope: Any, n: int, count: Callable[[], dict[str, int]]
) -> dict[str, dict[str, tuple[dict[str, float], float]]]:
    """Per contender and op: (requests per op by kind, median seconds).

    Requests: each contender alone, ``n`` ops of a kind, then the server's counts. Latency: a
    second pass of ``n`` ops per kind with the contenders interleaved op by op, so a slow moment
    of the (shared, 2-core) machine hits every contender alike.
    """
    calls = {c.name: c.ops(mode, SMALL_VALUE) for c in contenders}
    for name, (put, get, delete) in calls.items():  # warm-up, and a check that the value comes back
        for i in range(5):
            put(scope, f"warm{i}")
            got = get(scope, f"warm{i}")
            assert got is not None and (got == SMALL_VALUE or json.loads(got) == SMALL_VALUE), (name, got)
            delete(scope, f"warm{i}")
    count()
    requests: dict[str, dict[str, dict[str, float]]] = {name: {} for name in calls}
    for name, name_calls in calls.items():
        for op, call in zip(OPS, name_calls, strict=True):
            for i in range(n):
                call(scope, f"c{i}")
            requests[name][op] = {kind: total / n for kind, total in count().items()}
    seconds: dict[str, dict[str, list[float]]] = {name: {op: [] for op in OPS} for name in calls}
    for index, op in enumerate(OPS):
        for i in range(n):
            for name, name_calls in calls.items():
                seconds[name][op].append(timed(partial(name_calls[index], scope, f"k{i}")))
    return {name: {op: (requests[name][op], statistics.median(seconds[name][op])) for op in OPS} for name in calls}


def ops_table(
    store: str,
    contenders: list[Contender],
    n: int,
    count: Callable[[], dict[str, int]],
    missing: dict[str, str] | None = None,
) -> list[str]:
    """Requests and median latency per op, both modes; ``missing``: contenders not run, and why."""
    from airflow.sdk.state import TaskScope

    missing = missing or {}
    names = [c.name for c in contenders] + list(missing)
    ours, others = contenders[0].name, [c.name for c in contenders[1:]]
    rows = [
        f"\n### Requests and median latency per operation ({store}; requests counted by the server over {n} "
        f"operations of each kind; latency: median of {n} more, the backends interleaved, after a warm-up)\n",
        "| mode | op | "
        + " | ".join(f"{name}: requests | {name}: ms" for name in names)
        + " | "
        + " | ".join(f"{ours} / {name} (time)" for name in others)
        + " |",
        "|---|---|" + "---|---:|" * len(names) + "---:|" * len(others),
    ]
    for mode in ("primary", "offload"):
        log(f"ops {store} {mode}")
        results = measure_ops(contenders, mode, TaskScope("bench", f"ops-{mode}", "t", 0), n, count)
        for op in OPS:
            cells = [
                f"{requests_cell(results[name][op][0])} | {results[name][op][1] * 1000:.1f}"
                if name in results
                else "n/a | -"
                for name in names
            ]
            ratios = [ratio(results[ours][op][1], results[name][op][1]) for name in others]
            rows.append(f"| {MODE_LABELS[mode]} | {op} | " + " | ".join(cells + ratios) + " |")
    rows += [f"\n{name}: n/a, {why}." for name, why in missing.items()]
    return rows


# -- metrics -------------------------------------------------------------------------------


def _start_airflow_stats() -> None:
    """Set up Airflow's ``Stats`` from its current ``[metrics]`` settings, as its API server does at start."""
    from airflow._shared.observability.metrics import stats
    from airflow.configuration import conf
    from airflow.observability.metrics import stats_utils

    stats.initialize(
        factory=stats_utils.get_stats_factory(), export_legacy_names=conf.getboolean("metrics", "legacy_names_on")
    )


@contextmanager
def statsd_metrics(port: int) -> Iterator[Any]:
    """The process's metrics while the block runs, as inside Airflow's API server with ``[metrics]``
    sending StatsD to ``127.0.0.1:port``: through Airflow's ``Stats``. Off again after it."""
    from objstore_backend import metrics

    settings = {
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": str(port),
    }
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    _start_airflow_stats()
    metrics.shutdown()  # the process's metrics are built once: again, with these settings
    try:
        yield metrics.for_process()
    finally:
        metrics.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _start_airflow_stats()


def metrics_table(endpoint: str, n: int, count: Callable[[], dict[str, int]]) -> list[str]:
    """Ours with metrics on (StatsD over UDP to a listener in its own process) beside ours with them off,
    on the same server, interleaved op by op: requests and median latency per op."""
    from objstore_backend.backend import ObjectStoreBackend
    from objstore_backend.config import StoreSettings
    from objstore_backend.metrics import Metrics

    def backend(base: str, metrics: Any) -> ObjectStoreBackend:
        options = {**S3_OPTIONS, "endpoint_url": endpoint}
        settings = StoreSettings(path=f"s3://bench-ours/{base}/", storage_options=options)
        return ObjectStoreBackend(settings, metrics=metrics)

    with statsd_server() as (port, received), statsd_metrics(port) as statsd:
        contenders: list[Contender] = [
            StateBackend("metrics on", backend("metrics-on", statsd)),
            StateBackend("metrics off", backend("metrics-off", Metrics())),
        ]
        rows = ops_table("S3, moto; metrics on: StatsD over UDP to a local listener", contenders, n, count)
        overhead = {name: metrics_overhead_us(sink) for name, sink in (("on", statsd), ("off", Metrics()))}
    rows.append(
        f"\nThe metrics alone, per operation (a get of 100 bytes reported 20,000 times, no request): "
        f"{overhead['on']:.1f} us with metrics on, {overhead['off']:.2f} us off."
    )
    rows.append(
        f"\nMetrics on: {type(statsd).__name__}; the listener received {received[0] if received else 0} "
        f"metric lines (each op: a count and a timer, plus bytes for get and set; the timing loop's too)."
    )
    return rows


def metrics_overhead_us(sink: Any, calls: int = 20_000) -> float:
    """Microseconds the store's metrics add to one operation: a ``get`` that moves 100 bytes and
    makes no request, reported to ``sink`` (``Metrics()``: off)."""
    import time

    from objstore_backend.store_metrics import measured, note_read

    class Reported:
        metrics = sink

        @measured("get", "primary")
        def get(self) -> None:
            note_read(100)

    operation = Reported()
    started = time.perf_counter()
    for _ in range(calls):
        operation.get()
    return (time.perf_counter() - started) / calls * 1e6


# -- clear ---------------------------------------------------------------------------------


def write_one(contender: Contender, scope_and_key: tuple[Any, str]) -> None:
    contender.write(*scope_and_key, '{"v": 1}')


def clear_table(
    store: str,
    contenders: list[Contender],
    map_indices: int,
    count: Callable[[], dict[str, int]],
    remaining: Callable[[Contender], int],
    repeats: int,
    missing: dict[str, str] | None = None,
) -> list[str]:
    """Per contender, ``repeats`` times: write the task's keys (not timed), then time one clear.

    ``remaining(contender)``: the objects left under the contender's ``bench/clear/`` afterwards.
    """
    from airflow.sdk.state import TaskScope

    keys = map_indices * 2
    scopes = [TaskScope("bench", "clear", "mapped", i) for i in range(map_indices)]
    sibling = TaskScope("bench", "clear", "mapped_2", 0)  # a task whose name extends the cleared one's: must survive
    results = {}
    for contender in contenders:
        seconds, requests = [], []
        for run in range(repeats):
            log(f"clear {store}: {contender.name}, run {run + 1} of {repeats}: writing {keys} keys")
            with ThreadPoolExecutor(16) as pool:  # the writes are not timed
                list(pool.map(partial(write_one, contender), [(s, k) for s in scopes for k in "ab"]))
            write_one(contender, (sibling, "a"))
            count()
            seconds.append(timed(partial(contender.clear_task, scopes[0])))
            requests.append(count())
            left = remaining(contender)
            assert left == 1, f"{contender.name}: {left} objects left after the clear (expected the sibling's 1)"
        results[contender.name] = (requests, seconds)
    ours_seconds = statistics.median(results[contenders[0].name][1])
    rows = [
        f"\n### clear(all_map_indices=True) of one task: {map_indices} map indices x 2 keys = {keys} keys "
        f"({store}; median of {repeats} clears, each after writing the keys again, writes not timed)\n",
        "| backend | requests | seconds (median) | min - max | ours / this (time) | this / ours |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, (requests, seconds) in results.items():
        median = statistics.median(seconds)
        same_each_run = all(r == requests[0] for r in requests)
        shown = requests_cell(requests[0]) if same_each_run else " / ".join(requests_cell(r) for r in requests)
        rows.append(
            f"| {name} | {shown} | {median:.3f} | {min(seconds):.3f} - {max(seconds):.3f} | "
            f"{ratio(ours_seconds, median)} | {median / ours_seconds:.1f}x |"
        )
    rows += [f"| {name} | n/a: {why} | - | - | - | - |" for name, why in (missing or {}).items()]
    return rows


# -- gc ------------------------------------------------------------------------------------


def gc_table(endpoint: str, objects: int, s3: Any) -> list[str]:
    """GC scan rate against the raw floor, and the GC command's peak RSS (the short form of gc_scan.py)."""
    from gc_scan import fill, gc_rate, peak_rss_mib, raw_scan

    from objstore_backend.store import ObjectStore

    # gc_scan's helpers and the GC each run on a loop of their own (asyncio.run) and leave their
    # aiohttp sessions to the garbage collector: asyncio then logs "Unclosed client session",
    # which Airflow's logging set-up prints on stdout, into the tables. Harmless here.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    bucket = "bench-gc"
    s3.create_bucket(Bucket=bucket)
    store = ObjectStore(f"s3://{bucket}/state", {**S3_OPTIONS, "endpoint_url": endpoint})
    log(f"gc: filling {objects} objects")
    fill(store, objects)
    counts(endpoint)
    rates: dict[str, list[float]] = {"raw": [], "ours": []}
    requests: dict[str, dict[str, int]] = {}
    for run in range(2):  # alternated, so a slow moment of the machine hits both alike; the better of 2
        log(f"gc: raw scan and run_gc, round {run + 1} of 2")
        rates["raw"].append(raw_scan(store, 64))
        requests["raw"] = counts(endpoint)
        rates["ours"].append(gc_rate(store, 32, objects))
        requests["ours"] = counts(endpoint)
    raw, ours = max(rates["raw"]), max(rates["ours"])
    log("gc: peak RSS of the gc command")
    peak = peak_rss_mib(store.url, {**S3_OPTIONS, "endpoint_url": endpoint})
    return [
        f"\n### GC scan of {objects:,} live objects (S3; every object HEADed, nothing deleted; the better of 2 "
        "alternated runs each)\n",
        "| scanner | objects/s | ours / raw (rate) | requests |",
        "|---|---:|---:|---|",
        f"| raw s3fs: list + HEAD, 64 in flight | {raw:,.0f} | 100% | {requests_cell(requests['raw'])} |",
        f"| ours: `run_gc` dry run, concurrency 32 (the default) | {ours:,.0f} | {ours / raw:.0%} | "
        f"{requests_cell(requests['ours'])} |",
        "| common.io | - | - | no GC: nothing ever deletes its objects, and it ignores expiry |",
        f"\nPeak RSS of the whole `objstore-backend gc --dry-run` process on {objects:,} objects: "
        f"**{peak:.0f} MiB** (measured from a small launcher process).",
    ]


def azure_gc_table(url: str, options: dict[str, Any], objects: int) -> list[str]:
    """GC scan rate on Azure against the floor (the raw listing with metadata), and the command's peak RSS."""
    import asyncio
    import time

    from gc_scan import fill, gc_rate, peak_rss_mib

    from objstore_backend.store import ObjectStore

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # see gc_table
    store = ObjectStore("abfs://bench-gc/state", options)
    log(f"azure gc: filling {objects} objects")
    fill(store, objects)

    def raw_listing() -> float:
        """The floor: every listing page with metadata through the SDK, nothing else."""

        async def scan() -> int:
            fs = await store._bound_fs()
            container = fs.service_client.get_container_client("bench-gc")
            listed = container.list_blobs(name_starts_with="state/", include=["metadata"], results_per_page=5000)
            return len([blob async for blob in listed])

        started = time.perf_counter()
        scanned = asyncio.run(scan())
        assert scanned == objects, scanned
        return scanned / (time.perf_counter() - started)

    counts(url)
    rates: dict[str, list[float]] = {"raw": [], "ours": []}
    requests: dict[str, dict[str, int]] = {}
    for run in range(2):  # alternated, the better of 2 (as gc_table)
        log(f"azure gc: raw listing and run_gc, round {run + 1} of 2")
        rates["raw"].append(raw_listing())
        requests["raw"] = counts(url)
        rates["ours"].append(gc_rate(store, 32, objects))
        requests["ours"] = counts(url)
    raw, ours = max(rates["raw"]), max(rates["ours"])
    log("azure gc: peak RSS of the gc command")
    peak = peak_rss_mib(store.url, options)
    return [
        f"\n### GC scan of {objects:,} live objects (Azure, Azurite; expiries from the listing, nothing "
        "deleted; the better of 2 alternated runs each)\n",
        "| scanner | objects/s | ours / raw (rate) | requests |",
        "|---|---:|---:|---|",
        f"| raw SDK: `list_blobs(include=['metadata'])`, 5,000 a page | {raw:,.0f} | 100% | "
        f"{requests_cell(requests['raw'])} |",
        f"| ours: `run_gc` dry run, concurrency 32 (the default) | {ours:,.0f} | {ours / raw:.0%} | "
        f"{requests_cell(requests['ours'])} |",
        f"\nPeak RSS of the whole `objstore-backend gc --dry-run` process on {objects:,} blobs: **{peak:.0f} MiB**.",
    ]


# -- import --------------------------------------------------------------------------------

#: (row, statement, whether it imports Airflow: checked in the measured process).
IMPORTS = [
    ("`import objstore_backend` (no Airflow)", "import objstore_backend", False),
    ("`import objstore_backend.cli` (the GC/audit/ls command, no Airflow)", "import objstore_backend.cli", False),
    ("`import objstore_backend.cli, s3fs` (a GC on S3, no Airflow)", "import objstore_backend.cli, s3fs", False),
    ("`import s3fs` (floor of any S3 store)", "import s3fs", False),
    ("`import airflow.sdk.state` (floor of any Airflow backend)", "import airflow.sdk.state", True),
    ("`import objstore_backend.backend` (ours, with Airflow)", "import objstore_backend.backend", True),
    (
        "`import airflow.providers.common.io.state_store.backend` (common.io)",
        "import airflow.providers.common.io.state_store.backend",
        True,
    ),
]
ROW_OF = {statement: row for row, statement, _ in IMPORTS}
SDK, OURS, COMMON_IO = (
    ROW_OF["import airflow.sdk.state"],
    ROW_OF["import objstore_backend.backend"],
    ROW_OF["import airflow.providers.common.io.state_store.backend"],
)


def wall_seconds(statement: str, imports_airflow: bool) -> float:
    """Wall time of a fresh ``python -c statement``, which checks whether it imported Airflow."""
    check = f"; import sys; assert ('airflow' in sys.modules) == {imports_airflow}, "
    check += f"'expected Airflow imported: {imports_airflow}'"
    command = [sys.executable, "-c", statement + check]
    return timed(partial(subprocess.run, command, cwd=REPO, check=True, stdout=subprocess.DEVNULL))


def top_level_imports(statement: str) -> dict[str, int]:
    """``python -X importtime -c statement``: cumulative microseconds of each top-level import."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement], cwd=REPO, check=True, capture_output=True, text=True
    )
    found = {}
    for line in out.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and line.startswith("import time:") and parts[1].strip().isdigit():
            name = parts[2][1:]  # one space, then two per nesting level
            if not name.startswith(" "):
                found[name] = int(parts[1])
    return found


def import_table(runs: int) -> list[str]:
    for _, statement, imports_airflow in IMPORTS:  # warm the bytecode caches and AIRFLOW_HOME
        wall_seconds(statement, imports_airflow)
    at_startup = set(top_level_imports("pass"))
    startup_samples: list[float] = []
    wall: dict[str, list[float]] = {row: [] for row, _, _ in IMPORTS}
    reported: dict[str, list[float]] = {row: [] for row, _, _ in IMPORTS}
    for run in range(runs):  # round robin, so a slow moment of the machine hits every row alike
        log(f"import: round {run + 1} of {runs}")
        startup_samples.append(wall_seconds("pass", False))
        for row, statement, imports_airflow in IMPORTS:
            wall[row].append(wall_seconds(statement, imports_airflow))
            own = top_level_imports(statement)  # by Python's own account, start-up's imports excluded
            reported[row].append(sum(us for name, us in own.items() if name not in at_startup) / 1e6)
    startup = statistics.median(startup_samples)
    wall_ms = {row: (statistics.median(times) - startup) * 1000 for row, times in wall.items()}
    reported_ms = {row: statistics.median(times) * 1000 for row, times in reported.items()}

    def ratios(row: str, other: str) -> str:
        return f"{wall_ms[row] / wall_ms[other]:.2f}; {reported_ms[row] / reported_ms[other]:.2f}"

    notes = {
        COMMON_IO: f"ours / common.io = {ratios(OURS, COMMON_IO)}",
        OURS: f"ours / `airflow.sdk.state` = {ratios(OURS, SDK)}",
    }
    return [
        f"\n### Import time (median of {runs} fresh processes each way)\n",
        f"*wall*: the process's wall time minus that of `python -c pass` ({startup * 1000:.0f} ms; differences "
        "of a few ms are noise). *-X importtime*: the cumulative time Python reports for the statement's own "
        "top-level imports (modules already imported at start-up excluded), which also adds its own overhead.\n",
        "| import | wall ms | -X importtime ms | ratio (wall; -X importtime) |",
        "|---|---:|---:|---|",
        *(f"| {row} | {wall_ms[row]:.0f} | {reported_ms[row]:.0f} | {notes.get(row, '')} |" for row, _, _ in IMPORTS),
    ]
