"""terraform-example/monitoring/: the StatsD mapping, the alert rules and the Grafana dashboard hold
together, checked with real parts: promtool (check and unit tests of the rules), a real Prometheus
answering every panel's query, StatsD lines over real UDP to an exporter applying the mapping file
(the stand-in tests/statsd_bridge.py: no statsd_exporter binary can be installed here).

The names on the wire are the metrics contract (objstore_backend/metrics.py): every metric is
``<prefix>.objstore_backend.<name>``, tags appended as ``.<tag>_<value>`` by plain StatsD.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.monitoring_stack import (
    ALERTS,
    MONITORING,
    api,
    dashboard_targets,
    metric_names,
    prometheus,
    promql,
    send_statsd,
    statsd_exporter,
)

GC_FIELDS = (
    "scanned expired deleted kept live never_expire offload offload_orphans errors bytes_deleted "
    "list_requests metadata_reads index_hits seconds finished_at"
).split()
AUDIT_GAUGES = "keys bytes expired_backlog_keys expired_backlog_bytes oldest_expiry_age_seconds".split()
STORE_OPS = ("get", "set", "delete", "clear")


def contract() -> dict[str, str]:
    """{a StatsD line of each metric of the contract: the Prometheus series it must become}."""
    lines = {
        f"airflow.objstore_backend.gc.{name}.shard_3:7|g": f'objstore_backend_gc_{name}{{shard="3"}}'
        for name in GC_FIELDS
    }
    lines["airflow.objstore_backend.gc.runs.outcome_failed:1|c"] = 'objstore_backend_gc_runs_total{outcome="failed"}'
    lines |= {f"airflow.objstore_backend.audit.{name}:7|g": f"objstore_backend_audit_{name}" for name in AUDIT_GAUGES}
    lines["airflow.objstore_backend.audit.findings.level_warning:2|g"] = (
        'objstore_backend_audit_findings{level="warning"}'
    )
    lines["airflow.objstore_backend.audit.runs.outcome_ok:1|c"] = 'objstore_backend_audit_runs_total{outcome="ok"}'
    for op in STORE_OPS:
        labels = f'{{mode="offload",op="{op}"}}'
        store = f"airflow.objstore_backend.store.{op}"
        lines[f"{store}.mode_offload:1|c"] = f"objstore_backend_store_ops_total{labels}"
        lines[f"{store}.duration.mode_offload:3.2|ms"] = f"objstore_backend_store_duration_seconds_sum{labels}"
        lines[f"{store}.bytes.mode_offload:512|c"] = f"objstore_backend_store_bytes_total{labels}"
        lines[f"{store}.retries.mode_offload:2|c"] = f"objstore_backend_store_retries_total{labels}"
        errors = f'objstore_backend_store_errors_total{{kind="throttled",{labels[1:]}'
        lines[f"{store}.errors.mode_offload.kind_throttled:1|c"] = errors
    return lines


def read_exposition(text: str) -> dict[str, float]:
    """{series: value} of a /metrics page."""
    series = (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {name: float(value) for name, value in series}


def scrape(url: str) -> dict[str, float]:
    return read_exposition(subprocess.run(["curl", "-sf", url], capture_output=True, text=True, check=True).stdout)


@pytest.fixture(scope="module")
def exporter() -> Iterator[tuple[int, str]]:
    with statsd_exporter() as ports:
        yield ports


def exported_after(exporter: tuple[int, str], lines: list[str], wanted: set[str]) -> dict[str, float]:
    """Send ``lines``; the exporter's series once every one of ``wanted`` is there (UDP is async)."""
    port, metrics_url = exporter
    send_statsd(port, lines)
    deadline = time.monotonic() + 10
    while not wanted <= (series := scrape(metrics_url)).keys() and time.monotonic() < deadline:
        time.sleep(0.05)
    return series


def test_the_mapping_turns_every_contract_metric_into_its_series(exporter: tuple[int, str]) -> None:
    expected = contract()
    series = exported_after(exporter, list(expected), set(expected.values()))
    assert set(expected.values()) <= series.keys()
    assert not [name for name in series if name.startswith("statsd_bridge_unmapped")]
    assert series['objstore_backend_gc_deleted{shard="3"}'] == 7
    # a timer arrives in ms and is stored in seconds, in the buckets of the mapping
    assert series['objstore_backend_store_duration_seconds_sum{mode="offload",op="get"}'] == pytest.approx(0.0032)
    assert series['objstore_backend_store_duration_seconds_bucket{mode="offload",op="get",le="0.005"}'] >= 1


def test_the_mapping_reads_tags_out_of_a_dotted_prefix_and_leaves_airflows_own_metrics(
    exporter: tuple[int, str],
) -> None:
    lines = ["prod.eu.objstore_backend.gc.kept.shard_12:5|g", "airflow.scheduler.heartbeat:1|c"]
    series = exported_after(exporter, lines, {'objstore_backend_gc_kept{shard="12"}'})
    assert series['objstore_backend_gc_kept{shard="12"}'] == 5
    assert series['statsd_bridge_unmapped_lines_total{name="airflow.scheduler.heartbeat"}'] == 1


def test_the_dashboard_and_the_alerts_read_exactly_the_mapped_metrics(exporter: tuple[int, str]) -> None:
    expected = contract()
    series = exported_after(exporter, list(expected), set(expected.values()))
    mapped = {name for line in series for name in metric_names(line)}
    shown = {name for target in dashboard_targets() for name in metric_names(target.expr)}
    alerted = {name for rule in alert_rules() for name in metric_names(rule["expr"])}
    assert shown - mapped == set(), "the dashboard reads metrics the mapping never produces"
    assert alerted - mapped == set(), "an alert reads metrics the mapping never produces"
    assert mapped - shown == set(), "metrics the dashboard does not show"


def alert_rules() -> list[dict[str, str]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def promtool(*args: str) -> None:
    run = subprocess.run(["promtool", *args], cwd=MONITORING, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_every_dashboard_query_parses_as_promql(tmp_path: Path) -> None:
    """promtool parses each query as a recording rule; a parse error names the panel."""
    rules = [
        {"record": f"panel_{target.panel['id']}_{i}", "expr": promql(target.expr, "5m")}
        for i, target in enumerate(dashboard_targets())
    ]
    (tmp_path / "queries.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool("check", "rules", str(tmp_path / "queries.yml"))
    assert len(rules) >= 20


def test_the_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    promtool("check", "rules", "alerts.yml")
    promtool("test", "rules", "alerts.test.yml")
    promtool("check", "config", "prometheus.yml")


def test_every_alert_is_tested_firing_and_silent() -> None:
    cases = [
        case
        for test in yaml.safe_load((MONITORING / "alerts.test.yml").read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    for rule in alert_rules():
        own = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in own), f"{rule['alert']} is never tested firing"
        assert any(not case["exp_alerts"] for case in own), f"{rule['alert']} is never tested silent"


def test_a_real_prometheus_answers_every_panel_and_loads_every_alert(exporter: tuple[int, str], tmp_path: Path) -> None:
    port, metrics_url = exporter
    with prometheus(tmp_path, metrics_url) as url:
        lines = list(contract())
        finished_at = f"airflow.objstore_backend.gc.finished_at.shard_3:{time.time():.0f}|g"
        send_statsd(port, [*lines, finished_at])
        time.sleep(2.5)  # two scrapes, then the counters move: rates need two points
        send_statsd(port, [*lines, finished_at])
        time.sleep(2.5)
        empty = [
            f"{target.panel['title']}: {target.expr}"
            for target in dashboard_targets()
            if not api(url, "/api/v1/query", query=promql(target.expr, "10s"))["result"]
        ]
        assert empty == []
        rules = {rule["name"]: rule for group in api(url, "/api/v1/rules")["groups"] for rule in group["rules"]}
        assert sorted(rules) == sorted(rule["alert"] for rule in alert_rules())
        assert {rule["health"] for rule in rules.values()} == {"ok"}
