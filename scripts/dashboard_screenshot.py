"""docs/metrics-dashboard.png: terraform-example/monitoring/grafana-dashboard.json drawn with the
data of a real run, for the README.

The run: a local store gets real calls through ObjectStoreBackend (sets with and without expiry,
gets, deletes, clears, and a read of a damaged object), and each round runs the real
`objstore-backend audit` and, every other round, `objstore-backend gc` on both shards. The store,
the GC and the audit all report their own metrics, turned on by Airflow's [metrics] statsd_on
settings in this process as in the commands'; their StatsD lines go over UDP to the exporter
(tests/statsd_bridge.py applying statsd-mapping.yml), which a real Prometheus scrapes every second.
Grafana cannot run here, so each panel's queries go to Prometheus's query_range API as Grafana
sends them, and this script draws the answers as inline SVG in the dashboard's grid; headless
Chromium takes the screenshot.

    python scripts/dashboard_screenshot.py [--rounds 10] [--out docs/metrics-dashboard.png]
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from airflow.sdk.observability import stats  # noqa: E402
from airflow.sdk.observability.metrics import stats_utils  # noqa: E402
from airflow.sdk.state import TaskScope  # noqa: E402

from objstore_backend import metrics  # noqa: E402
from objstore_backend.backend import ObjectStoreBackend  # noqa: E402
from objstore_backend.config import StoreSettings  # noqa: E402
from objstore_backend.errors import CorruptObjectError  # noqa: E402
from tests.monitoring_stack import (  # noqa: E402
    DASHBOARD,
    api,
    dashboard_targets,
    prometheus,
    promql,
    statsd_exporter,
)
from tests.test_plugin import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

SHARDS = 2
ROUND_SECONDS = 6.0
RATE_INTERVAL = "15s"  # what Grafana's $__rate_interval is for a 1 s scrape and this range's step
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#fade2a", "#37872d"]


# --- the run -------------------------------------------------------------------------------------


def statsd_settings(port: int) -> dict[str, str]:
    """Airflow's [metrics] settings that send StatsD to the exporter, as the deployment sets them."""
    return {
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": str(port),
    }


def report_store_calls_to(port: int) -> None:
    """This process's store calls reported to the exporter: the settings in the environment, then
    Airflow's ``Stats`` (set up when the SDK was imported, with metrics off) and the store's metrics
    built again from them."""
    os.environ.update(statsd_settings(port))
    stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=True)
    metrics.shutdown()


def command(store: Path, port: int, *args: str) -> None:
    """`objstore-backend ARGS` on the store, reporting to the exporter through Airflow's [metrics]
    settings, as the CronJobs do."""
    run = subprocess.run(
        [sys.executable, "-m", "objstore_backend.cli", *args, "--path", str(store), "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **statsd_settings(port)},
    )
    assert run.returncode == 0, run.stdout + run.stderr


def store_round(backend: ObjectStoreBackend, path: Path, round_: int) -> None:
    """One round of task-state traffic: some keys expire before the next round, some never."""
    now = datetime.now(timezone.utc)
    for task in range(4 + round_ % 3):
        scope = TaskScope("nightly_export", f"run_{round_}", f"task_{task}")
        for key in range(12):
            value = json.dumps({"offset": key * 1000, "round": round_, "pad": "x" * (100 * key)})
            expires = None if key % 4 == 0 else now + timedelta(seconds=2 if key % 2 else 3600)
            backend.set(scope, f"k{key}", value, expires_at=expires)
            assert backend.get(scope, f"k{key}") == value
            backend.get(scope, f"k{key}")
        backend.delete(scope, "k1")
        if task == 0:
            backend.clear(scope)
    if round_ > 0:  # an object damaged in the first round: each read of it fails as corrupt
        damaged = TaskScope("nightly_export", "run_0", "task_1")
        (path / "task/nightly_export/run_0/task_1/-1/k4").write_bytes(b"\x00 not json")
        try:
            backend.get(damaged, "k4")
        except CorruptObjectError:
            pass
        else:
            raise AssertionError("the damaged object was read as sound")


def run(port: int, store_path: Path, rounds: int) -> None:
    report_store_calls_to(port)
    backend = ObjectStoreBackend(StoreSettings(path=str(store_path)))
    for round_ in range(rounds):
        started = time.monotonic()
        store_round(backend, store_path, round_)
        command(store_path, port, "audit", "--fail-on", "error")
        if round_ % 2 == 1:
            for shard in range(SHARDS):
                command(store_path, port, "gc", "--shard", f"{shard}/{SHARDS}")
        time.sleep(max(0.0, ROUND_SECONDS - (time.monotonic() - started)))
    metrics.shutdown()


# --- drawing the dashboard -----------------------------------------------------------------------


def format_value(value: float, unit: str) -> str:
    """A value as Grafana shows it in the panel's unit."""
    if math.isnan(value):
        return "NaN"
    if unit == "percentunit":
        return f"{value * 100:.3g} %"
    if unit in ("bytes", "Bps"):
        suffix = "/s" if unit == "Bps" else ""
        for name in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(value) < 1024 or name == "TiB":
                return f"{value:.3g} {name}{suffix}"
            value /= 1024
    if unit == "s":
        if 0 < abs(value) < 1:
            return f"{value * 1000:.3g} ms"
        for name, size in (("h", 3600), ("min", 60)):
            if abs(value) >= size:
                return f"{value / size:.3g} {name}"
        return f"{value:.3g} s"
    suffix = {"ops": " ops/s", "short": ""}[unit]
    for name, size in (("M", 1e6), ("K", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{name}{suffix}"
    return f"{value:.3g}{suffix}"


def legend(template: str, labels: dict[str, str]) -> str:
    for name, value in labels.items():
        template = template.replace("{{" + name + "}}", value)
    return template or "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items() if k != "__name__") + "}"


Series = list[tuple[str, list[tuple[float, float]]]]


def timeseries_svg(series: Series, unit: str, span: tuple[float, float], width: int, height: int) -> str:
    """The panel's graph over the dashboard's time span, as Grafana's time series panel draws it."""
    points = [value for _, values in series for _, value in values if math.isfinite(value)]
    if not points:
        return '<div class="nodata">No data</div>'
    top = max(max(points), 0) * 1.1 or 1
    bottom = min(min(points), 0)
    left, right, plot_h = 78, width - 10, height - 24
    start, end = span

    def x(t: float) -> float:
        return left + (t - start) / ((end - start) or 1) * (right - left)

    def y(v: float) -> float:
        return 6 + (top - v) / ((top - bottom) or 1) * (plot_h - 6)

    parts = []
    for i in range(5):
        v = bottom + (top - bottom) * i / 4
        parts.append(f'<line x1="{left}" x2="{right}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{format_value(v, unit)}</text>')
    ticks = 5 if width > 400 else 3
    for i in range(ticks):
        t = start + (end - start) * i / (ticks - 1)
        label = datetime.fromtimestamp(t).strftime("%H:%M:%S")
        anchor = "start" if i == 0 else "end" if i == ticks - 1 else "middle"
        parts.append(f'<text x="{x(t):.1f}" y="{height - 4}" text-anchor="{anchor}">{label}</text>')
    for i, (_, values) in enumerate(series):
        path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in values if math.isfinite(v))
        parts.append(f'<polyline points="{path}" stroke="{PALETTE[i % len(PALETTE)]}"/>')
    return f'<svg width="{width}" height="{height}">{"".join(parts)}</svg>'


def render(url: str, start: float, end: float, step: float) -> str:
    """The dashboard as HTML, every panel drawn from its queries' answers over [start, end]."""
    dashboard = json.loads(DASHBOARD.read_text())
    answers: dict[int, Series] = {}
    for target in dashboard_targets():
        data = api(
            url, "/api/v1/query_range", query=promql(target.expr, RATE_INTERVAL), start=start, end=end, step=step
        )
        for result in data["result"]:
            values = [(float(t), float(v)) for t, v in result["values"]]
            answers.setdefault(target.panel["id"], []).append((legend(target.legend, result["metric"]), values))
    column, unit_h, gap = 1560 / 24, 34, 8
    boxes = []
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        box_x, box_y = 20 + grid["x"] * column, 64 + grid["y"] * unit_h
        width, height = grid["w"] * column - gap, grid["h"] * unit_h - gap
        style = f"left:{box_x:.0f}px;top:{box_y:.0f}px;width:{width:.0f}px;height:{height:.0f}px"
        title = html.escape(panel["title"])
        if panel["type"] == "row":
            boxes.append(f'<div class="row" style="{style}">{title}</div>')
            continue
        series, unit = answers.get(panel["id"], []), panel["fieldConfig"]["defaults"]["unit"]
        if panel["type"] == "stat":
            last = [values[-1][1] for _, values in series if values]
            body = f'<div class="stat">{format_value(last[-1], unit) if last else "No data"}</div>'
        else:
            names = [name for name, _ in series]
            legend_rows = math.ceil(sum(len(name) * 7 + 34 for name in names) / (width - 16)) or 1
            body = timeseries_svg(series, unit, (start, end), int(width) - 16, int(height) - 46 - 18 * legend_rows)
            keys = "".join(
                f'<span><i style="background:{PALETTE[i % len(PALETTE)]}"></i>{html.escape(name)}</span>'
                for i, (name, _) in enumerate(series)
            )
            body += f'<div class="legend">{keys}</div>'
        boxes.append(f'<div class="panel" style="{style}"><h3>{title}</h3>{body}</div>')
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"]) * unit_h + 72
    span = f"{datetime.fromtimestamp(start):%H:%M:%S} to {datetime.fromtimestamp(end):%H:%M:%S}"
    return f"""<!doctype html><html><head><meta charset="utf-8"><style>
body {{ margin: 0; background: #111217; color: #ccccdc; font: 13px Inter, "DejaVu Sans", sans-serif;
       position: relative; width: 1600px; height: {bottom}px; }}
header {{ position: absolute; left: 20px; top: 16px; font-size: 18px; }}
header small {{ color: #8e8e9e; font-size: 13px; margin-left: 16px; }}
.panel {{ position: absolute; box-sizing: border-box; background: #181b1f; border: 1px solid #2c3235;
          border-radius: 4px; padding: 8px; overflow: hidden; }}
.panel h3 {{ margin: 0 0 6px; font-size: 13px; font-weight: 500; }}
.row {{ position: absolute; font-size: 15px; font-weight: 500; padding-top: 4px; }}
.stat {{ color: #73bf69; font-size: 34px; font-weight: 500; text-align: center; margin-top: 14px; }}
.nodata {{ color: #8e8e9e; text-align: center; margin-top: 60px; }}
svg text {{ fill: #8e8e9e; font-size: 11px; }}
svg .grid {{ stroke: #2c3235; }}
svg polyline {{ fill: none; stroke-width: 2; }}
.legend {{ font-size: 12px; line-height: 18px; }}
.legend span {{ margin-right: 14px; white-space: nowrap; }}
.legend i {{ display: inline-block; width: 14px; height: 4px; margin: 0 5px 3px 0; border-radius: 2px; }}
</style></head><body><header>{html.escape(dashboard["title"])}<small>{span}</small></header>
{"".join(boxes)}</body></html>"""


def screenshot(page_html: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.set_content(page_html)
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "metrics-dashboard.png")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir, statsd_exporter() as (port, metrics_url):
        with prometheus(Path(workdir), metrics_url) as url:
            start = time.time()
            run(port, Path(workdir) / "store", args.rounds)
            time.sleep(2)  # the last lines scraped
            page_html = render(url, start, time.time(), step=1)
    screenshot(page_html, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
