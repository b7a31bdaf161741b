"""Metrics of the GC and the audit: the real command (and a real `airflow dags test`) against moto,
reporting to a real UDP StatsD listener and a real OTLP/HTTP receiver in this process, configured
only through Airflow's ``[metrics]`` settings (env vars or airflow.cfg). Every value sent is
compared with the JSON summary of the same run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.state import AssetScope, TaskScope
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from objstore_backend.backend import ObjectStoreBackend
from objstore_backend.config import StoreSettings
from objstore_backend.metrics import GC_GAUGES
from tests.servers import free_port
from tests.statsd_listener import StatsdListener

OBJSTORE_BACKEND = str(Path(sys.executable).with_name("objstore-backend"))
PAST = datetime.now(timezone.utc) - timedelta(minutes=5)
FUTURE = datetime.now(timezone.utc) + timedelta(days=1)
AUDIT_TOTALS = {
    "audit.keys": lambda inventory: inventory["keys"],
    "audit.bytes": lambda inventory: inventory["bytes"],
    "audit.expired_backlog_keys": lambda inventory: inventory["expired_backlog"]["keys"],
    "audit.expired_backlog_bytes": lambda inventory: inventory["expired_backlog"]["bytes"],
}


class OTLPReceiver:
    """An OTLP/HTTP metrics endpoint: decodes each export, keeps the last value of every point."""

    def __init__(self) -> None:
        self.points: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
        self.services: set[str] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = ExportMetricsServiceRequest()
                request.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.receive(self.path, request)
                body = ExportMetricsServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def receive(self, path: str, request: ExportMetricsServiceRequest) -> None:
        assert path == "/v1/metrics"
        for resource_metrics in request.resource_metrics:
            for attribute in resource_metrics.resource.attributes:
                if attribute.key == "service.name":
                    self.services.add(attribute.value.string_value)
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data")
                    for point in getattr(metric, kind).data_points:
                        tags = tuple(sorted((a.key, a.value.string_value) for a in point.attributes))
                        value = point.sum if kind == "histogram" else getattr(point, point.WhichOneof("value"))
                        self.points[(metric.name, kind, tags)] = value


@pytest.fixture
def otlp() -> Iterator[OTLPReceiver]:
    receiver = OTLPReceiver()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture
def store(s3_bucket: str, s3_options: dict[str, Any]) -> list[str]:
    """An S3 store with expired, live and never-expiring keys; the command's store flags."""
    path = f"s3://{s3_bucket}/airflow/state/"
    backend = ObjectStoreBackend(StoreSettings(path=path, storage_options=s3_options))
    for number in range(6):
        scope = TaskScope(f"etl{number % 3}", f"run-{number}", "extract")
        backend.set(scope, "old", json.dumps({"run": number}), expires_at=PAST - timedelta(hours=number))
        backend.set(scope, "live", '"1"', expires_at=FUTURE)
    backend.set(AssetScope(asset_id=7), "watermark", '"2026-01-01"')
    return ["--path", path, "--storage-options", json.dumps(s3_options)]


def run_command(home: Path, *argv: str, **env: str) -> tuple[int, Any, str]:
    """Run ``objstore-backend`` without any Airflow or objstore-backend setting but ``env``:
    (exit status, the JSON summary, stderr)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "OBJSTORE_BACKEND"))}
    clean.update(AIRFLOW_HOME=str(home), **env)
    ran = subprocess.run([OBJSTORE_BACKEND, *argv, "--json"], env=clean, capture_output=True, text=True, timeout=120)
    return ran.returncode, json.loads(ran.stdout.splitlines()[-1]), ran.stderr


def statsd_env(listener: StatsdListener, **more: str) -> dict[str, str]:
    return {
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": str(listener.port),
        **more,
    }


def parse_statsd(lines: list[str]) -> dict[str, tuple[float, str]]:
    """name (tags included, as sent) -> (value, type); each name sent once."""
    parsed = {}
    for line in lines:
        name, rest = line.split(":", 1)
        value, kind = rest.split("|", 1)
        assert name + "|" + kind not in parsed, f"{line} sent twice"
        parsed[name + ("|" + kind.split("|", 1)[1] if "|" in kind else "")] = (float(value), kind.split("|")[0])
    return parsed


def expected_gc(summary: dict[str, Any], name: Any, shard: str) -> dict[str, tuple[float, str]]:
    """The gauges and counter a GC run's summary must produce, as ``name(field, tags)`` spells them."""
    expected = {name(f"gc.{field}", {"shard": shard}): (float(summary[field]), "g") for field in GC_GAUGES}
    expected[name("gc.runs", {"outcome": "failed" if summary["errors"] else "ok"})] = (1.0, "c")
    return expected


def expected_audit(report: dict[str, Any], name: Any) -> dict[str, tuple[float, str]]:
    inventory = report["inventory"]
    expected = {name(stat, {}): (float(total(inventory)), "g") for stat, total in AUDIT_TOTALS.items()}
    for level in ("info", "warning", "error"):
        count = sum(1 for finding in report["findings"] if finding["level"] == level)
        expected[name("audit.findings", {"level": level})] = (float(count), "g")
    expected[name("audit.runs", {"outcome": "failed" if inventory["errors"] else "ok"})] = (1.0, "c")
    return expected


def plain_name(prefix: str) -> Any:
    return lambda stat, tags: f"{prefix}.objstore_backend.{stat}" + "".join(f".{k}_{v}" for k, v in tags.items())


def datadog_name(prefix: str, *constant: str) -> Any:
    def name(stat: str, tags: dict[str, str]) -> str:
        all_tags = [*constant, *(f"{k}:{v}" for k, v in tags.items())]
        return f"{prefix}.objstore_backend.{stat}" + (f"|#{','.join(all_tags)}" if all_tags else "")

    return name


def influxdb_name(prefix: str) -> Any:
    return lambda stat, tags: f"{prefix}.objstore_backend.{stat}" + "".join(f",{k}={v}" for k, v in tags.items())


def pop_backlog_age(sent: dict[Any, tuple[float, str]], key: Any, oldest: str) -> None:
    """The one audit value its report holds as a date: the backlog's age, a few seconds before now."""
    age, kind = sent.pop(key)
    expected_age = (datetime.now(timezone.utc) - datetime.fromisoformat(oldest)).total_seconds()
    assert expected_age - 60 <= age <= expected_age and kind == "g"


def test_gc_and_audit_report_what_their_json_says_to_plain_statsd(
    tmp_path: Path, store: list[str], statsd_listener: StatsdListener
) -> None:
    """Tags become name segments; the audit's backlog before the sweep, the sweep's shard 1 of 2."""
    status, report, stderr = run_command(tmp_path, "audit", *store, **statsd_env(statsd_listener))
    assert status == 0 and stderr == ""
    sent = parse_statsd(statsd_listener.lines())
    name = plain_name("airflow")
    oldest = report["inventory"]["expired_backlog"]["oldest_expiry"]
    assert report["inventory"]["expired_backlog"]["keys"] == 6 and oldest
    pop_backlog_age(sent, name("audit.oldest_expiry_age_seconds", {}), oldest)
    assert sent == expected_audit(report, name)

    started = time.time()
    for shard in ("0", "1"):
        status, summary, stderr = run_command(
            tmp_path, "gc", *store, "--shard", f"{shard}/2", **statsd_env(statsd_listener)
        )
        assert status == 0 and stderr == "" and summary["scanned"] > 0
        sent = parse_statsd(statsd_listener.lines())
        finished_at, kind = sent.pop(name("gc.finished_at", {"shard": shard}))
        assert started <= finished_at <= time.time() and kind == "g"
        assert sent == expected_gc(summary, name, shard)


def test_a_dry_run_reports_nothing(tmp_path: Path, store: list[str], statsd_listener: StatsdListener) -> None:
    status, summary, _ = run_command(tmp_path, "gc", *store, "--dry-run", **statsd_env(statsd_listener))
    assert status == 0 and summary["dry_run"] and summary["expired"] == 6
    assert statsd_listener.lines() == []


@pytest.mark.parametrize("style", ["datadog", "influxdb"])
def test_tags_as_tags_with_the_settings_read_from_airflow_cfg(
    tmp_path: Path, store: list[str], statsd_listener: StatsdListener, style: str
) -> None:
    """airflow.cfg alone configures the command (no env var), a prefix of its own included."""
    options = (
        "statsd_datadog_enabled = True\nstatsd_datadog_tags = team:data,env:test\n"
        if style == "datadog"
        else "statsd_on = t\nstatsd_influxdb_enabled = 1\n"
    )
    (tmp_path / "airflow.cfg").write_text(
        f"[core]\nload_examples = False\n\n[metrics]\n{options}statsd_host = 127.0.0.1\n"
        f"statsd_port = {statsd_listener.port}\nstatsd_prefix = ops.airflow\n"
    )
    name = datadog_name("ops.airflow", "team:data", "env:test") if style == "datadog" else influxdb_name("ops.airflow")
    status, summary, stderr = run_command(tmp_path, "gc", *store)
    assert status == 0 and stderr == ""
    sent = parse_statsd(statsd_listener.lines())
    sent.pop(name("gc.finished_at", {"shard": "0"}))
    assert sent == expected_gc(summary, name, "0")

    status, report, stderr = run_command(tmp_path, "audit", *store)
    sent = parse_statsd(statsd_listener.lines())
    assert sent.pop(name("audit.oldest_expiry_age_seconds", {})) == (0.0, "g")  # the GC took the backlog
    assert sent == expected_audit(report, name)


def test_allow_and_block_lists_pick_names_as_airflow_does(
    tmp_path: Path, store: list[str], statsd_listener: StatsdListener
) -> None:
    """Regular expressions searched in the name without the prefix; an allow list makes the block list moot."""
    run_command(
        tmp_path, "audit", *store, **statsd_env(statsd_listener, AIRFLOW__METRICS__METRICS_BLOCK_LIST="FINDINGS,runs")
    )
    assert sorted(line.split(":")[0] for line in statsd_listener.lines()) == sorted(
        plain_name("airflow")(stat, {}) for stat in [*AUDIT_TOTALS, "audit.oldest_expiry_age_seconds"]
    )
    allow = {
        "AIRFLOW__METRICS__METRICS_ALLOW_LIST": r"gc\.deleted,^objstore_backend\.gc\.runs",
        "AIRFLOW__METRICS__METRICS_BLOCK_LIST": "gc",
    }
    status, summary, _ = run_command(tmp_path, "gc", *store, **statsd_env(statsd_listener, **allow))
    assert status == 0 and sorted(statsd_listener.lines()) == [
        f"airflow.objstore_backend.gc.deleted.shard_0:{summary['deleted']}|g",
        "airflow.objstore_backend.gc.runs.outcome_ok:1|c",
    ]


def test_otlp_receives_the_same_names_values_and_attributes_when_the_command_exits(
    tmp_path: Path, store: list[str], otlp: OTLPReceiver
) -> None:
    """Exported once, when the command ends (the export interval is a minute): nothing is lost."""
    env = {
        "AIRFLOW__METRICS__OTEL_ON": "True",
        "AIRFLOW__METRICS__OTEL_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__OTEL_PORT": str(otlp.port),
        "AIRFLOW__METRICS__OTEL_SERVICE": "objstore-gc",
    }
    status, report, stderr = run_command(tmp_path, "audit", *store, **env)
    assert status == 0 and stderr == ""
    status, summary, stderr = run_command(tmp_path, "gc", *store, "--shard", "1/2", **env)
    assert status == 0 and stderr == ""

    def name(stat: str, tags: dict[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
        return f"airflow.objstore_backend.{stat}", tuple(sorted(tags.items()))

    received = {(metric, tags): (value, kind) for (metric, kind, tags), value in otlp.points.items()}
    kinds = {"gauge": "g", "sum": "c"}
    received = {key: (value, kinds[kind]) for key, (value, kind) in received.items()}
    assert otlp.services == {"objstore-gc"}
    finished_at, _ = received.pop(name("gc.finished_at", {"shard": "1"}))
    assert time.time() - 120 < finished_at <= time.time()
    oldest = report["inventory"]["expired_backlog"]["oldest_expiry"]
    pop_backlog_age(received, name("audit.oldest_expiry_age_seconds", {}), oldest)
    assert received == {**expected_audit(report, name), **expected_gc(summary, name, "1")}


CLOSED_PORT = free_port()  # nothing listens there


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"AIRFLOW__METRICS__STATSD_ON": "True", "AIRFLOW__METRICS__STATSD_HOST": "statsd.invalid"}, "STATSD_HOST"),
        (
            {
                "AIRFLOW__METRICS__STATSD_ON": "True",
                "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
                "AIRFLOW__METRICS__STATSD_PORT": str(CLOSED_PORT),
            },
            "STATSD_PORT",
        ),
        ({"AIRFLOW__METRICS__STATSD_ON": "True", "AIRFLOW__METRICS__STATSD_PORT": "81xx"}, "STATSD_PORT"),
        (
            {
                "AIRFLOW__METRICS__OTEL_ON": "True",
                "AIRFLOW__METRICS__OTEL_HOST": "127.0.0.1",
                "AIRFLOW__METRICS__OTEL_PORT": str(CLOSED_PORT),
            },
            "OTEL_PORT",
        ),
        ({"AIRFLOW__METRICS__STATSD_ON": "True", "AIRFLOW__METRICS__STATSD_PREFIX": "air flow"}, "STATSD_PREFIX"),
        ({"AIRFLOW__METRICS__OTEL_ON": "True", "AIRFLOW__METRICS__OTEL_PREFIX": ".airflow"}, "OTEL_PREFIX"),
        ({"AIRFLOW__METRICS__OTEL_ON": "True", "AIRFLOW__METRICS__OTEL_PREFIX": "_airflow"}, "OTEL_PREFIX"),
        (
            {"AIRFLOW__METRICS__STATSD_ON": "True", "AIRFLOW__METRICS__METRICS_ALLOW_LIST": "gc.(["},
            "METRICS_ALLOW_LIST",
        ),
        ({"AIRFLOW__METRICS__STATSD_ON": "maybe"}, "STATSD_ON"),
    ],
    ids=[
        "unresolvable-host",
        "closed-statsd-port",
        "bad-port",
        "closed-otlp-port",
        "bad-prefix",
        "bad-otel-prefix",
        "otel-prefix-not-a-letter-first",
        "bad-allow-list",
        "bad-boolean",
    ],
)
def test_a_bad_metrics_setting_costs_one_warning_naming_it_and_nothing_else(
    tmp_path: Path, store: list[str], env: dict[str, str], setting: str
) -> None:
    """The audit (read-only: the same report every time) with and without the broken sink."""
    _, reference, _ = run_command(tmp_path, "audit", *store)
    status, report, stderr = run_command(tmp_path, "audit", *store, **env)
    assert (status, report) == (0, reference)
    assert len(stderr.splitlines()) == 1 and f"AIRFLOW__METRICS__{setting}" in stderr, stderr
    assert "metrics off" in stderr


@pytest.mark.airflow
def test_the_gc_dag_reports_its_sweep_to_statsd_in_a_real_airflow_run(
    migrated_db: Path,
    tmp_path: Path,
    store: list[str],
    s3_bucket: str,
    s3_options: dict[str, Any],
    statsd_listener: StatsdListener,
) -> None:
    """`airflow dags test` with ``[metrics] statsd_on``: the sweep's gauges equal its XCom summary."""
    from tests.test_airflow_dags import _s3_config, output_of, start_dag, task_instances

    started = time.time()
    run = start_dag(
        migrated_db, tmp_path, "gc_no_retry", **_s3_config(s3_bucket, s3_options), **statsd_env(statsd_listener)
    )
    output = output_of(run, tmp_path)
    sweep = task_instances(tmp_path, "gc_no_retry")[("sweep", 0)]
    assert sweep["state"] == "success" and sweep["xcom"]["deleted"] == 6, output[-5000:]
    sent = parse_statsd(statsd_listener.lines())
    name = plain_name("airflow")
    finished_at, _ = sent.pop(name("gc.finished_at", {"shard": "0"}))
    assert started <= finished_at <= time.time()
    ours = {key: value for key, value in sent.items() if ".objstore_backend." in key}
    assert ours == expected_gc(sweep["xcom"], name, "0")
