"""The ``large`` section: round trips (set, then get) of big nested JSON values on S3.

For each size: the round trip's throughput and requests per contender, the peak RSS of a
process doing one round trip, and orjson against the stdlib's json on the same value.

Each peak RSS is measured in a process of its own, this module run as a script::

    python benchmarks/_large_values.py CONTENDER MODE PAYLOAD_FILE ENDPOINT

which prints the RSS at each stage as JSON (see :func:`measure_one_round_trip`).
"""

from __future__ import annotations

import gc
import importlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from _contenders import Contender, RawFS, s3_contender
from _measure import log, ratio, requests_cell, timed
from _servers import counts

MIB = 2**20
#: (contender, mode) of each row: ``bytes`` for the raw floor, ``primary`` (JSON text in and
#: out: ``set`` + ``get``) or ``offload`` (a Python value: ``serialize`` + ``deserialize``).
ROUND_TRIPS = [
    ("raw s3fs", "bytes"),
    ("ours", "primary"),
    ("ours", "offload"),
    ("common.io", "primary"),
    ("common.io", "offload"),
]
MODE_LABELS = {
    "bytes": "`pipe_file` + `cat_file` (bytes)",
    "primary": "primary (`set` + `get`, JSON text)",
    "offload": "offload (`serialize` + `deserialize`, Python value)",
}
#: What each contender imports (orjson too: it loads the offload value), before a measuring
#: process's first RSS reading.
MODULES = {
    "raw s3fs": ["orjson", "s3fs"],
    "ours": ["orjson", "airflow.sdk.state", "objstore_backend.backend"],
    "common.io": ["orjson", "airflow.sdk.state", "airflow.providers.common.io.state_store.backend"],
}


def nested_payload(size: int) -> Any:
    """Nested JSON of about ``size`` bytes: records with strings, numbers, lists, objects, nulls."""

    def record(i: int) -> dict[str, Any]:
        return {
            "id": i,
            "name": f"customer-{i:09d}",
            "active": i % 3 == 0,
            "score": round(i * 0.731 % 1000, 3),
            "parent": None if i % 5 else i - 5,
            "tags": ["alpha", "beta", f"tag-{i % 97}"],
            "address": {"city": f"city-{i % 1000}", "zip": f"{i % 100000:05d}", "geo": {"lat": 48.85, "lon": 2.35}},
            "orders": [{"sku": f"sku-{(i * 7 + j) % 5000}", "qty": j + 1, "price": 9.99 + j} for j in range(3)],
        }

    per_record = len(json.dumps(record(10**6)).encode()) + 1
    records = [record(i) for i in range(size // per_record)]
    return {"version": 1, "generated": "2026-01-01T00:00:00Z", "records": records}


def round_trip(contender: Contender, mode: str) -> Callable[[Any], Any]:
    """A function that writes its argument as ``mode`` does, reads it back and returns what came back."""
    if isinstance(contender, RawFS):
        # s3fs's own cat_file defaults: a HEAD for the size, then concurrent ranged GETs past 50 MiB
        fs, path = contender.fs, f"{contender.base}/large/value"
        return lambda data: (fs.pipe_file(path, data), fs.cat_file(path))[1]
    from airflow.sdk.state import TaskScope

    backend, scope = contender.backend, TaskScope("bench", "large", "t", 0)
    if mode == "primary":
        return lambda text: (backend.set(scope, "big", text), backend.get(scope, "big"))[1]
    return lambda value: backend.deserialize_task_state_store_from_ref(
        backend.serialize_task_state_store_to_ref(value=value, key="big", scope=scope)
    )


def as_mode(data: bytes, mode: str) -> Any:
    """The value as the caller holds it in ``mode``: bytes, JSON text, or Python objects."""
    if mode == "bytes":
        return data
    if mode == "primary":
        return data.decode()
    import orjson

    return orjson.loads(data)


# -- peak RSS, one process per round trip --------------------------------------------------


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure_one_round_trip(name: str, mode: str, payload_file: str, endpoint: str) -> dict[str, float]:
    """This process's RSS (KiB) at each stage of one round trip, and the round trip's seconds.

    Reads its own /proc/self/status: a child's ``wait4`` rusage also reports the RSS of the
    parent it was forked from, which holds the payloads. ``VmHWM`` is reset (clear_refs 5) once
    the value is loaded, so the peak seen is the round trip's, on top of the value.
    """
    for module in MODULES[name]:
        importlib.import_module(module)
    stages: dict[str, float] = {"imports": status_kib("VmRSS")}
    trip = round_trip(s3_contender(name, endpoint), mode)
    trip(as_mode(b"[1]", mode))
    stages["client warm"] = status_kib("VmRSS")
    value = as_mode(Path(payload_file).read_bytes(), mode)
    gc.collect()
    stages["value loaded"] = status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    started = time.perf_counter()
    back = trip(value)
    stages["seconds"] = time.perf_counter() - started
    stages["peak"] = status_kib("VmHWM")
    assert back == value, f"{name} {mode}: the value did not come back whole"
    return stages


def rss_rows(size_mib: int, payload_file: Path, endpoint: str) -> list[str]:
    """Peak RSS of one round trip, each contender and mode in a process of its own."""
    size = payload_file.stat().st_size
    rows = []
    for name, mode in ROUND_TRIPS:
        log(f"large {size_mib} MiB: peak RSS of {name} {mode}")
        out = subprocess.run(
            [sys.executable, __file__, name, mode, str(payload_file), endpoint], capture_output=True, text=True
        )
        if out.returncode != 0:
            raise RuntimeError(f"measuring {name} {mode} failed: {out.stderr[-2000:]}")
        stages = json.loads(out.stdout.strip().splitlines()[-1])
        over_imports = (stages["peak"] - stages["imports"]) * 1024
        over_value = (stages["peak"] - stages["value loaded"]) * 1024
        value_held = (stages["value loaded"] - stages["client warm"]) * 1024
        rows.append(
            f"| {size_mib} MiB | {name}, {MODE_LABELS[mode]} | {over_imports / MIB:.0f} MiB | "
            f"{over_imports / size:.1f}x | {value_held / MIB:.0f} MiB | {over_value / MIB:.0f} MiB | "
            f"{over_value / size:.1f}x | {stages['seconds']:.2f} |"
        )
    return rows


# -- throughput and codecs, in this process ------------------------------------------------


def round_trip_rows(
    size_mib: int, data: bytes, runs: int, endpoint: str, contenders: dict[str, Contender]
) -> list[str]:
    """Each round trip ``runs`` times: median seconds, requests per round trip (counted by the server)."""
    seconds, requests = {}, {}
    for name, mode in ROUND_TRIPS:
        log(f"large {size_mib} MiB: {name} {mode}")
        trip, value = round_trip(contenders[name], mode), as_mode(data, mode)
        counts(endpoint)
        times = []
        for run in range(runs):
            started = time.perf_counter()
            back = trip(value)
            times.append(time.perf_counter() - started)
            assert run > 0 or back == value, f"{name} {mode}: the value did not come back whole"
            del back
        seconds[name, mode] = statistics.median(times)
        requests[name, mode] = {kind: n / runs for kind, n in counts(endpoint).items()}
        del value
    raw = seconds[ROUND_TRIPS[0]]
    rows = []
    for (name, mode), took in seconds.items():
        vs_ours = ratio(seconds["ours", mode], took) if name == "common.io" else "-"
        rows.append(
            f"| {size_mib} MiB | {name}, {MODE_LABELS[mode]} | {requests_cell(requests[name, mode])} | {took:.3f} | "
            f"{len(data) / MIB / took:.0f} | {raw / took:.0%} | {vs_ours} |"
        )
    return rows


def gc_paused(call: Callable[[Any], Any], argument: Any) -> Any:
    gc.disable()
    try:
        return call(argument)
    finally:
        gc.enable()


def codec_row(size_mib: int, value: Any, data: bytes, runs: int) -> str:
    """orjson against the stdlib's json, same value, same process; loads also with the GC paused."""
    import orjson

    medians = {}
    for name, dumps, loads in (("orjson", orjson.dumps, orjson.loads), ("json", json.dumps, json.loads)):
        medians[name] = (
            statistics.median(timed(partial(dumps, value)) for _ in range(runs)),
            statistics.median(timed(partial(loads, data)) for _ in range(runs)),
            statistics.median(timed(partial(gc_paused, loads, data)) for _ in range(runs)),
        )
    o, j = medians["orjson"], medians["json"]
    return (
        f"| {size_mib} MiB | "
        + " | ".join(f"{o[i] * 1000:.0f} | {j[i] * 1000:.0f} | {j[i] / o[i]:.1f}x" for i in range(3))
        + " |"
    )


def large_tables(
    sizes: list[int], repeats: int, endpoint: str, contenders: dict[str, Contender], workdir: Path
) -> list[str]:
    import orjson

    throughput, memory, codecs = [], [], []
    for size_mib in sizes:
        runs = max(repeats, min(15, 64 // size_mib))  # small values: more runs, same total time
        value = nested_payload(size_mib * MIB)
        data = orjson.dumps(value)
        log(f"large {size_mib} MiB ({len(data):,} bytes): codecs")
        codecs.append(codec_row(size_mib, value, data, runs))
        del value
        throughput += round_trip_rows(size_mib, data, runs, endpoint, contenders)
        payload_file = workdir / f"payload-{size_mib}.json"
        payload_file.write_bytes(data)
        del data  # the measuring processes read the file; keep this process small meanwhile
        memory += rss_rows(size_mib, payload_file, endpoint)
        payload_file.unlink()

    return [
        f"\n### Large values: one round trip (set, then get) of nested JSON (S3; median of max({repeats}, 64 / MiB) "
        "round trips, at most 15, the first one included)\n",
        "| value | backend | requests | seconds | MiB/s | vs raw (throughput) | ours / common.io (time) |",
        "|---|---|---|---:|---:|---:|---:|",
        *throughput,
        "\n### Large values: peak RSS of a process doing one round trip (each its own process; read from "
        "/proc/self/status)\n",
        "*peak − imports*: the round trip's peak RSS minus the same process's RSS after its imports "
        "(includes the S3 client, the caller's own value and the copies). *value held*: what the "
        "caller's value itself takes (JSON text in primary mode, the Python objects in offload mode). "
        "*added by the round trip*: peak minus the RSS just before it, value already loaded.\n",
        "| value | process | peak − imports | / payload | value held | added by the round trip | / payload | seconds |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *memory,
        "\n### orjson against the stdlib's json (same value, same process, as many runs as the round trips; ms)\n",
        "| value | dumps: orjson | json | json / orjson | loads: orjson | json | json / orjson "
        "| loads, GC paused: orjson | json | json / orjson |",
        "|---|" + "---:|" * 9,
        *codecs,
    ]


if __name__ == "__main__":
    print(json.dumps(measure_one_round_trip(*sys.argv[1:5])))
