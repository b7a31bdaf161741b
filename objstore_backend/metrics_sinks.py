"""The places metrics go: a StatsD server, an OTLP/HTTP endpoint, or Airflow's own ``Stats``.

Each takes names relative to ``objstore_backend.`` and tags as a mapping. A sink that cannot
send logs one warning naming the settings that point at it and goes quiet; it never raises
into the work it measures. The OpenTelemetry packages are imported only when that sink is built.
"""

from __future__ import annotations

import atexit
import logging
import re
import socket
import threading
import urllib.parse
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from objstore_backend.metrics import Metrics
from objstore_backend.metrics_settings import MetricsSettings

__all__ = ["AirflowStatsSink", "OTelSink", "Sink", "StatsDSink", "tag_suffix"]

logger = logging.getLogger(__name__)

NAMESPACE = "objstore_backend."
#: How long the last export may take when the process ends (a CronJob's pod exits right after).
EXPORT_TIMEOUT_SECONDS = 5.0

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def tag_suffix(tags: Mapping[str, str]) -> str:
    """Tags as name segments, in the order given, for sinks without tags: ``.shard_3.outcome_ok``."""
    return "".join(f".{_UNSAFE.sub('_', key)}_{_UNSAFE.sub('_', str(value))}" for key, value in tags.items())


class Sink(Metrics):
    """Names checked against the allow/block lists, then sent; the first failure turns the sink off."""

    def __init__(self, settings: MetricsSettings) -> None:
        self.settings = settings
        self._failed = False

    def incr(self, stat: str, count: int = 1, *, tags: Mapping[str, str] | None = None) -> None:
        self._emit("c", stat, count, tags or {})

    def gauge(self, stat: str, value: float, *, tags: Mapping[str, str] | None = None) -> None:
        self._emit("g", stat, value, tags or {})

    def timing(self, stat: str, milliseconds: float, *, tags: Mapping[str, str] | None = None) -> None:
        self._emit("ms", stat, milliseconds, tags or {})

    def close(self) -> None:
        """Send what is buffered (bounded by :data:`EXPORT_TIMEOUT_SECONDS`); later metrics are dropped."""

    def _emit(self, kind: str, stat: str, value: float, tags: Mapping[str, str]) -> None:
        name = NAMESPACE + stat
        if self._failed or not self.settings.allows(name):
            return
        try:
            self._send(kind, name, value, tags)
        except Exception as exc:  # an unreachable sink, a name the SDK refuses: never the caller's failure
            self.fail(repr(exc) if not isinstance(exc, OSError) else str(exc))

    def _send(self, kind: str, name: str, value: float, tags: Mapping[str, str]) -> None:
        raise NotImplementedError

    def fail(self, reason: str) -> None:
        """Warn once, naming the settings that point here; drop every later metric."""
        if not self._failed:
            self._failed = True
            logger.warning(
                "cannot send metrics to %s at %s (set by %s): %s; metrics off for this process",
                self.settings.sink,
                self.where(),
                self.settings.address_sources,
                reason,
            )

    def where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"


def _number(value: float) -> str:
    """Exact: ints as ints, floats as Python writes them (12.345, not %g's 12.3450)."""
    return str(int(value)) if isinstance(value, int) or float(value).is_integer() else repr(float(value))


class StatsDSink(Sink):
    """StatsD over UDP, one datagram a metric, in the line format Airflow's loggers send.

    The socket is connected, so a closed port shows as ECONNREFUSED on the next send (one
    warning, then quiet); an unresolvable host fails when the sink is built.
    """

    def __init__(self, settings: MetricsSettings) -> None:
        super().__init__(settings)
        family = socket.AF_INET6 if settings.ipv6 else socket.AF_INET
        try:
            address = socket.getaddrinfo(settings.host, settings.port, family, socket.SOCK_DGRAM)[0][4]
        except OSError as exc:  # socket.gaierror
            raise ValueError(f"{settings.host_source}: cannot resolve {settings.host!r}: {exc}") from exc
        self._socket = socket.socket(family, socket.SOCK_DGRAM)
        self._socket.connect(address)
        self._prefix = f"{settings.prefix}." if settings.prefix else ""

    def _send(self, kind: str, name: str, value: float, tags: Mapping[str, str]) -> None:
        style = self.settings.tag_style
        if style == "suffix":
            name += tag_suffix(tags)
        elif style == "influxdb":
            name += "".join(f",{key}={value}" for key, value in tags.items())
        line = f"{self._prefix}{name}:{_number(value)}|{kind}"
        if style == "datadog":
            all_tags = [*self.settings.constant_tags, *(f"{key}:{value}" for key, value in tags.items())]
            line += f"|#{','.join(all_tags)}" if all_tags else ""
        self._socket.send(line.encode())

    def close(self) -> None:
        self._socket.close()
        self._failed = True


class _Quiet(threading.local):
    #: While our export runs on this thread: the OTLP exporter's last log message, instead of logging it.
    capturing: bool = False
    message: str = ""


_QUIET = _Quiet()


class _CaptureExporterLog(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _QUIET.capturing:
            _QUIET.message = record.getMessage()
            return False
        return True


class OTelSink(Sink):
    """OTLP/HTTP through the OpenTelemetry SDK: counters, gauges and millisecond histograms.

    Its own MeterProvider (the process's global one is left alone) with a periodic reader; the
    reader exports once more when the sink is closed, at the latest when the process exits.
    """

    def __init__(self, settings: MetricsSettings) -> None:
        super().__init__(settings)
        from opentelemetry.exporter.otlp.proto.http import metric_exporter
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import MetricExportResult, PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource

        sink = self
        exporter_logger = metric_exporter._logger  # its retries and failure, told once by fail() instead
        if not any(isinstance(existing, _CaptureExporterLog) for existing in exporter_logger.filters):
            exporter_logger.addFilter(_CaptureExporterLog())

        class Exporter(OTLPMetricExporter):
            """Reports a failed export as the sink's one warning, and stops exporting after it."""

            def export(self, metrics_data: Any, timeout_millis: float | None = 10000, **kwargs: Any) -> Any:
                if sink._failed:
                    return MetricExportResult.FAILURE
                _QUIET.capturing, _QUIET.message = True, ""
                try:
                    result = super().export(metrics_data, timeout_millis, **kwargs)
                finally:
                    _QUIET.capturing = False
                if result is not MetricExportResult.SUCCESS:
                    sink.fail(_QUIET.message or "the export failed")
                return result

        exporter = Exporter(endpoint=settings.otlp_endpoint, timeout=EXPORT_TIMEOUT_SECONDS)
        self._endpoint = exporter._endpoint
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=settings.interval_ms)
        resource = Resource.create({SERVICE_NAME: settings.service})
        self._provider = MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)
        self._meter = self._provider.get_meter("objstore_backend")
        self._instruments: dict[tuple[str, str], Any] = {}
        self._closed = False
        atexit.register(self.close)

    def where(self) -> str:
        """The endpoint without any user part (an OTLP endpoint may carry credentials)."""
        parts = urllib.parse.urlsplit(str(self._endpoint))
        return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))

    def _instrument(self, kind: str, name: str) -> Any:
        instrument = self._instruments.get((kind, name))
        if instrument is None:
            if kind == "c":
                instrument = self._meter.create_counter(name)
            elif kind == "g":
                instrument = self._meter.create_gauge(name)
            else:
                instrument = self._meter.create_histogram(name, unit="ms")
            self._instruments[(kind, name)] = instrument
        return instrument

    def _send(self, kind: str, name: str, value: float, tags: Mapping[str, str]) -> None:
        instrument = self._instrument(kind, f"{self.settings.prefix}.{name}")
        attributes = dict(tags)
        if kind == "c":
            instrument.add(value, attributes)
        elif kind == "g":
            instrument.set(value, attributes)
        else:
            instrument.record(value, attributes)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._provider.shutdown(timeout_millis=EXPORT_TIMEOUT_SECONDS * 1000)


class AirflowStatsSink(Sink):
    """Through the ``Stats`` Airflow set up in this process (its prefix, lists, name handler and client).

    Airflow's plain StatsD logger drops tags, so there they go into the name as everywhere else.
    """

    def __init__(self, settings: MetricsSettings, stats: ModuleType) -> None:
        super().__init__(settings)
        self._stats = stats

    def _send(self, kind: str, name: str, value: float, tags: Mapping[str, str]) -> None:
        if self.settings.tag_style == "suffix":
            name, tags = name + tag_suffix(tags), {}
        tags_or_none = dict(tags) or None
        if kind == "c":
            self._stats.incr(name, count=int(value), tags=tags_or_none)
        elif kind == "g":
            self._stats.gauge(name, value, tags=tags_or_none)
        else:
            self._stats.timing(name, value, tags=tags_or_none)
