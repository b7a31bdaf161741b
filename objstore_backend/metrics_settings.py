"""Airflow's ``[metrics]`` settings, read and checked as Airflow reads them, for the metrics sinks.

The same names, defaults and parsing as Airflow 3.3 / 3.4's config.yml: booleans are Airflow's
``t``/``true``/``1`` and ``f``/``false``/``0``; ``statsd_datadog_enabled`` sends DogStatsD even
with ``statsd_on`` off; StatsD wins over OpenTelemetry when both are on;
``metrics_allow_list`` / ``metrics_block_list`` are comma-separated regular expressions searched
in the lower-cased name without the prefix (an allow list set makes the block list ignored).
A setting that does not parse is a ValueError naming where it came from.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from objstore_backend.config import AirflowSetting

__all__ = ["MetricsSettings", "read_metrics_settings"]

SECTION = "metrics"

#: What Airflow's StatsD and OpenTelemetry loggers accept in a name (``stat_name_default_handler``).
_PREFIX = re.compile(r"[A-Za-z0-9_/-]+(\.[A-Za-z0-9_/-]+)*")

#: Looks one ``[metrics]`` option up: its value and where it came from, or None when unset.
Lookup = Callable[[str], AirflowSetting | None]


@dataclass(frozen=True)
class MetricsSettings:
    """Where the metrics go: ``sink`` is ``off``, ``statsd`` or ``otel``."""

    sink: str = "off"
    prefix: str = "airflow"
    #: StatsD only: how tags travel: ``suffix`` (in the name), ``datadog`` (``|#k:v``), ``influxdb`` (``,k=v``).
    tag_style: str = "suffix"
    host: str = "localhost"
    port: int = 8125
    ipv6: bool = False
    #: DogStatsD tags sent with every metric (``statsd_datadog_tags``, ``key:value,...``).
    constant_tags: tuple[str, ...] = ()
    allow: tuple[re.Pattern[str], ...] | None = None
    block: tuple[re.Pattern[str], ...] | None = None
    #: OpenTelemetry only: the OTLP/HTTP metrics URL, or None for the ``OTEL_EXPORTER_OTLP_*`` env vars.
    otlp_endpoint: str | None = None
    interval_ms: int = 60000
    service: str = "Airflow"
    #: Where host and port came from, to name them when the sink cannot be reached.
    address_sources: str = ""
    host_source: str = ""

    def allows(self, name: str) -> bool:
        """Airflow's allow/block list test on the name without the prefix."""
        name = name.strip().lower()
        if self.allow is not None:
            return any(pattern.search(name) for pattern in self.allow)
        if self.block is not None:
            return not any(pattern.search(name) for pattern in self.block)
        return True


def _value(lookup: Lookup, key: str, default: str) -> tuple[str, str]:
    setting = lookup(key)
    return (setting.value, setting.source) if setting is not None else (default, f"[{SECTION}] {key}")


def _boolean(lookup: Lookup, key: str, default: str = "False") -> bool:
    text, source = _value(lookup, key, default)
    value = text.split("#")[0].strip().lower()
    if value in ("t", "true", "1"):
        return True
    if value in ("f", "false", "0"):
        return False
    raise ValueError(f"{source} must be true or false, got {text!r}")


def _integer(lookup: Lookup, key: str, default: str, lowest: int, highest: int) -> int:
    text, source = _value(lookup, key, default)
    try:
        number = int(text)
    except ValueError:
        number = lowest - 1
    if not lowest <= number <= highest:
        raise ValueError(f"{source} must be a whole number from {lowest} to {highest}, got {text!r}")
    return number


def _patterns(lookup: Lookup, key: str) -> tuple[re.Pattern[str], ...] | None:
    text, source = _value(lookup, key, "")
    if not text.strip():
        return None
    try:
        return tuple(re.compile(item.strip().lower()) for item in text.split(","))
    except re.error as exc:
        raise ValueError(f"{source} must be comma-separated regular expressions, got {text!r}: {exc}") from exc


def _prefix(lookup: Lookup, key: str) -> str:
    text, source = _value(lookup, key, "airflow")
    if not _PREFIX.fullmatch(text) or (key == "otel_prefix" and not text[:1].isalpha()):
        raise ValueError(
            f"{source} must be dot-separated ASCII letters, digits, '_', '-' or '/' (e.g. airflow; for "
            f"OpenTelemetry starting with a letter), got {text!r}"
        )
    return text


def read_metrics_settings(lookup: Lookup, environ: Mapping[str, str] | None = None) -> MetricsSettings:
    """The sink Airflow would pick (``get_stats_factory``: DogStatsD, then StatsD, then OpenTelemetry)
    and its settings; only the chosen sink's settings are checked."""
    environ = os.environ if environ is None else environ
    datadog = _boolean(lookup, "statsd_datadog_enabled")
    statsd = datadog or _boolean(lookup, "statsd_on")
    otel = not statsd and _boolean(lookup, "otel_on")
    if not statsd and not otel:
        return MetricsSettings()
    allow, block = _patterns(lookup, "metrics_allow_list"), _patterns(lookup, "metrics_block_list")
    if allow is not None:
        block = None
    if statsd:
        host, host_source = _value(lookup, "statsd_host", "localhost")
        tags_text, _ = _value(lookup, "statsd_datadog_tags", "")
        influxdb = _boolean(lookup, "statsd_influxdb_enabled")
        return MetricsSettings(
            sink="statsd",
            prefix=_prefix(lookup, "statsd_prefix"),
            tag_style="datadog" if datadog else "influxdb" if influxdb else "suffix",
            host=host,
            port=_integer(lookup, "statsd_port", "8125", 1, 65535),
            ipv6=_boolean(lookup, "statsd_ipv6"),
            constant_tags=tuple(tag.strip() for tag in tags_text.split(",") if tag.strip()) if datadog else (),
            address_sources=f"{host_source} / {_value(lookup, 'statsd_port', '8125')[1]}",
            host_source=host_source,
            allow=allow,
            block=block,
        )
    host, host_source = _value(lookup, "otel_host", "localhost")
    port = _integer(lookup, "otel_port", "8889", 1, 65535)
    scheme = "https" if _boolean(lookup, "otel_ssl_active") else "http"
    from_env = environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    bracketed = f"[{host}]" if ":" in host and not host.startswith("[") else host  # an IPv6 literal
    return MetricsSettings(
        sink="otel",
        prefix=_prefix(lookup, "otel_prefix"),
        host=host,
        port=port,
        otlp_endpoint=None if from_env else f"{scheme}://{bracketed}:{port}/v1/metrics",
        interval_ms=_integer(lookup, "otel_interval_milliseconds", "60000", 1, 2**31 - 1),
        service=environ.get("OTEL_SERVICE_NAME") or _value(lookup, "otel_service", "Airflow")[0],
        address_sources=(
            "OTEL_EXPORTER_OTLP_(METRICS_)ENDPOINT"
            if from_env
            else f"{host_source} / {_value(lookup, 'otel_port', '8889')[1]}"
        ),
        allow=allow,
        block=block,
    )
