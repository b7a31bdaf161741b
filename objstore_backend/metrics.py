"""Metrics: the store, the GC and the audit on the StatsD / OpenTelemetry sinks Airflow feeds.

One configuration, Airflow's ``[metrics]`` section (airflow.cfg or ``AIRFLOW__METRICS__*``), off
by default. Inside an Airflow process the metrics go through Airflow's own ``Stats``; the
``objstore-backend`` command (the GC CronJob's image has no Airflow) reads the same settings and
sends to the same StatsD server or OTLP endpoint. A sink that is down never fails the work.

Names are relative to ``<prefix>.objstore_backend.``; tags are sent as tags where the sink takes
them (OpenTelemetry, StatsD with Datadog or InfluxDB tags on) and appended to the name as
``.<tag>_<value>`` in the order given where it does not (plain StatsD), e.g.
``airflow.objstore_backend.gc.scanned.shard_3``. docs/metrics.md lists every name.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from types import ModuleType
from typing import TYPE_CHECKING, Any

from objstore_backend.config import AirflowSetting, airflow_section

if TYPE_CHECKING:
    from objstore_backend.audit import AuditReport
    from objstore_backend.gc import GCReport

__all__ = ["GC_GAUGES", "Metrics", "for_process", "report_audit", "report_gc", "shutdown"]

logger = logging.getLogger(__name__)

Tags = Mapping[str, str]

#: The GCReport fields each GC run reports as ``gc.<field>`` gauges.
GC_GAUGES = (
    "scanned",
    "expired",
    "deleted",
    "kept",
    "live",
    "never_expire",
    "offload",
    "offload_orphans",
    "errors",
    "bytes_deleted",
    "list_requests",
    "metadata_reads",
    "index_hits",
    "seconds",
)


class Metrics:
    """Where the store, the GC and the audit report; this base reports nowhere (metrics off)."""

    def incr(self, stat: str, count: int = 1, *, tags: Tags | None = None) -> None:
        """Add ``count`` to the counter ``stat``."""

    def gauge(self, stat: str, value: float, *, tags: Tags | None = None) -> None:
        """Set the gauge ``stat`` to ``value``."""

    def timing(self, stat: str, milliseconds: float, *, tags: Tags | None = None) -> None:
        """Record one duration of ``stat``."""

    def close(self) -> None:
        """Send what is still buffered, within a few seconds; later metrics are dropped."""


_OFF = Metrics()
_current: Metrics | None = None
_lock = threading.Lock()


def for_process() -> Metrics:
    """This process's metrics, built once from Airflow's ``[metrics]`` settings."""
    global _current
    if _current is None:
        with _lock:
            if _current is None:
                _current = _build()
    return _current


def shutdown() -> None:
    """Flush and close this process's metrics (a command calls it before it exits)."""
    global _current
    with _lock:
        current, _current = _current, None
    if current is not None:
        current.close()


def _forget_after_fork() -> None:
    """A forked child (API server workers) builds its own: the parent's export thread is not in it."""
    global _current
    _current = None


os.register_at_fork(after_in_child=_forget_after_fork)


def _airflow_conf() -> Any | None:
    """Airflow's configuration when this process runs Airflow (it has loaded it already), else None."""
    for name in ("airflow.configuration", "airflow.sdk.configuration"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "conf"):
            return module.conf
    return None


def _airflow_stats() -> ModuleType | None:
    """The copy of Airflow's ``Stats`` this process set up (the API server's or the task runner's)."""
    for name in ("airflow._shared.observability.metrics.stats", "airflow.sdk._shared.observability.metrics.stats"):
        module = sys.modules.get(name)
        if module is not None and getattr(module, "_factory", None) is not None:
            return module
    return None


def _from_airflow_conf(conf: Any) -> Callable[[str], AirflowSetting | None]:
    """Looks ``[metrics]`` options up through Airflow's own configuration (its defaults, env vars, secrets)."""

    def lookup(key: str) -> AirflowSetting | None:
        if not conf.has_option("metrics", key):
            return None
        return AirflowSetting(str(conf.get("metrics", key)), f"[metrics] {key} (AIRFLOW__METRICS__{key.upper()})")

    return lookup


def _build() -> Metrics:
    from objstore_backend.metrics_settings import read_metrics_settings
    from objstore_backend.metrics_sinks import AirflowStatsSink, OTelSink, StatsDSink

    conf = _airflow_conf()
    try:
        lookup = _from_airflow_conf(conf) if conf is not None else airflow_section("metrics").get
        settings = read_metrics_settings(lookup)
        if settings.sink == "off":
            return _OFF
        stats = _airflow_stats() if conf is not None else None
        if stats is not None:
            return AirflowStatsSink(settings, stats)
        return StatsDSink(settings) if settings.sink == "statsd" else OTelSink(settings)
    except ValueError as exc:
        logger.warning("%s; metrics off for this process", exc)
    except ImportError as exc:
        logger.warning(
            "otel_on needs the OpenTelemetry SDK (pip install 'objstore-backend[metrics]'): %s; metrics off", exc
        )
    except Exception as exc:  # a sink that cannot be set up (no route, no IPv6...) never fails the work
        logger.warning("cannot set up metrics (%r); metrics off for this process", exc)
    return _OFF


def report_gc(report: GCReport, metrics: Metrics | None = None) -> None:
    """One GC run of one shard: its summary as ``gc.*`` gauges tagged by shard, and a ``gc.runs`` count.

    A dry run reports nothing: its numbers say what a sweep would do, and a dashboard or an
    alert ("the GC has not run for a day") would take them for a sweep.
    """
    if report.dry_run:
        return
    metrics = for_process() if metrics is None else metrics
    shard = {"shard": report.shard.split("/")[0]}
    for field in GC_GAUGES:
        metrics.gauge(f"gc.{field}", getattr(report, field), tags=shard)
    metrics.gauge("gc.finished_at", time.time(), tags=shard)
    metrics.incr("gc.runs", tags={"outcome": "failed" if report.errors else "ok"})


def report_audit(report: AuditReport, metrics: Metrics | None = None) -> None:
    """One audit: the inventory's totals and backlog, findings by level, and an ``audit.runs`` count
    (``failed`` when reading the store failed; findings are counted apart)."""
    from objstore_backend.audit import LEVELS

    metrics = for_process() if metrics is None else metrics
    inventory = report.inventory
    backlog = inventory.expired_backlog
    oldest = backlog["oldest_expiry"]
    age = (datetime.now(timezone.utc) - datetime.fromisoformat(oldest)).total_seconds() if oldest else 0.0
    metrics.gauge("audit.keys", inventory.keys)
    metrics.gauge("audit.bytes", inventory.bytes)
    metrics.gauge("audit.expired_backlog_keys", backlog["keys"])
    metrics.gauge("audit.expired_backlog_bytes", backlog["bytes"])
    metrics.gauge("audit.oldest_expiry_age_seconds", max(age, 0.0))
    for level in LEVELS:
        count = sum(1 for finding in report.findings if finding.level == level)
        metrics.gauge("audit.findings", count, tags={"level": level})
    metrics.incr("audit.runs", tags={"outcome": "failed" if inventory.errors else "ok"})
