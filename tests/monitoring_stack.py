"""terraform-example/monitoring/ running for real: a StatsD exporter applying its mapping file, a
Prometheus (Debian's package) scraping it with its alert rules loaded, and the dashboard's queries.

Used by tests/test_dashboard.py and scripts/dashboard_screenshot.py. The exporter is the stand-in
tests/statsd_bridge.py (no statsd_exporter binary can be installed here); Prometheus is real.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.servers import free_port

REPO = Path(__file__).resolve().parent.parent
MONITORING = REPO / "terraform-example" / "monitoring"
MAPPING = MONITORING / "statsd-mapping.yml"
ALERTS = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"


@dataclass(frozen=True)
class Target:
    """One query of one dashboard panel."""

    panel: dict[str, Any]
    expr: str
    legend: str


def dashboard_targets() -> list[Target]:
    """Every query of every panel of the dashboard, rows skipped."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [
        Target(panel, target["expr"], target.get("legendFormat", ""))
        for panel in panels
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def promql(expr: str, rate_interval: str) -> str:
    """The query as Grafana sends it to Prometheus: ``$__rate_interval`` filled in."""
    return expr.replace("$__rate_interval", rate_interval)


def metric_names(expr: str) -> set[str]:
    """The objstore_backend metrics a query reads (a histogram's by its base name)."""
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in re.findall(r"\bobjstore_backend_\w+", expr)}


def send_statsd(port: int, lines: Iterable[str]) -> None:
    """StatsD lines over real UDP, one datagram each, as a StatsD client sends them."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for line in lines:
            sock.sendto(line.encode(), ("127.0.0.1", port))


@contextmanager
def statsd_exporter() -> Iterator[tuple[int, str]]:
    """The exporter with the mapping file while the block runs: (its UDP port, its /metrics URL)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.statsd_bridge", "--mapping", str(MAPPING)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ports = dict(part.split("=") for part in process.stdout.readline().split())
        yield int(ports["udp"]), f"http://127.0.0.1:{ports['http']}/metrics"
    finally:
        process.terminate()
        process.wait()


@contextmanager
def prometheus(workdir: Path, metrics_url: str, scrape_interval: str = "1s") -> Iterator[str]:
    """A Prometheus scraping ``metrics_url`` and evaluating alerts.yml while the block runs: its URL."""
    target = urllib.parse.urlsplit(metrics_url).netloc
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": "statsd-exporter", "static_configs": [{"targets": [target]}]}],
    }
    (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    command = [
        "prometheus",
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with (workdir / "prometheus.log").open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_first_scrape(url)
        yield url
    finally:
        process.terminate()
        process.wait()


def wait_for_first_scrape(url: str, timeout: float = 20.0) -> None:
    """Until Prometheus is ready (its /-/ready answers 503 while it starts) and has scraped the
    exporter once (it applies new targets every 5 s)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2):
                break
        except OSError:  # refused, or 503 while starting
            assert time.monotonic() < deadline, f"Prometheus at {url} never became ready"
            time.sleep(0.1)
    while not any(target["health"] == "up" for target in api(url, "/api/v1/targets")["activeTargets"]):
        assert time.monotonic() < deadline, f"Prometheus never scraped: {api(url, '/api/v1/targets')}"
        time.sleep(0.2)


def api(url: str, path: str, **params: str | float) -> Any:
    """GET a Prometheus HTTP API endpoint: its ``data``; a query error raises with Prometheus's message."""
    query = urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(f"{url}{path}?{query}", timeout=10) as answer:
            return json.load(answer)["data"]
    except urllib.error.HTTPError as error:
        raise AssertionError(f"{params}: {json.load(error).get('error')}") from error
