"""Metrics: the store, the GC and the audit on the StatsD / OpenTelemetry sinks Airflow feeds.

One configuration, Airflow's ``[metrics]`` section (airflow.cfg or ``AIRFLOW__METRICS__*``), off
by default. Inside an Airflow process the metrics go through Airflow's own ``Stats``; the
``objstore-backend`` command (the GC CronJob's image has no Airflow) reads the same settings and
sends to the same StatsD server or OTLP endpoint. A sink that is down never fails the work.

Names are relative to ``<prefix>.objstore_backend.``; tags are sent as tags where the sink takes
them (OpenTelemetry, StatsD with Datadog or InfluxDB tags on) and appended to the name as
``.<tag>_<value>`` in the order given where it does not (plain StatsD), e.g.
``airflow.objstore_backend.gc.scanned.shard_3``.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["Metrics", "for_process"]

Tags = Mapping[str, str]


class Metrics:
    """Where the store, the GC and the audit report; this base reports nowhere (metrics off)."""

    def incr(self, stat: str, count: int = 1, *, tags: Tags | None = None) -> None:
        """Add ``count`` to the counter ``stat``."""

    def gauge(self, stat: str, value: float, *, tags: Tags | None = None) -> None:
        """Set the gauge ``stat`` to ``value``."""

    def timing(self, stat: str, milliseconds: float, *, tags: Tags | None = None) -> None:
        """Record one duration of ``stat``."""


_OFF = Metrics()


def for_process() -> Metrics:
    """This process's metrics, built once from Airflow's ``[metrics]`` settings."""
    return _OFF
